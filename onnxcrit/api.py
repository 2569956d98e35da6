"""The Python API: `optimize()` runs the pipeline stages in order; `evaluate()` measures a model.

The CLI is a thin shell over these two functions.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import onnx

from . import measure, resources, rounding, select
from . import report as report_mod
from .bounds import interval_bounds
from .data import Dataset, load_data
from .errors import BudgetError, InputError, OnnxcritError, SolveError, UnsupportedModelError, naming
from .frontend import load_model, load_network
from .ir import INPUT_STAGE_KINDS, Conv, Network
from .options import DEFAULT_RECONSTRUCT, DEFAULTS, Options
from .reconstruct import Reconstructor
from .rewrite import bias_compensation, dead_units, remove_units
from .validate import check_canonical, check_rewrite, run_tensors

# A run with evaluation data and no budget never silently costs more than this many accuracy points.
DEFAULT_ACCURACY_BUDGET = 1.0
# The settings `search` tries, cheapest first (calibration images, hinge margin); benchmarks/suite.py picked this grid.
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


@dataclass
class _Loaded:
    """The load stage's output: the canonical model, its IR, the data, what was recognised."""

    net: Network
    proto: onnx.ModelProto
    calib: Dataset
    evald: Dataset | None
    patterns: list[str]


@dataclass
class _Plan:
    """Which selection rule runs, with what budget, in which mode (filled in from the options and the data)."""

    rule: str
    threshold: float | None
    max_drop: float | None
    by_default: bool  # the rule was picked for the user, not asked for
    mode: str
    mode_reason: str
    workers: int | None
    rescale: bool | None  # how the selection deploys kept units
    confirm: Any = None  # confirm.Confirmer: an accuracy budget chosen on part of the evaluation data, confirmed


@resources.memory_errors_as_one_line
def optimize(model: str | os.PathLike | onnx.ModelProto, data, *, eval_data=None, options: Options | None = None,
             finetune_data=None, latency_timer: rounding.Timer | None = None, progress: Progress | None = None,
             **changes) -> Result:
    """Score every prunable unit with the OAMIP MIP, remove the unimportant ones, validate, and report.

    model: an ONNX path or ModelProto. data: calibration data (.npz path with x and y, an (x, y) pair or a
    dict). eval_data: held-out data for accuracy and budgets. options: an `Options` (defaults: `DEFAULTS`);
    keyword arguments change single options (`optimize(path, data, threshold=0.1)`), checked the same way.
    Selection: `target_params` (keep at most that fraction of the parameters), else `max_accuracy_drop`
    (points on eval_data), else an explicit `threshold` / `mean_threshold`, else with eval_data a 1.0-point
    accuracy budget, else the paper's threshold 0.1. `rescale`: kept units at their score (True), at full
    strength (False), or (None) whichever is more accurate on eval_data under an accuracy budget, else at their
    score. `mode`: "full" (one MIP), "decoupled" (one MIP per block on an auxiliary head, `workers` in
    parallel) or "auto" (by problem size; the report's `mode_reason` says why). `search`: under an accuracy
    budget, solve with every setting of SEARCH_GRID and keep the one that removes the most within the budget.
    `round_to`: conv layers' kept channels rounded up to a multiple of it; "auto" (with `measure_latency`)
    times K in rounding.ROUNDINGS against the original on this machine and keeps the fastest within the budget.
    `reconstruct`: refit the layers after the pruned ones (reconstruct.METHODS, or "auto": the most accurate)
    for every candidate the selection measures, so it selects on the reconstructed accuracy.
    latency_timer(models, batch) -> seconds per `batch` samples of each model (default: onnxruntime, one
    thread). finetune_data: train the pruned model `finetune_epochs` epochs on it (needs the finetune extra).
    Raises InputError (bad input), SolveError (no solution), BudgetError (budget unreachable),
    ValidationError (the rewritten model failed a check).
    """
    opts = (options or DEFAULTS).updated(**changes) if changes else (options or DEFAULTS)
    progress = progress or Progress()
    timings: dict[str, float] = {}
    loaded = _load(model, data, eval_data, progress, timings)
    plan = _plan(opts, loaded, progress)
    opts = _resolve_reconstruct(opts)
    # candidates are measured by onnxruntime on the rewritten model; the original's accuracy once per run
    # with --reconstruct every candidate (measured, confirmed, rounded, written) is rewritten with its reconstruction
    compare_on = [loaded.evald]  # what --reconstruct auto compares on: the part of --eval-data the search sees
    builder = _reconstructor(opts, loaded, compare_on)
    rewrite = builder.rewrite if builder is not None else remove_units
    plan = replace(plan, confirm=_confirmer(opts, plan.rule, plan.max_drop, loaded, rewrite))
    choose_data = plan.confirm.choose if plan.confirm is not None else loaded.evald
    compare_on[0] = choose_data
    measure_accuracy = _ort_accuracy(loaded.proto, loaded.net, choose_data, rewrite) \
        if plan.rule == "accuracy budget" else None
    ties = _ties(builder, timings)
    with _candidates(opts, plan, measure_accuracy) as accuracy_many:
        scored, chosen, attempts, opts = _score_and_select(opts, plan, loaded, measure_accuracy, progress, timings,
                                                           accuracy_many, ties)
    candidate, latency = _round(loaded.net, loaded.proto, scored.scores, chosen, plan.rule, opts.round_to,
                                opts.measure_latency, opts.latency_batch, latency_timer, measure_accuracy,
                                plan.max_drop, _size_fraction(opts), progress, timings, rewrite)
    if plan.confirm is not None:  # what is written, if rounding changed the confirmed selection
        plan.confirm.recheck(chosen, candidate.scales, (candidate.model, candidate.network))
    new_model, new_net, shifts, removed_dead = _rewrite(opts, loaded, scored, candidate, progress, timings, rewrite)
    reference = builder.reference(candidate.scales, candidate.keep) if builder is not None \
        else (loaded.net, candidate.scales)
    check = _validate(loaded, new_model, reference, shifts, progress, timings)
    report = _measure(opts, plan, loaded, scored, chosen, check, new_model, new_net, removed_dead, attempts,
                      (candidate, latency), progress, timings)
    report["selection"]["reconstruct"] = (builder.summary(candidate.scales, candidate.keep) if builder is not None
                                          else {"method": "none"})
    if finetune_data is not None:
        new_model = _finetune(opts, loaded, new_model, new_net, finetune_data, report, progress, timings)
    report["timings"] = {k: round(v, 3) for k, v in timings.items()}
    return Result(model=new_model, network=new_net, report=report, scores=scored.scores, scales=candidate.scales)


