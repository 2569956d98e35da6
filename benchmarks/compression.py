#!/usr/bin/env python
"""Compression under an accuracy budget: every criterion with the same reconstruction and its own budget search.

For every model and criterion, the product's accuracy-budget search (`by_accuracy`, as `optimize()` runs it)
walks that criterion's scores in the product's removal order across layers (`removal_order`, one rule for
every criterion, with the product's tie-break: OBS saliency under `lsq`, onnxcrit/saliency.py), every candidate rewritten with the same reconstruction (`Reconstructor`, the product's default
method unless --reconstruct says otherwise) and measured by onnxruntime on the choose half of the validation
data; the result is confirmed on the other half (`Confirmer`, the product's default confidence 0.9) and then
measured on the TEST split, which no step saw. So rows differ only in the ranking.

Criteria: onnxcrit (the MIP's scores at the default options: 10 calibration images, margin 1; full or
decoupled mode as `optimize` would choose; kept units at their score or full strength, whichever is more
accurate, in full mode, at full strength in decoupled mode, as the product does), L1 and L2 of incoming weights,
Torch-Pruning 1.6.1's GroupMagnitudeImportance (benchmarks/tp_importance.py; left out if not installed), mean
activation on 1,000 pool images, random (seed 0). Baselines are deployed at full strength. The onnxcrit row does
not re-solve with a wider margin when a budget is not confirmed (optimize does): every criterion gets one search.

Models: LeNet-5, MLP 784-512x3-10 and MLP 784-300-100-10 on MNIST (benchmarks/models.py: validation = the last
5,000 training images, test = the 10,000 test images, pool = training images); VGG-11 on the 4-class CIFAR-10
subset (benchmarks/vgg.py's recipe trained on 2,400 images; the 1,600 held out split, stratified with seed 0,
into 800 validation and 800 test; pool = its 2,400 training images). Reconstruction statistics on up to 2,048 pool images as the product
takes them from --data; no conv-channel rounding (--round-to 1), no fine-tuning.

Usage: OPENBLAS_NUM_THREADS=1 python -m benchmarks.compression [--models lenet5,mlp512,mlp300,vgg]
       [--criteria onnxcrit,L1,L2,Torch-Pruning,activation,random] [--budgets 0.5,1.0] [--reconstruct M]
       [--order RULE]
Writes benchmarks/results/compression.md and compression.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from onnxcrit import (DEFAULT_RECONSTRUCT, DEFAULTS, Confirmer, Dataset, Reconstructor, by_accuracy, compute_scores, decoupled_scores,
                      load_network, obs_saliency, params_after)

from . import methods, models, tp_importance
from .common import RESULTS, ort_accuracy, publish

POOL = 5000  # pool images passed as --data (calibration draws 10; reconstruction up to 2,048)
ACTIVATION_IMAGES = 1000
MEMO: dict = {}  # (reconstructor, scores, choose size) -> {scales bytes: accuracy on the choose half}
TITLES = {**models.TITLES, "vgg": "VGG-11 / CIFAR-10 4-class"}
CRITERIA = ("onnxcrit", "L1", "L2", "Torch-Pruning", "activation", "random")


VGG_HELD_PER_CLASS = 400  # 1,600 of the 4,000 images held out: 800 validation (enough to confirm 1 point), 800 test


def vgg_case() -> models.Case:
    """VGG-11 of benchmarks/vgg.py, trained (and cached) as there but on 2,400 images, its 1,600 held-out
    images split in two: 800 validation, 800 test (benchmarks/vgg.py's model holds out 800 only, too few to
    confirm a 1-point budget on half of them)."""
    from . import vgg

    split = vgg.cifar_split(held_per_class=VGG_HELD_PER_CLASS)
    path = os.path.join(vgg.CACHE, f"bench_vgg11_cifar4_h{4 * VGG_HELD_PER_CLASS}.onnx")
    if not os.path.exists(path):
        vgg.vgg11_onnx(path, split["train"])
    train, held = np.load(split["train"]), np.load(split["eval"])
    rng = np.random.default_rng(0)
    val, test = [], []
    for c in np.unique(held["y"]):
        idx = rng.permutation(np.flatnonzero(held["y"] == c))
        val.append(idx[:len(idx) // 2])
        test.append(idx[len(idx) // 2:])
    val, test = np.sort(np.concatenate(val)), np.sort(np.concatenate(test))
    return models.Case("vgg", path, train["x"], train["y"], held["x"][val], held["y"][val], held["x"][test],
                       held["y"][test])


def load_case(name: str) -> models.Case:
    return vgg_case() if name == "vgg" else models.load_case(name)


def mip_scores(net, case) -> tuple[dict, bool | None, str, float]:
    """The MIP's scores as optimize() computes them at the default options: (scores, rescale, mode, seconds).
    Mode: decoupled for VGG-11 (what `--mode auto` chooses there: its full program needs about 16 GB), full for
    the MNIST models (auto chooses full for them)."""
    clock = time.perf_counter()
    mode = "decoupled" if case.name == "vgg" else "full"
    x, y = case.x_pool[:POOL], case.y_pool[:POOL]
    kw = dict(eps=DEFAULTS.eps, lam=DEFAULTS.lam, margin=DEFAULTS.margin, sparsity=DEFAULTS.sparsity,
              relax=DEFAULTS.relax, num_samples=DEFAULTS.num_samples, seed=DEFAULTS.seed, loss=DEFAULTS.loss,
              time_limit=DEFAULTS.time_limit)
    if mode == "decoupled":
        scored = decoupled_scores(net, x, y, workers=2, **kw)
        rescale = False  # the product deploys decoupled scores at full strength
    else:
        scored = compute_scores(net, x, y, **kw)
        rescale = DEFAULTS.rescale  # None: the better of score / full strength per candidate
    return scored.scores, rescale, mode, time.perf_counter() - clock


def criterion_scores(name: str, net, case) -> tuple[dict, bool | None, str, float]:
    clock = time.perf_counter()
    if name == "onnxcrit":
        return mip_scores(net, case)
    if name == "random":
        scores = methods.random_scores(net, 0)
    elif name == "activation":
        scores = methods.activation(net, case.x_pool[:ACTIVATION_IMAGES])
    else:
        scores = methods.CRITERIA[name](net)
    return scores, False, "", time.perf_counter() - clock


def budget_run(case, net, proto, builder, scores, rescale, budget: float, order: str | None, ties=None) -> dict:
    """The product's budget search on the choose half, confirmed on the other half, measured on test. ties: the
    order's tie-break (None: magnitude; the product passes the OBS saliency under lsq)."""
    clock = time.perf_counter()
    confirmer = Confirmer(proto, net, Dataset(case.x_val, case.y_val, "validation"), DEFAULTS.seed, budget,
                          DEFAULTS.confidence, builder.rewrite)
    choose = confirmer.choose
    memo = MEMO.setdefault((id(builder), id(scores), len(choose.y)), {})
    if None not in memo:
        memo[None] = ort_accuracy(proto, net, choose.x, choose.y)
    base_choose = memo[None]

    def accuracy_of(scales, built=None):
        """Accuracy on the choose half; remembered across budgets (the split does not depend on the budget)."""
        if scales is None:
            return base_choose
        key = b"".join(np.asarray(scales[k], dtype=np.float64).tobytes() for k in sorted(scales))
        if key not in memo:
            memo[key] = ort_accuracy(*(built or builder.rewrite(proto, net, scales)), choose.x, choose.y)
        return memo[key]

    chosen, closest = by_accuracy(net, scores, choose.x, choose.y, budget, rescale, accuracy_of=accuracy_of,
                                  ladder=confirmer.ladder, order=order, ties=ties)
    final, record = None, None
    if chosen is not None:
        final = confirmer.confirm(scores, chosen)
        record = (final or chosen).confirmation
    seconds = time.perf_counter() - clock
    out = {"budget": budget, "met_on_choose": chosen is not None, "confirmed": bool(record and record["confirmed"]),
           "too_small": bool(record and record["too_small"]), "seconds": seconds,
           "choose_images": len(choose.y), "confirm_upper": None, "confirm_drop": None}
    if record is not None and record.get("interval"):
        out["confirm_drop"], out["confirm_upper"] = record["drop_on_confirm"], record["interval"][1]
    if chosen is not None:  # the search's own pick, before confirmation, measured on test too
        picked = builder.build(chosen.scales)
        out.update(pick_params_removed=1 - params_after(net, {i: s > 0 for i, s in chosen.scales.items()}) / net.params,
                   pick_choose_drop=base_choose - accuracy_of(chosen.scales, (picked.model, picked.network)),
                   pick_test_drop=case.base_test - ort_accuracy(picked.model, picked.network, case.x_test,
                                                                case.y_test))
    if final is None:  # nothing written: the budget was not met (or not confirmed) by any removal
        out.update(params_removed=0.0, macs_removed=0.0, test_drop=0.0, choose_drop=None, units_removed=0)
        return out
    built = builder.build(final.scales)
    keep = {i: s > 0 for i, s in final.scales.items()}
    kept_net = built.network
    out.update(params_removed=1 - params_after(net, keep) / net.params, macs_removed=1 - kept_net.macs / net.macs,
               choose_drop=base_choose - accuracy_of(final.scales, (built.model, built.network)),
               test_drop=case.base_test - ort_accuracy(built.model, built.network, case.x_test, case.y_test),
               units_removed=int(sum(int((~k).sum()) for k in keep.values())),
               kept={net.layers[i].name: f"{int(k.sum())}/{len(k)}" for i, k in sorted(keep.items())},
               applied=built.method)
    return out


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def table(rows: list[dict], budgets) -> str:
    head = ("| model | criterion | " + " | ".join(f"{b:g} pt: params / MACs removed | {b:g} pt: test drop "
                                                 f"(confirm-half upper) | {b:g} pt: held on test" for b in budgets)
            + " | scoring s | searches s |")
    out = [head, "|" + "---|" * (4 + 3 * len(budgets))]
    for r in rows:
        cells = []
        for b in budgets:
            x = r["budgets"][str(b)]
            note = "" if x["confirmed"] else (" (not confirmed: too few images)" if x["too_small"] and x["met_on_choose"]
                                              else " (not confirmed)" if x["met_on_choose"] else " (unmet)")
            upper = f" ({x['confirm_upper']:.2f})" if x["confirm_upper"] is not None else ""
            cells += [f"{pct(x['params_removed'])} / {pct(x['macs_removed'])}{note}",
                      f"{x['test_drop']:.2f}{upper}", "yes" if x["test_drop"] <= b + 1e-9 else "**no**"]
        search = sum(r["budgets"][str(b)]["seconds"] for b in budgets)
        out.append(f"| {TITLES[r['model']]} | {r['criterion']} | " + " | ".join(cells)
                   + f" | {r['scoring_seconds']:.1f} | {search:.0f} |")
    return "\n".join(out) + "\n"


