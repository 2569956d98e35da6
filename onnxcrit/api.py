"""The Python API: `optimize()` runs the pipeline stages in order; `evaluate()` measures a model.

The CLI is a thin shell over these two functions.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import onnx

from . import measure, rounding, select
from .bounds import interval_bounds
from .data import Dataset, load_data
from .errors import BudgetError, InputError, OnnxcritError, SolveError, naming
from .frontend import load_model, load_network
from .ir import INPUT_STAGE_KINDS, Network
from .rewrite import bias_compensation, dead_units, remove_units
from .validate import check_canonical, check_rewrite, run_tensors

# A run with evaluation data and no budget never silently costs more than this many accuracy points.
DEFAULT_ACCURACY_BUDGET = 1.0
# The settings `search` tries, cheapest first (calibration images, hinge margin); tools/bench/ picked this grid.
SEARCH_GRID = tuple((n, m) for n in (10, 50, 100) for m in (1.0, 2.0, 4.0))
KEPT_UNITS_KEY = "onnxcrit.kept_units"


class Progress:
    """Stage notifications; the CLI shows them with rich, the API default ignores them."""

    def start(self, stage: str, deadline: float | None = None) -> None:
        """A stage begins; `deadline` (seconds) when the stage has one (the solve)."""

    def done(self, stage: str, detail: str = "") -> None:
        """The stage ended; `detail` is a short summary."""

    def note(self, message: str) -> None:
        """Something the user should know (e.g. a layer kept one unit only)."""


@dataclass
class Result:
    """What `optimize` returns: the pruned model, its IR, the report (see README for the schema)."""

    model: onnx.ModelProto
    network: Network
    report: dict[str, Any]
    scores: dict[int, np.ndarray] = field(default_factory=dict)
    scales: dict[int, np.ndarray] = field(default_factory=dict)


def _check_options(eps, lam, threshold, num_samples, time_limit, max_accuracy_drop, target_params, margin=1.0):
    """One-line refusals for nonsense option values (exit code 2)."""
    checks = [
        (eps is not None and not (math.isfinite(eps) and eps >= 0), f"eps must be >= 0, got {eps}"),
        (not (math.isfinite(lam) and lam > 0), f"lambda must be > 0, got {lam}"),
        (threshold is not None and not (0 <= threshold <= 1), f"threshold must be in [0, 1], got {threshold}"),
        (num_samples < 1, f"num_samples must be >= 1, got {num_samples}"),
        (not (math.isfinite(margin) and margin >= 0), f"margin must be >= 0, got {margin}"),
        (not (math.isfinite(time_limit) and time_limit > 0), f"time limit must be > 0 seconds, got {time_limit}"),
        (max_accuracy_drop is not None and not (math.isfinite(max_accuracy_drop) and 0 <= max_accuracy_drop <= 100),
         f"max accuracy drop must be in [0, 100] points, got {max_accuracy_drop}"),
        (target_params is not None and not (0 < target_params <= 1),
         f"target params must be a fraction in (0, 1], got {target_params}"),
        (max_accuracy_drop is not None and target_params is not None,
         "give either an accuracy budget or a parameter budget, not both"),
    ]
    for bad, message in checks:
        if bad:
            raise InputError(message)


def optimize(model: str | os.PathLike | onnx.ModelProto, data, *, eval_data=None, eps: float = 1e-5,
             lam: float = 5.0, threshold: float | None = None, mean_threshold: bool = False,
             num_samples: int = 10, relax: bool = True, solver: str = "auto", time_limit: float = 300.0,
             max_accuracy_drop: float | None = None, target_params: float | None = None, seed: int = 0,
             loss: str = "hinge", margin: float = 1.0, sparsity: str = "mean", rescale: bool | None = None,
             compensation: bool = False,
             measure_latency: bool = True, round_to: int | str = "auto", latency_batch: int = 64,
             latency_timer: rounding.Timer | None = None, finetune_data=None, finetune_epochs: int = 3,
             mode: str = "full", workers: int | None = None, search: bool = False,
             progress: Progress | None = None) -> Result:
    """Score every prunable unit with the OAMIP MIP, remove the unimportant ones, validate, and report.

    model: an ONNX path or ModelProto. data: calibration data (.npz path with x and y, an (x, y) pair or a
    dict). eval_data: held-out data for accuracy and budgets. Selection: `target_params` (keep at most that
    fraction of the parameters), else `max_accuracy_drop` (points on eval_data), else an explicit `threshold` /
    `mean_threshold`, else with eval_data a 1.0-point accuracy budget, else the paper's threshold 0.1.
    rescale: deploy kept units at their score (True, METHOD.md section 6), at full strength (False), or (None)
    whichever is more accurate on eval_data under an accuracy budget, else at their score.
    finetune_data: train the pruned model `finetune_epochs` epochs on it afterwards (needs the `finetune` extra).
    mode: "full" (one MIP for the whole network), "decoupled" (one MIP per block on an auxiliary head, solved by
    `workers` parallel workers, default the number of cores; METHOD.md section 5) or "auto" (decoupled for
    large problems; the report's `mode` and `mode_reason` say which and why).
    search: under an accuracy budget, solve with every setting of SEARCH_GRID (calibration images x margin)
    instead of `num_samples` / `margin`, and keep the one whose selection removes the most parameters within
    the budget on eval_data; `time_limit` covers all the solves together; `selection.attempts` in the report
    lists every solve.
    round_to: after the selection, round every conv layer's kept channels up to a multiple of this (at most the
    layer's count), adding back the best removed channels (onnxruntime's blocked convolution layout runs
    multiples of 8 or 16 fastest). "auto" (default): with `measure_latency`, rewrite the model for each of
    rounding.ROUNDINGS, time each against the original at batch 1 and `latency_batch` with onnxruntime on
    this machine, and keep the fastest within the budget (so the output depends on the machine); without
    `measure_latency`, 1 (no rounding). report["latency"] lists every candidate and says whether the written
    model is `slower` than the original. latency_timer(models, batch) -> seconds per `batch` samples of each
    model (the original first), timed in alternation; default onnxruntime, one thread.
    Raises InputError (bad input), SolveError (no solution), BudgetError (budget unreachable),
    ValidationError (the rewritten model failed a check).
    """
    from .scoring import compute_scores  # the MIP stack loads only when needed

    progress = progress or Progress()
    _check_options(eps, lam, threshold, num_samples, time_limit, max_accuracy_drop, target_params, margin)
    if finetune_epochs < 1:
        raise InputError(f"finetune epochs must be >= 1, got {finetune_epochs}")
    if mode not in ("full", "decoupled", "auto"):
        raise InputError(f"unknown mode {mode!r}; expected full, decoupled or auto")
    if workers is not None and not (int(workers) == workers and workers >= 1):
        raise InputError(f"workers must be a positive integer, got {workers}")
    round_to = rounding.parse_round_to(round_to)
    if isinstance(latency_batch, bool) or not isinstance(latency_batch, (int, np.integer)) or latency_batch < 1:
        raise InputError(f"latency batch must be an integer >= 1, got {latency_batch!r}")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    progress.start("load")
    net, proto = load_network(model)
    calib = load_data(data, net, what="calibration data")
    evald = load_data(eval_data, net, what="evaluation data") if eval_data is not None else None
    patterns = recognised_patterns(net)
    if net.canonicalised:  # the canonical graph must compute what the published file computes
        check_canonical(load_model(model), proto, net, calib.x)
    timings["load"] = time.perf_counter() - clock
    progress.done("load", f"{len(net.scored_indices())} prunable layers, {net.params:,} parameters"
                          + (f"; recognised {', '.join(patterns)}" if patterns else ""))
    used_mode, mode_reason = mode, "requested"
    if mode != "full":
        from . import decoupled

        if mode == "auto":
            used_mode, mode_reason = decoupled.choose_mode(net, num_samples)
            if used_mode == "decoupled":
                progress.note(f"mode decoupled: {mode_reason}")
        workers = decoupled.default_workers() if workers is None else int(workers)

    by_default = False  # the rule was picked for the user, not asked for
    if target_params is not None:
        rule = "parameter budget"
    elif max_accuracy_drop is not None:
        rule = "accuracy budget"
    elif threshold is not None or mean_threshold:
        rule = "mean score" if mean_threshold else "threshold"
    elif evald is not None:
        rule, max_accuracy_drop, by_default = "accuracy budget", DEFAULT_ACCURACY_BUDGET, True
    else:
        rule, threshold, by_default = "threshold", 0.1, True
    if rule == "accuracy budget" and evald is None:
        raise InputError("an accuracy budget needs evaluation data (--eval-data)")
    if search and rule != "accuracy budget":
        raise InputError(f"the search compares settings under an accuracy budget; it does not apply to the {rule} "
                         f"rule (give --eval-data, and no --threshold / --target-params)")

    # each block's MIP saw the unpruned network's inputs, not earlier blocks' scaled ones: in decoupled mode
    # kept units are deployed at full strength unless asked otherwise (measured: tools/results/bench_vgg.md)
    deploy_rescale = False if (used_mode == "decoupled" and rescale is None) else rescale
    score = compute_scores if used_mode == "full" else partial(decoupled.decoupled_scores, workers=workers)
    measure_accuracy = _ort_accuracy(proto, net, evald) if rule == "accuracy budget" else None
    attempts: list[dict] = []

    def attempt(n: int, m: float, limit: float):
        """One solve with n calibration images and margin m, and the selection on its scores."""
        progress.start("score", deadline=limit)
        scored = score(net, calib.x, calib.y, eps=eps, lam=lam, margin=m, sparsity=sparsity, relax=relax,
                       num_samples=n, seed=seed, solver=solver, time_limit=limit, loss=loss)
        timings["build"] = timings.get("build", 0.0) + scored.build_seconds
        timings["solve"] = timings.get("solve", 0.0) + scored.solve_seconds
        blocks = f"{len(scored.blocks)} blocks on {workers} workers, " if used_mode == "decoupled" else ""
        progress.done("score", f"{blocks}{scored.status}, {scored.variables:,} variables, {scored.binaries:,} "
                               f"binaries, solved in {scored.solve_seconds:.1f} s")
        progress.start("select")
        clock = time.perf_counter()
        chosen, closest = _select(rule, net, scored.scores, evald, threshold, mean_threshold, max_accuracy_drop,
                                  target_params, deploy_rescale, measure_accuracy)
        timings["select"] = timings.get("select", 0.0) + time.perf_counter() - clock
        attempts.append({"lambda": lam, "margin": m, "num_samples": n, "tried": closest.tried})
        progress.done("select", chosen.rule if chosen else "budget not met")
        return scored, chosen, closest

    if search:
        scored, chosen, closest, num_samples, margin = _search(attempt, net, len(calib.x), time_limit, progress)
    else:
        while True:
            scored, chosen, closest = attempt(num_samples, margin, time_limit)
            if chosen is not None or rule != "accuracy budget" or len(attempts) >= 3:
                break
            # a wider margin makes the MIP keep more of every image's lead, so it ranks the units differently; a
            # larger lambda would not: once the hinge loss is 0 at the optimum, raising lambda leaves it optimal
            margin = 2.0 * margin if margin > 0 else 1.0
            progress.note(f"accuracy budget not met; solving again with margin {margin:g}")
    if chosen is None:
        raise BudgetError(_closest_message(rule, net, closest, max_accuracy_drop, target_params, measure_accuracy))
    for note in chosen.notes:
        progress.note(note)

    candidate, latency = chosen_rounding = _round(
        net, proto, scored.scores, chosen, rule, round_to, measure_latency, latency_batch, latency_timer,
        measure_accuracy, max_accuracy_drop, target_params, progress, timings)
    scales, keep = candidate.scales, candidate.keep
    used = np.asarray(scored.calibration_indices, dtype=np.int64)
    dead = dead_units(net, interval_bounds(net, calib.x[used], eps))
    removed_dead = int(sum(int(np.sum(dead[k] & ~keep[k])) for k in scales))
    shifts = bias_compensation(net, calib.x[used], scales) if compensation else None

    progress.start("rewrite")
    clock = time.perf_counter()
    if shifts is None and candidate.model is not None:
        new_model, new_net = candidate.model, candidate.network
    else:
        new_model, new_net = remove_units(proto, net, scales, compensation=shifts, keep=keep)
    kept = {net.layers[k].name: np.flatnonzero(keep[k]).tolist() for k in sorted(keep)}
    _set_metadata(new_model, KEPT_UNITS_KEY, json.dumps(kept, sort_keys=True, separators=(",", ":")))
    timings["rewrite"] = time.perf_counter() - clock
    progress.done("rewrite", f"{new_net.params:,} parameters left")

    progress.start("validate")
    clock = time.perf_counter()
    xs = [calib.x] + ([evald.x] if evald is not None else [])
    ys = [None, evald.y] if evald is not None else [calib.y]  # accuracy on held-out data when there is some
    check = check_rewrite(proto, new_model, net, scales, xs, y=ys, compensation=shifts)
    check.raise_if_failed()
    timings["validate"] = time.perf_counter() - clock
    progress.done("validate", f"agreement {check.agreement * 100:.2f}%")

    progress.start("measure")
    clock = time.perf_counter()
    report = _report(net, proto, new_net, new_model, scored, chosen, check, evald, removed_dead, attempts,
                     chosen_rounding, dict(eps=eps, lam=lam, threshold=threshold,
                                           mean_threshold=mean_threshold, num_samples=num_samples, relax=relax,
                                           solver=solver, time_limit=time_limit, loss=loss, margin=margin,
                                           search=search,
                                           sparsity=sparsity,
                                           max_accuracy_drop=max_accuracy_drop, target_params=target_params,
                                           seed=seed, rescale=rescale, compensation=compensation, mode=mode,
                                           workers=workers, round_to=round_to, latency_batch=latency_batch,
                                           measure_latency=measure_latency))
    report["mode"], report["mode_reason"] = used_mode, mode_reason
    report["canonicalised"] = patterns
    report["selection"]["by_default"] = by_default
    report["accuracy_samples"] = int(len(evald.x) if evald is not None else len(calib.x))
    report["agreement_samples"] = int(check.samples)
    report["blocks"] = scored.blocks if used_mode == "decoupled" else []
    timings["measure"] = time.perf_counter() - clock
    progress.done("measure")
    if finetune_data is not None:
        from .finetune import finetune

        progress.start("finetune")
        clock = time.perf_counter()
        tuned = finetune(new_model, load_data(finetune_data, new_net, what="fine-tuning data"), eval_data=evald,
                         epochs=finetune_epochs, seed=seed)
        new_model = tuned.model
        report["finetune"] = {"epochs": tuned.epochs, "losses": [round(v, 6) for v in tuned.losses],
                              "train_accuracy_before": round(tuned.train_accuracy_before, 4),
                              "train_accuracy_after": round(tuned.train_accuracy_after, 4)}
        if tuned.eval_accuracy_after is not None:
            report["finetune"]["accuracy_before"] = report["accuracy_after"]  # the pruned model, before training
            report["finetune"]["accuracy_after"] = round(tuned.eval_accuracy_after, 4)
            report["accuracy_after"] = round(tuned.eval_accuracy_after, 4)
        timings["finetune"] = time.perf_counter() - clock
        progress.done("finetune", f"{tuned.epochs} epochs")
    report["timings"] = {k: round(v, 3) for k, v in timings.items()}
    return Result(model=new_model, network=new_net, report=report, scores=scored.scores, scales=scales)


def recognised_patterns(net: Network) -> list[str]:
    """Exporter patterns the model was read through: the canonical passes that changed it (canonical.py), the
    input stage the IR computes (normalisation, NHWC transpose), a fixed batch size, a convolutional head."""
    found = list(net.canonicalised)
    found += sorted({f"input_{layer.kind}" for layer in net.layers if layer.kind in INPUT_STAGE_KINDS})
    if net.fixed_batch is not None:
        found.append(f"fixed_batch_{net.fixed_batch}")
    if net.layers[net.linear_indices()[-1]].kind == "conv":
        found.append("convolutional_head")
    return found


def _search(attempt, net, available: int, time_limit: float, progress):
    """Run `attempt` over SEARCH_GRID within one deadline; the setting whose selection keeps the fewest
    parameters within the budget wins (ties: the cheaper setting). Returns (scored, chosen, closest, n, margin)."""
    start, runs, failure = time.perf_counter(), [], None
    grid = [(n, m) for n, m in SEARCH_GRID if n <= available] or [SEARCH_GRID[0]]
    for k, (n, m) in enumerate(grid):
        left = time_limit - (time.perf_counter() - start)
        if left <= 0 or (runs and left < 1.0):  # once one setting is in, no hopeless sub-second solves
            progress.note(f"search stopped at the time limit after {k} of {len(grid)} settings")
            break
        try:
            runs.append((n, m, *attempt(n, m, left)))
        except (SolveError, InputError) as exc:  # e.g. fewer correctly classified images than n
            failure = failure or exc
            progress.note(f"search: {n} images, margin {m:g} skipped: {exc}")
    if not runs:
        raise failure if failure is not None else SolveError("the search ran out of time before its first solve")
    meeting = [r for r in runs if r[3] is not None]

    def params(sel):
        return select.params_after(net, {i: s > 0 for i, s in sel.scales.items()})

    n, m, scored, chosen, closest = (min(meeting, key=lambda r: params(r[3])) if meeting else
                                     min(runs, key=lambda r: min(t["drop"] for t in r[4].tried)))
    progress.note(f"search: {n} images, margin {m:g} removes the most within the budget "
                  f"({len(meeting)} of {len(runs)} settings met it)")
    return scored, chosen, closest, n, m


def _round(net, proto, scores, chosen, rule, round_to, measure_latency, latency_batch, timer, accuracy_of,
           max_drop, target_params, progress, timings):
    """The rounding stage: the candidates (rounding.ROUNDINGS under "auto" with latency, else the one asked),
    each checked against the selection's budget and, with `measure_latency`, timed against the original.
    Returns (the candidate to write, report["latency"] or None)."""
    if round_to == "auto":
        roundings, mode = (rounding.ROUNDINGS if measure_latency else (1,)), "auto"
    else:
        roundings, mode = (round_to,), "fixed"
    if roundings == (1,) and not measure_latency:
        return rounding.candidates(net, proto, scores, chosen, (1,), build=False)[0], None
    stage = "latency" if measure_latency else "round"
    progress.start(stage)
    clock = time.perf_counter()
    cands = rounding.candidates(net, proto, scores, chosen, roundings)
    for cand in cands:
        if rule == "accuracy budget":
            cand.accuracy = accuracy_of(cand.scales, built=(cand.model, cand.network))
            cand.meets_budget = accuracy_of(None) - cand.accuracy <= max_drop + 1e-9
        elif rule == "parameter budget":
            cand.meets_budget = select.params_after(net, cand.keep) <= target_params * net.params
    report = None
    if measure_latency:
        batches = tuple(sorted({1, int(latency_batch)}))
        before = rounding.time_candidates(proto, cands, batches, timer or rounding.default_timer(net))
        best = rounding.choose(cands) if mode == "auto" else cands[0]
        report = rounding.latency_report(before, best, cands, mode)
        detail = f"round-to {best.round_to}: " + ", ".join(f"b{b} x{best.speedup[b]:.2f}" for b in batches)
        if mode == "auto":
            detail += f" (best of {len(cands)} candidates)"
    else:
        best = cands[0]
        detail = f"round-to {best.round_to}, not timed"
    if not best.meets_budget:
        what = (f"accuracy {accuracy_of(None):.2f}% -> {best.accuracy:.2f}%" if rule == "accuracy budget"
                else f"{select.params_after(net, best.keep):,} of {net.params:,} parameters")
        progress.note(f"--round-to {best.round_to} breaks the {rule} ({what}); written as asked")
    timings[stage] = time.perf_counter() - clock
    progress.done(stage, detail)
    return best, report


def _select(rule, net, scores, evald, threshold, mean_threshold, max_drop, target_params, rescale, accuracy_of):
    if rule == "parameter budget":
        return select.by_params(net, scores, target_params, True if rescale is None else rescale)
    if rule == "accuracy budget":
        return select.by_accuracy(net, scores, evald.x, evald.y, max_drop, rescale,
                                  accuracy_of=accuracy_of)
    notes: list[str] = []
    keep = select.keep_by_threshold(net, scores, threshold, mean_rule=mean_threshold, notes=notes)
    mode = True if rescale is None else bool(rescale)
    sel = select.Selection(scales=select.to_scales(scores, keep, mode), rule=rule, threshold=threshold, notes=notes,
                           rescaled=mode)
    return sel, sel


def _ort_accuracy(proto: onnx.ModelProto, net: Network, data: Dataset):
    """scales -> accuracy (%) of the model rewritten with them (None: the original), by onnxruntime.

    The budget search measures its candidates with the engine and the float32 arithmetic the written model is
    checked and deployed with; for convolutions it is also far faster than the IR's float64 numpy forward
    (tools/bench/budget_search.py). The original's accuracy is measured once and remembered.
    """
    original: list[float] = []

    def accuracy(scales: dict[int, np.ndarray] | None, built=None) -> float:
        """built: the (model, network) already rewritten with these scales, if there is one."""
        if scales is None and original:
            return original[0]
        model, new_net = (proto, net) if scales is None else (built or remove_units(proto, net, scales))
        logits = run_tensors(model, new_net.input_name, data.x, [new_net.logits_name], dtype=net.input_dtype)[0]
        value = float(np.mean(logits.argmax(axis=1) == data.y) * 100.0)
        if scales is None:
            original.append(value)
        return value

    return accuracy


def _closest_message(rule, net, closest, max_drop, target_params, accuracy) -> str:
    kept = {i: s > 0 for i, s in closest.scales.items()}
    params = select.params_after(net, kept)
    if rule == "parameter budget":
        return (f"cannot keep only {target_params:.0%} of the parameters: keeping one unit per layer still leaves "
                f"{params:,} of {net.params:,} ({params / net.params:.1%})")
    base, acc = accuracy(None), accuracy(closest.scales)
    return (f"no selection keeps the accuracy drop within {max_drop:g} points; the closest lost "
            f"{base - acc:.2f} points ({base:.2f}% -> {acc:.2f}%) with {params:,} of {net.params:,} parameters")


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _rounded(value, digits: int = 9):
    return None if value is None else float(f"{value:.{digits}g}")


def _accuracy_pct(value):
    return None if value is None else round(100.0 * value, 4)


def _report(net, proto, new_net, new_model, scored, chosen, check, evald, removed_dead, attempts,
            chosen_rounding, options) -> dict[str, Any]:
    candidate, latency = chosen_rounding
    before_rows = measure.layer_table(net, proto)
    after_rows = measure.layer_table(new_net, new_model)
    before, after = measure.totals(before_rows), measure.totals(after_rows)
    scored_set = set(net.scored_indices())
    layers = []
    for j, i in enumerate(net.linear_indices()):
        layers.append({"name": net.layers[i].name, "kind": net.layers[i].kind,
                       "units_before": before_rows[j]["units"], "units_after": after_rows[j]["units"],
                       "params_before": before_rows[j]["params"], "params_after": after_rows[j]["params"],
                       "macs_before": before_rows[j]["macs"], "macs_after": after_rows[j]["macs"],
                       "scored": i in scored_set})
    solver = {"name": scored.solver, "status": scored.status, "seconds": round(scored.solve_seconds, 3),
              "build_seconds": round(scored.build_seconds, 3), "objective": _rounded(scored.objective),
              "bound": _rounded(scored.bound), "gap": _rounded(scored.gap), "variables": scored.variables,
              "binaries": scored.binaries, "constraints": scored.constraints, "nonzeros": scored.nonzeros,
              "relaxed": scored.relaxed, "message": scored.message}
    report: dict[str, Any] = {
        "params_before": before["params"], "params_after": after["params"],
        "macs_before": before["macs"], "macs_after": after["macs"],
        "file_size_before": measure.file_size(proto), "file_size_after": measure.file_size(new_model),
        "layers": layers,
        "accuracy_before": _accuracy_pct(check.accuracy_before),
        "accuracy_after": _accuracy_pct(check.accuracy_after),
        "accuracy_data": "evaluation" if evald is not None else "calibration",
        "agreement": round(check.agreement * 100.0, 4),
        "max_abs_logit_diff": float(f"{check.max_abs_logit_diff:.6g}"),
        "mean_abs_logit_diff": float(f"{check.mean_abs_logit_diff:.6g}"),
        "max_abs_vs_masked_ir": float(f"{check.max_abs_vs_masked_ir:.3g}"),
        "masked_ir_tolerance": float(f"{check.tolerance:.3g}"),
        "solver": solver,
        "selection": {"rule": chosen.rule, "threshold": chosen.threshold, "notes": chosen.notes,
                      "attempts": attempts, "round_to": candidate.round_to,
                      "units_scored": int(sum(len(candidate.keep[k]) for k in candidate.keep)),
                      "units_removed": int(sum(int(np.sum(~candidate.keep[k])) for k in candidate.keep)),
                      "units_added": int(sum(int(np.sum(candidate.keep[k] & ~(chosen.scales[k] > 0)))
                                             for k in candidate.keep))},
        "calibration": {"indices": [int(i) for i in scored.calibration_indices], "skipped": scored.skipped},
        "dead_units_removed": removed_dead,
        "options": options,
        "output": None,
    }
    if latency is not None:
        report["latency"] = latency
    return report


def evaluate(model: str | os.PathLike | onnx.ModelProto, data=None, *, compare=None, latency: bool = True) -> dict:
    """Accuracy of a model on labelled data (via onnxruntime), agreement with another model, latency.

    Returns {"samples", "params", "macs", "accuracy" (labelled data), "latency_ms" (latency=True), "compare":
    {"agreement", "max_abs_logit_diff", "params", "macs", "accuracy", "latency_ms"} (compare given)}; without
    data only params, MACs and latency (random inputs of the model's shape), and compare's params, MACs, latency.
    """
    rows = evaluate_models([model] + ([compare] if compare is not None else []), data, latency=latency)
    out = {k: v for k, v in rows[0].items() if k != "model"}
    if compare is not None:
        out["compare"] = {k: v for k, v in rows[1].items() if k not in ("model", "samples")}
    return out


def evaluate_models(models: list, data=None, *, latency: bool = True) -> list[dict]:
    """`evaluate` for several models on the same data: one dict per model, in order.

    Each: "model" (the path), "params", "macs", and with data "samples", "accuracy" (labelled data) and, from the
    second model on, "agreement" (percent of inputs whose top-1 class is the first model's) and
    "max_abs_logit_diff" (largest change of a logit against the first model); "latency_ms" (batch_1, batch_64,
    onnxruntime, one thread, random inputs) when latency. Every model and the data are checked before anything
    is run; with several models an error names the model it is about.
    """
    if not models:
        raise InputError("no model to evaluate")
    several = len(models) > 1
    loaded = []
    for model in models:
        name = "model" if isinstance(model, onnx.ModelProto) else str(model)
        try:
            net, proto = load_network(model)
            ds = load_data(data, net, what="evaluation data", need_labels=False) if data is not None else None
        except OnnxcritError as exc:
            raise (naming(exc, name) if several else exc) from None
        if loaded and data is not None:
            first = loaded[0][2]
            if tuple(net.input_shape) != tuple(first.input_shape) or net.num_classes != first.num_classes:
                raise InputError(f"{name}: input {list(net.input_shape)} / {net.num_classes} classes do not match "
                                 f"the first model's {list(first.input_shape)} / {first.num_classes}; agreement "
                                 f"needs the same inputs and classes")
        loaded.append((name, proto, net, ds))
    rows, reference = [], None
    for name, proto, net, ds in loaded:
        row: dict[str, Any] = {"model": name, "params": measure.totals(measure.layer_table(net, proto))["params"],
                               "macs": net.macs}
        if ds is not None:
            logits = _ort_logits(proto, net, ds)
            row["samples"] = int(len(ds.x))
            if ds.y is not None:
                row["accuracy"] = round(float(np.mean(logits.argmax(axis=1) == ds.y)) * 100.0, 4)
            if reference is None:
                reference = logits
            else:
                row["agreement"] = round(float(np.mean(logits.argmax(1) == reference.argmax(1))) * 100, 4)
                row["max_abs_logit_diff"] = float(np.abs(logits - reference).max())
        if latency:
            row["latency_ms"] = _latencies(proto, net)
        rows.append(row)
    return rows


def _ort_logits(proto, net, ds: Dataset) -> np.ndarray:
    return run_tensors(proto, net.input_name, ds.x, [net.logits_name], dtype=net.input_dtype)[0].astype(np.float64)


def _latencies(proto, net) -> dict[str, float]:
    return {f"batch_{b}": round(1e3 * measure.latency(proto, net.input_name, net.input_shape, b,
                                                      fixed_batch=net.fixed_batch), 4) for b in (1, 64)}
