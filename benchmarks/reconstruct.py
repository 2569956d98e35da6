#!/usr/bin/env python
"""Reconstruction after removal (--reconstruct): parameters removed and test accuracy under an accuracy budget,
for each method, with the MIP's ranking and with L1 magnitude ranking, so the comparison isolates the ranking.

For every model, ranking and method, the budget search (`select.by_accuracy`, as `optimize()` runs it) removes
the lowest-ranked units while the accuracy on the validation data, measured by onnxruntime on each candidate
rewritten WITH the reconstruction, stays within the budget; the written selection is then checked against the
reconstructed IR network (`check_rewrite`) and its test accuracy measured. MIP ranking: `compute_scores` with the
default options (10 calibration images, margin 1), kept units at their score or full strength, whichever is more
accurate (the default); L1 ranking: `select.magnitude` (L1 of incoming times outgoing weights), full strength.
Reconstruction statistics: the calibration pool (the digits' 100 calibration images; MNIST: 2,048 of the first
5,000 training images, reconstruct.MAX_IMAGES). No rounding of conv channels (--round-to 1).

Digits models: validation = test = models/*_eval.npz (their only held-out data); MNIST: validation = the last
5,000 training images, test = the 10,000 test images (benchmarks/models.py).

Usage: OPENBLAS_NUM_THREADS=1 python -m benchmarks.reconstruct [--models digits_mlp,digits_cnn,lenet5,mlp512]
       [--methods none,bias,scale,lsq,merge,auto] [--rankings MIP,L1] [--budget 1.0] [--damp 0.01] [--images N]
Writes benchmarks/results/reconstruct.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from onnxcrit import Reconstructor, by_accuracy, check_rewrite, compute_scores, load_network, magnitude, params_after

from . import models
from .common import RESULTS, ort_accuracy, publish

DAMP = Reconstructor.DEFAULT_DAMP  # the product's default damping; --damp changes it

POOL = 5000  # MNIST calibration pool (as benchmarks/budget_search.py)


def accuracy_measure(proto, net, x, y, rewrite):
    """scales -> accuracy (%) of the model rewritten with them (None: the original), as the budget search takes."""
    original = []

    def accuracy(scales, built=None) -> float:
        if scales is None:
            if not original:
                original.append(ort_accuracy(proto, net, x, y))
            return original[0]
        model, new_net = built or rewrite(proto, net, scales)
        return ort_accuracy(model, new_net, x, y)
    return accuracy


def run(case, net, proto, scores, rescale, method: str, budget: float, damp: float, images: int) -> dict:
    clock = time.perf_counter()
    builder = Reconstructor(proto, net, method, case.x_pool[:min(POOL, images)], damp=damp,
                            measure=lambda m, n: ort_accuracy(m, n, case.x_val, case.y_val))
    accuracy_of = accuracy_measure(proto, net, case.x_val, case.y_val, builder.rewrite)
    chosen, closest = by_accuracy(net, scores, case.x_val, case.y_val, budget, rescale, accuracy_of=accuracy_of)
    sel = chosen or closest
    built = builder.build(sel.scales)
    seconds = time.perf_counter() - clock
    check = check_rewrite(proto, built.model, built.reference, built.reference_scales, [case.x_test[:1000]])
    if not check.ok:
        raise SystemExit(f"{case.name} {method}: validation failed: {check.reasons}")
    keep = {i: s > 0 for i, s in sel.scales.items()}
    return {"removed": 1.0 - params_after(net, keep) / net.params, "met": chosen is not None,
            "val": accuracy_of(sel.scales), "test": ort_accuracy(built.model, built.network, case.x_test, case.y_test),
            "applied": built.method, "seconds": seconds, "candidates": len(sel.tried), "scales": sel.scales,
            "builder": builder}


def test_accuracy(case, net, builder, scales) -> float:
    """Test accuracy of a given selection rewritten with this builder's reconstruction."""
    built = builder.build(scales)
    return ort_accuracy(built.model, built.network, case.x_test, case.y_test)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits_mlp,digits_cnn,lenet5,mlp512")
    ap.add_argument("--methods", default="none,bias,scale,lsq,merge,auto")
    ap.add_argument("--rankings", default="MIP,L1")
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--damp", type=float, default=DAMP, help="lsq and scale damping (the product's default)")
    ap.add_argument("--images", type=int, default=POOL, help="reconstruction statistics on the first N pool images")
    ap.add_argument("--out", default=os.path.join(RESULTS, "reconstruct.md"))
    args = ap.parse_args(argv)
    methods = ["none"] + [m for m in args.methods.split(",") if m != "none"]
    lines = ["| model | val. / test acc. before | ranking | " + " | ".join(methods) + " |",
             "|" + "---|" * (3 + len(methods))]
    same = ["| model | ranking | units removed | params removed | " + " | ".join(methods) + " |",
            "|" + "---|" * (4 + len(methods))]
    notes = []
    start = time.perf_counter()
    for name in args.models.split(","):
        case = models.load_case(name)
        net, proto = load_network(case.path)
        base = ort_accuracy(proto, net, case.x_test, case.y_test)
        base_val = ort_accuracy(proto, net, case.x_val, case.y_val)
        clock = time.perf_counter()
        mip = compute_scores(net, case.x_pool[:POOL], case.y_pool[:POOL]).scores
        print(f"{name}: MIP scores in {time.perf_counter() - clock:.1f} s", file=sys.stderr)
        rankings = {"MIP": (mip, None), "L1": (magnitude(net), False)}
        for ranking in args.rankings.split(","):
            scores, rescale = rankings[ranking]
            cells, at_none, plain = [], [], None
            for method in methods:
                r = run(case, net, proto, scores, rescale, method, args.budget, args.damp, args.images)
                plain = plain or r
                at_none.append(f"{test_accuracy(case, net, r['builder'], plain['scales']):.2f}")
                cell = f"{100 * r['removed']:.1f}% / {r['test']:.2f}" + ("" if r["met"] else " (unmet)")
                if method == "auto":
                    cell += f" ({r['applied']})"
                cells.append(cell)
                print(f"{name} {ranking} {method}: removed {100 * r['removed']:.1f}%, val {r['val']:.2f}, test "
                      f"{r['test']:.2f}, applied {r['applied']}, {r['candidates']} candidates, {r['seconds']:.1f} s",
                      file=sys.stderr, flush=True)
                notes.append(f"{name} {ranking} {method}: {r['seconds']:.1f} s, {r['candidates']} candidates")
            lines.append(f"| {models.TITLES[name]} | {base_val:.2f} / {base:.2f} | {ranking} | " + " | ".join(cells)
                         + " |")
            units = sum(int(np.sum(s == 0)) for s in plain["scales"].values())
            same.append(f"| {models.TITLES[name]} | {ranking} | {units} | {100 * plain['removed']:.1f}% | "
                        + " | ".join(at_none) + " |")
    text = (f"Parameters removed / test accuracy (%) under a {args.budget:g}-point accuracy budget on the validation "
            f"data, per reconstruction (`--reconstruct`); the same budget search with the MIP's ranking and with L1 "
            f"magnitude. auto: the method it picked for the written selection. Damping {args.damp:g}; statistics on "
            f"{'the pool' if args.images >= POOL else f'{args.images} images'}. No fine-tuning, no "
            f"rounding. "
            f"{os.cpu_count()} cores, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
            f"{time.perf_counter() - start:.0f} s in all. Command: `python -m benchmarks.reconstruct`\n\n"
            + "\n".join(lines) + "\n\nTest accuracy (%) of the selection `none` made (the same units removed), per "
            "reconstruction (auto: picked on the validation data):\n\n" + "\n".join(same)
            + "\n\nSeconds per budget search (reconstruction included):\n\n"
            + "\n".join(f"- {n}" for n in notes) + "\n")
    publish(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