def _timed(stage: str, progress: Progress, timings: dict, deadline: float | None = None):
    """Start a stage: returns a function that ends it with a detail line and books its seconds."""
    progress.start(stage, deadline) if deadline is not None else progress.start(stage)
    clock = time.perf_counter()

    def done(detail: str = "") -> None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - clock
        progress.done(stage, detail)
    return done


def _load(model, data, eval_data, progress, timings) -> _Loaded:
    """Read and canonicalise the model, check it against the published one, read the data."""
    done = _timed("load", progress, timings)
    net, proto = load_network(model)
    if not net.scored_indices():
        whole = "; ".join(sorted({g.frozen for g in net.groups if g.frozen}))
        raise UnsupportedModelError(f"nothing to prune: every channel group is kept whole ({whole})")
    calib = load_data(data, net, what="calibration data")
    evald = load_data(eval_data, net, what="evaluation data") if eval_data is not None else None
    patterns = recognised_patterns(net)
    if net.canonicalised:  # the canonical graph must compute what the published file computes
        check_canonical(load_model(model), proto, net, calib.x)
    what = "prunable layers" if net.is_chain() else "prunable channel groups"
    done(f"{len(net.scored_indices())} {what}, {net.params:,} parameters"
         + (f"; recognised {', '.join(patterns)}" if patterns else ""))
    return _Loaded(net, proto, calib, evald, patterns)