def picks(rows: list[dict], budgets) -> str:
    """The search's pick on the choose half before confirmation: what the same search removes without the
    guard, and what that costs on test."""
    head = ("| model | criterion | " + " | ".join(f"{b:g} pt: params removed | {b:g} pt: choose-half drop | "
                                                 f"{b:g} pt: test drop" for b in budgets) + " |")
    out = [head, "|" + "---|" * (2 + 3 * len(budgets))]
    for r in rows:
        cells = []
        for b in budgets:
            x = r["budgets"][str(b)]
            if x.get("pick_params_removed") is None:
                cells += ["-", "-", "-"]
                continue
            cells += [pct(x["pick_params_removed"]), f"{x['pick_choose_drop']:.2f}",
                      f"{x['pick_test_drop']:.2f}" + ("" if x["pick_test_drop"] <= b + 1e-9 else " (over)")]
        out.append(f"| {TITLES[r['model']]} | {r['criterion']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def summary(rows: list[dict], budgets) -> str:
    out = ["| model | budget | onnxcrit params removed | best baseline (params removed) | ratio | onnxcrit >= every "
           "baseline |", "|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        ours = next((r for r in mine if r["criterion"] == "onnxcrit"), None)
        others = [r for r in mine if r["criterion"] != "onnxcrit"]
        if ours is None or not others:
            continue
        for b in budgets:
            o = ours["budgets"][str(b)]["params_removed"]
            best = max(others, key=lambda r: r["budgets"][str(b)]["params_removed"])
            bv = best["budgets"][str(b)]["params_removed"]
            ratio = f"x{o / bv:.2f}" if bv > 0 else "-"
            out.append(f"| {TITLES[model]} | {b:g} pt | {pct(o)} | {best['criterion']} ({pct(bv)}) | {ratio} | "
                       f"{'yes' if o >= bv - 1e-12 else 'no'} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compression", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,mlp512,mlp300,vgg")
    ap.add_argument("--criteria", default=",".join(CRITERIA))
    ap.add_argument("--budgets", default="0.5,1.0")
    ap.add_argument("--reconstruct", default=None, help="default: the product's (lsq)")
    ap.add_argument("--order", default=None, help="removal order rule (default: the product's)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "compression.md"))
    args = ap.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",")]
    criteria = args.criteria.split(",")
    if "Torch-Pruning" in criteria and not tp_importance.available()[0]:
        criteria.remove("Torch-Pruning")
        print("Torch-Pruning not installed: its rows are left out", file=sys.stderr)
    json_path = os.path.splitext(args.out)[0] + ".json"
    rows: list[dict] = []
    start = time.perf_counter()
    for name in args.models.split(","):
        clock = time.perf_counter()
        case = load_case(name)
        net, proto = load_network(case.path)
        case.base_test = ort_accuracy(proto, net, case.x_test, case.y_test)
        base_val = ort_accuracy(proto, net, case.x_val, case.y_val)
        method = args.reconstruct or DEFAULT_RECONSTRUCT  # the product's default, in full and decoupled mode
        builder = Reconstructor(proto, net, method, case.x_pool[:POOL], seed=DEFAULTS.seed)
        ties = obs_saliency(net, builder.x) if method == "lsq" else None  # the product's tie-break, every criterion
        print(f"{name}: loaded, validation {base_val:.2f}%, test {case.base_test:.2f}% "
              f"({time.perf_counter() - clock:.0f} s)", file=sys.stderr, flush=True)
        for crit in criteria:
            t0 = time.perf_counter()
            scores, rescale, mode, seconds = criterion_scores(crit, net, case)
            row = {"model": name, "criterion": crit + (f" ({mode})" if mode == "decoupled" else ""), "reconstruct": method,
                   "scoring_seconds": seconds, "val_before": base_val, "test_before": case.base_test,
                   "params": net.params, "macs": net.macs, "budgets": {}}
            for b in budgets:
                r = budget_run(case, net, proto, builder, scores, rescale, b, args.order, ties)
                row["budgets"][str(b)] = r
                print(f"{name} {crit} {b:g}: params {pct(r['params_removed'])} macs {pct(r['macs_removed'])} "
                      f"test drop {r['test_drop']:.2f} confirmed {r['confirmed']} ({r['seconds']:.0f} s)",
                      file=sys.stderr, flush=True)
            row["wall_seconds"] = time.perf_counter() - t0
            if crit == "onnxcrit":
                row["criterion"] = "onnxcrit" + (" (decoupled)" if mode == "decoupled" else "")
            rows.append(row)
            with open(json_path, "w") as f:
                json.dump({"rows": rows, "reconstruct": args.reconstruct, "order": args.order}, f, indent=1)
        print(f"{name}: {time.perf_counter() - clock:.0f} s", file=sys.stderr, flush=True)
    for r in rows:
        r["criterion"] = r["criterion"].replace(" (decoupled)", "")
    text = (f"# Compression under an accuracy budget (python -m benchmarks.compression)\n\n"
            f"Reconstruction {args.reconstruct or 'as the product chooses (lsq)'} "
            f"for every criterion of a model, removal order "
            f"`{args.order or 'product default'}`; budgets met on the choose half of the validation data, "
            f"confirmed on the other half at confidence {DEFAULTS.confidence:g}, drops measured on the test split. "
            f"{os.cpu_count()} cores (shared), OPENBLAS_NUM_THREADS="
            f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, {time.perf_counter() - start:.0f} s in all.\n\n"
            + table(rows, budgets) + "\nThe search's pick on the choose half, before confirmation:\n\n"
            + picks(rows, budgets) + "\nonnxcrit against the best baseline (parameters removed):\n\n"
            + summary(rows, budgets))
    publish(args.out, text)
    with open(json_path, "w") as f:
        json.dump({"rows": rows, "reconstruct": args.reconstruct, "order": args.order}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