def _plan(opts: Options, loaded: _Loaded, progress) -> _Plan:
    """The selection rule and the mode, from the options and whether there is evaluation data."""
    net, evald = loaded.net, loaded.evald
    mode, reason, workers = opts.mode, "requested", opts.workers
    if mode != "full":
        from . import decoupled

        if mode == "auto":
            mode, reason = decoupled.choose_mode(net, opts.num_samples, loaded.calib.x, opts.eps)
            if mode == "full":  # small enough by MACs; also within the memory limit?
                fits, why = resources.fits(net, _largest_build(opts, loaded), opts.memory_limit)
                mode, reason = ("full", reason) if fits else ("decoupled", f"{why}: one MIP per block")
            if mode == "decoupled":
                progress.note(f"mode decoupled: {reason}")
        workers = decoupled.default_workers() if workers is None else int(workers)
    else:
        resources.check_full(net, _largest_build(opts, loaded), opts.memory_limit, opts.search)
    threshold, max_drop, by_default = opts.threshold, opts.max_accuracy_drop, False
    if opts.target_params is not None:
        rule = "parameter budget"
    elif opts.target_macs is not None:
        rule = "MAC budget"
    elif max_drop is not None:
        rule = "accuracy budget"
    elif threshold is not None or opts.mean_threshold:
        rule = "mean score" if opts.mean_threshold else "threshold"
    elif evald is not None:
        rule, max_drop, by_default = "accuracy budget", DEFAULT_ACCURACY_BUDGET, True
    else:
        rule, threshold, by_default = "threshold", 0.1, True
    if rule == "accuracy budget" and evald is None:
        raise InputError("an accuracy budget needs evaluation data (--eval-data)")
    if opts.search and rule != "accuracy budget":
        raise InputError(f"the search compares settings under an accuracy budget; it does not apply to the {rule} "
                         f"rule (give --eval-data, and no --threshold / --target-params)")
    # each block's MIP saw the unpruned network's inputs, not earlier blocks' scaled ones: in decoupled mode
    # kept units are deployed at full strength unless asked otherwise (measured: docs/benchmarks.md)
    rescale = False if (mode == "decoupled" and opts.rescale is None) else opts.rescale
    return _Plan(rule, threshold, max_drop, by_default, mode, reason, workers, rescale)


def _resolve_reconstruct(opts: Options) -> Options:
    """The default reconstruction (reconstruct None): DEFAULT_RECONSTRUCT, in full and decoupled mode alike;
    none with --compensate-bias (which is the older, cruder form of the same correction)."""
    if opts.reconstruct is not None:
        return opts
    return replace(opts, reconstruct="none" if opts.compensation else DEFAULT_RECONSTRUCT)


def _largest_build(opts: Options, loaded: _Loaded) -> int:
    """The most calibration images one full MIP of this run will take (--search goes up to SEARCH_GRID's)."""
    if opts.search:
        return max([n for n, _ in SEARCH_GRID if n <= len(loaded.calib.x)] or [SEARCH_GRID[0][0]])
    return opts.num_samples


def _confirmer(opts: Options, rule: str, max_drop, loaded: _Loaded, rewrite):
    """Under an accuracy budget with `confirm`: the evaluation data split into a choose and a confirm part (or,
    too few to promise the budget, not split and the report says so)."""
    if rule != "accuracy budget" or not opts.confirm:
        return None
    from .confirm import Confirmer

    return Confirmer(loaded.proto, loaded.net, loaded.evald, opts.seed, max_drop, opts.confidence, rewrite)


def _ties(builder: Reconstructor | None, timings) -> dict[int, np.ndarray] | None:
    """The removal order's tie-break: under the lsq reconstruction, each unit's OBS saliency (what removing it
    costs once its readers are refitted; saliency.py) on the reconstruction's statistics images; otherwise None
    (the weight magnitude)."""
    if builder is None or builder.method != "lsq":
        return None
    from .saliency import obs_saliency

    clock = time.perf_counter()
    ties = obs_saliency(builder.net, builder.x)
    timings["saliency"] = round(time.perf_counter() - clock, 3)
    return ties


@contextmanager
def _candidates(opts: Options, plan: _Plan, measure_accuracy):
    """accuracy_many for the budget search, or None (one candidate at a time): the candidates of its grid and
    ladder measured on the run's executor with its workers (decoupled mode: the cores unless --workers says
    otherwise; full mode: --workers, default 1). `processes` measures them in threads: the measure is a closure
    over the model, the data and the reconstruction, which Ray ships once but a process pool would per task."""
    workers, kind = plan.workers or 1, opts.executor
    if measure_accuracy is None or plan.rule != "accuracy budget" or kind == "serial" \
            or (workers <= 1 and not kind.startswith("ray")):
        yield None
        return
    from .decoupled import local_executor, map_shared

    with local_executor(workers, "threads" if kind == "processes" else kind) as executor:
        yield lambda many: map_shared(executor, _call, measure_accuracy, many)


def _call(fn, argument):
    return fn(argument)


def _score_and_select(opts: Options, plan: _Plan, loaded: _Loaded, measure_accuracy, progress, timings,
                      accuracy_many=None, ties=None):
    """Solve the MIP (once, again with a wider margin while an accuracy budget is unmet, or over the search
    grid) and select units. Returns (scores, selection, attempts, the options the chosen solve used)."""
    from .scoring import compute_scores  # the MIP stack loads only when needed

    net, calib, evald = loaded.net, loaded.calib, loaded.evald
    if plan.mode == "full":
        score = compute_scores
    else:
        from .decoupled import decoupled_scores
        score = partial(decoupled_scores, workers=plan.workers, executor_kind=opts.executor)
    attempts: list[dict] = []

    def attempt(n: int, m: float, limit: float):
        """One solve with n calibration images and margin m, and the selection on its scores."""
        progress.start("score", deadline=limit)
        scored = score(net, calib.x, calib.y, eps=opts.eps, lam=opts.lam, margin=m, sparsity=opts.sparsity,
                       relax=opts.relax, num_samples=n, seed=opts.seed, solver=opts.solver, time_limit=limit,
                       loss=opts.loss)
        timings["build"] = timings.get("build", 0.0) + scored.build_seconds
        timings["solve"] = timings.get("solve", 0.0) + scored.solve_seconds
        blocks = f"{len(scored.blocks)} blocks on {plan.workers} workers, " if plan.mode == "decoupled" else ""
        progress.done("score", f"{blocks}{scored.status}, {scored.variables:,} variables, {scored.binaries:,} "
                               f"binaries, solved in {scored.solve_seconds:.1f} s")
        done = _timed("select", progress, timings)
        chosen, closest = _select(plan, net, scored.scores, evald, opts, measure_accuracy, accuracy_many, ties)
        if chosen is not None and plan.confirm is not None:
            chosen.confirmed = plan.confirm.confirm(scored.scores, chosen)
        attempts.append({"lambda": opts.lam, "margin": m, "num_samples": n, "tried": closest.tried})
        done(("budget not confirmed" if plan.confirm is not None and chosen.confirmed is None else chosen.rule)
             if chosen else "budget not met")
        return scored, chosen, closest

    n, margin = opts.num_samples, opts.margin
    if opts.search:
        scored, chosen, closest, n, margin = _search(attempt, net, len(calib.x), opts.time_limit, progress)
    else:
        deadline = time.perf_counter() + opts.time_limit  # one limit for the re-solves too
        while True:
            scored, chosen, closest = attempt(n, margin, max(deadline - time.perf_counter(), 0.1))
            unconfirmed = chosen is not None and plan.confirm is not None and chosen.confirmed is None
            if (chosen is not None and not unconfirmed) or plan.rule != "accuracy budget" or len(attempts) >= 3:
                break
            # a wider margin makes the MIP keep more of every image's lead, so it ranks the units differently; a
            # larger lambda would not: once the hinge loss is 0 at the optimum, raising lambda leaves it optimal
            if deadline - time.perf_counter() < 1.0:
                progress.note("accuracy budget not met, and the time limit leaves no time to solve again")
                break
            margin = 2.0 * margin if margin > 0 else 1.0
            progress.note(f"accuracy budget not {'confirmed' if unconfirmed else 'met'}; solving again with margin "
                          f"{margin:g}")
    if chosen is not None and plan.confirm is not None:
        from .confirm import failure_message

        if chosen.confirmed is None:
            raise BudgetError(failure_message(chosen.confirmation))
        chosen = chosen.confirmed
    if chosen is None:
        raise BudgetError(_closest_message(plan.rule, net, closest, plan.max_drop, _size_fraction(opts),
                                           measure_accuracy))
    for note in chosen.notes:
        progress.note(note)
    return scored, chosen, attempts, replace(opts, num_samples=n, margin=margin)


def _reconstructor(opts: Options, loaded: _Loaded, compare_on: list) -> Reconstructor | None:
    """The rewrite with reconstruction (statistics on the calibration file's images; `auto` compares the methods
    on compare_on[0]: the evaluation data the search sees, not a confirmation half), or None without one."""
    if opts.reconstruct == "none":
        return None
    data = loaded.evald
    if opts.reconstruct == "auto" and data is None:  # the calibration images are what the fits were made on
        raise InputError("--reconstruct auto compares the methods on held-out data; give --eval-data")
    return Reconstructor(loaded.proto, loaded.net, opts.reconstruct, loaded.calib.x, seed=opts.seed,
                         measure=lambda model, network: _model_accuracy(model, network, compare_on[0],
                                                                        loaded.net.input_dtype))


def _rewrite(opts: Options, loaded: _Loaded, scored, candidate, progress, timings, rewrite=remove_units):
    """The smaller model (with bias compensation if asked), its kept units recorded in the metadata.
    Returns (model, network, compensation shifts or None, removed units that were never active)."""
    net, proto = loaded.net, loaded.proto
    scales, keep = candidate.scales, candidate.keep
    used = loaded.calib.x[np.asarray(scored.calibration_indices, dtype=np.int64)]
    dead = dead_units(net, interval_bounds(net, used, opts.eps))
    removed_dead = int(sum(int(np.sum(dead[k] & ~keep[k])) for k in scales))
    shifts = bias_compensation(net, used, scales) if opts.compensation else None
    done = _timed("rewrite", progress, timings)
    if shifts is None and candidate.model is not None:
        new_model, new_net = candidate.model, candidate.network
    else:
        new_model, new_net = rewrite(proto, net, scales, compensation=shifts, keep=keep)
    kept = {net.layers[k].name: np.flatnonzero(keep[k]).tolist() for k in sorted(keep)}
    _set_metadata(new_model, KEPT_UNITS_KEY, json.dumps(kept, sort_keys=True, separators=(",", ":")))
    done(f"{new_net.params:,} parameters left")
    return new_model, new_net, shifts, removed_dead


def _validate(loaded: _Loaded, new_model, reference, shifts, progress, timings):
    """check_rewrite on the calibration and evaluation data against reference = (network, scales), the masked
    (and reconstructed) IR network; a failure raises (exit 1, nothing written)."""
    done = _timed("validate", progress, timings)
    calib, evald = loaded.calib, loaded.evald
    xs = [calib.x] + ([evald.x] if evald is not None else [])
    ys = [None, evald.y] if evald is not None else [calib.y]  # accuracy on held-out data when there is some
    check = check_rewrite(loaded.proto, new_model, *reference, xs, y=ys, compensation=shifts)
    check.raise_if_failed()
    done(f"agreement {check.agreement * 100:.2f}%")
    return check


def _measure(opts, plan, loaded, scored, chosen, check, new_model, new_net, removed_dead, attempts, rounded,
             progress, timings) -> dict:
    done = _timed("measure", progress, timings)
    options = opts.as_dict()
    options.update(threshold=plan.threshold, max_accuracy_drop=plan.max_drop, workers=plan.workers)
    report = _report(loaded.net, loaded.proto, new_net, new_model, scored, chosen, check, loaded.evald,
                     removed_dead, attempts, rounded, options)
    report["mode"], report["mode_reason"] = plan.mode, plan.mode_reason
    report["canonicalised"] = loaded.patterns
    report["selection"]["by_default"] = plan.by_default
    if chosen.confirmation is not None:
        report["selection"]["confirmation"] = chosen.confirmation
    report["accuracy_samples"] = int(len(loaded.evald.x) if loaded.evald is not None else len(loaded.calib.x))
    report["agreement_samples"] = int(check.samples)
    report["blocks"] = scored.blocks if plan.mode == "decoupled" else []
    done()
    return report


def _finetune(opts, loaded, new_model, new_net, finetune_data, report, progress, timings):
    from .finetune import finetune

    done = _timed("finetune", progress, timings)
    tuned = finetune(new_model, load_data(finetune_data, new_net, what="fine-tuning data"), eval_data=loaded.evald,
                     epochs=opts.finetune_epochs, seed=opts.seed)
    report["finetune"] = {"epochs": tuned.epochs, "losses": [round(v, 6) for v in tuned.losses],
                          "train_accuracy_before": round(tuned.train_accuracy_before, 4),
                          "train_accuracy_after": round(tuned.train_accuracy_after, 4)}
    if tuned.eval_accuracy_after is not None:
        report["finetune"]["accuracy_before"] = report["accuracy_after"]  # the pruned model, before training
        report["finetune"]["accuracy_after"] = round(tuned.eval_accuracy_after, 4)
        report["accuracy_after"] = round(tuned.eval_accuracy_after, 4)
    done(f"{tuned.epochs} epochs")
    return tuned.model


def recognised_patterns(net: Network) -> list[str]:
    """Exporter patterns the model was read through: the canonical passes that changed it (canonical.py), the
    input stage the IR computes (normalisation, NHWC transpose), a fixed batch size, a convolutional head."""
    found = list(net.canonicalised)
    found += sorted({f"input_{layer.kind}" for layer in net.layers if layer.kind in INPUT_STAGE_KINDS})
    if net.fixed_batch is not None:
        found.append(f"fixed_batch_{net.fixed_batch}")
    if isinstance(net.layers[net.linear_indices()[-1]], Conv):
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
           max_drop, target_params, progress, timings, rewrite=remove_units):
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
    cands = rounding.candidates(net, proto, scores, chosen, roundings, rewrite=rewrite)
    for cand in cands:
        if rule == "accuracy budget":
            cand.accuracy = accuracy_of(cand.scales, built=(cand.model, cand.network))
            cand.meets_budget = accuracy_of(None) - cand.accuracy <= max_drop + 1e-9
        elif rule in ("parameter budget", "MAC budget"):
            size = "params" if rule == "parameter budget" else "macs"
            count, total, _ = select.SIZES[size]
            cand.meets_budget = count(net, cand.keep) <= target_params * total(net)
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


def _size_fraction(opts: Options) -> float | None:
    """The fraction a parameter or MAC budget keeps at most (None without one)."""
    return opts.target_params if opts.target_params is not None else opts.target_macs


def _select(plan: _Plan, net, scores, evald, opts: Options, accuracy_of, accuracy_many=None, ties=None):
    if plan.rule in ("parameter budget", "MAC budget"):
        size, fraction = ("params", opts.target_params) if plan.rule == "parameter budget" else \
            ("macs", opts.target_macs)
        return select.by_params(net, scores, fraction, True if plan.rescale is None else plan.rescale, size=size,
                                ties=ties)
    if plan.rule == "accuracy budget":
        return select.by_accuracy(net, scores, evald.x, evald.y, plan.max_drop, plan.rescale,
                                  accuracy_of=accuracy_of, ladder=plan.confirm.ladder if plan.confirm is not None else 0,
                                  accuracy_many=accuracy_many, ties=ties)
    notes: list[str] = []
    keep = select.keep_by_threshold(net, scores, plan.threshold, mean_rule=opts.mean_threshold, notes=notes)
    mode = True if plan.rescale is None else bool(plan.rescale)
    sel = select.Selection(scales=select.to_scales(scores, keep, mode), rule=plan.rule, threshold=plan.threshold,
                           notes=notes, rescaled=mode, ties=ties)
    return sel, sel


def _ort_accuracy(proto: onnx.ModelProto, net: Network, data: Dataset, rewrite=remove_units):
    """scales -> accuracy (%) of the model rewritten with them (None: the original), by onnxruntime.

    The budget search measures its candidates with the engine and the float32 arithmetic the written model is
    checked and deployed with; for convolutions it is also far faster than the IR's float64 numpy forward
    (benchmarks/budget_search.py). The original's accuracy is measured once and remembered.
    """
    original: list[float] = []

    def accuracy(scales: dict[int, np.ndarray] | None, built=None) -> float:
        """built: the (model, network) already rewritten with these scales, if there is one."""
        if scales is None and original:
            return original[0]
        model, new_net = (proto, net) if scales is None else (built or rewrite(proto, net, scales))
        value = _model_accuracy(model, new_net, data, net.input_dtype)
        if scales is None:
            original.append(value)
        return value

    return accuracy


def _model_accuracy(model: onnx.ModelProto, net: Network, data: Dataset, dtype) -> float:
    """Top-1 accuracy (%) of a model on labelled data, by onnxruntime."""
    logits = run_tensors(model, net.input_name, data.x, [net.logits_name], dtype=dtype)[0]
    return float(np.mean(logits.argmax(axis=1) == data.y) * 100.0)


def _closest_message(rule, net, closest, max_drop, target_params, accuracy) -> str:
    kept = {i: s > 0 for i, s in closest.scales.items()}
    params = select.params_after(net, kept)
    if rule == "parameter budget":
        return (f"cannot keep only {target_params:.0%} of the parameters: keeping one unit per layer still leaves "
                f"{params:,} of {net.params:,} ({params / net.params:.1%})")
    if rule == "MAC budget":
        macs = select.macs_after(net, kept)
        return (f"cannot keep only {target_params:.0%} of the MACs: keeping one unit per layer still leaves "
                f"{macs:,} of {net.macs:,} ({macs / net.macs:.1%})")
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
    scored_set = report_mod.pruned_layers(net)
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
        "groups": report_mod.group_rows(net),
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
                      "order": chosen.order,  # the removal order a budget walked (select.ORDERS)
                      "ties": "magnitude" if chosen.ties is None else "obs",  # its tie-break (saliency.py)
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
