"""Accuracy-budget search: the IR's float64 numpy forward against onnxruntime on the rewritten candidates.

`by_accuracy` measures every candidate selection on the evaluation data. `optimize()` gives it an onnxruntime
measure: rewrite with the candidate's scales, run the float32 model (`ort_measure` below does the same with the
public `remove_units` and onnxruntime; the original's accuracy measured once); the IR's numpy forward is
by_accuracy's default. Both run here on the same scores, in the same process, one after the other: seconds,
speed-up, and whether they chose the same selection.

Models: LeNet-5 and the 784-512x3 MLP (MNIST, 5,000 validation images, MIP scores, N 10), the digits CNN
(450 images) and, when benchmarks/vgg.py has cached it, VGG-11 on the 4-class CIFAR subset (800 images;
L1 scores normalised per layer, since its full MIP is out of reach: the search's cost does not depend on
where the order comes from).

Usage: python -m benchmarks.budget_search [--models lenet5,mlp512,digits_cnn,vgg11]
Writes benchmarks/results/budget_search.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from onnxcrit import by_accuracy, compute_scores, load_network, params_after, remove_units

from . import methods, models
from .common import RESULTS, ort_accuracy, publish

VGG = os.path.join(os.path.expanduser("~"), ".cache", "onnxcrit", "bench_vgg11_cifar4.onnx")
VGG_EVAL = os.path.join(os.path.expanduser("~"), ".cache", "onnxcrit", "bench_vgg_cifar4_eval.npz")


def case(name: str):
    """(title, net, proto, scores, eval x, eval y)."""
    if name == "vgg11":
        if not os.path.exists(VGG):
            return None
        net, proto = load_network(VGG)
        ev = np.load(VGG_EVAL)
        scores = {i: s / s.max() for i, s in methods.l1(net).items()}
        return "VGG-11 / CIFAR-10 4-class (L1 order)", net, proto, scores, ev["x"], ev["y"]
    c = models.load_case(name)
    net, proto = load_network(c.path)
    scores = compute_scores(net, c.x_pool[:5000], c.y_pool[:5000]).scores
    return models.TITLES[name], net, proto, scores, c.x_val, c.y_val


def ort_measure(proto, net, x, y):
    """scales -> accuracy (%) of the model rewritten with them (None: the original), by onnxruntime."""
    original: list[float] = []

    def accuracy(scales):
        if scales is None:
            if not original:
                original.append(ort_accuracy(proto, net, x, y))
            return original[0]
        model, new_net = remove_units(proto, net, scales)
        return ort_accuracy(model, new_net, x, y)

    return accuracy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.budget_search", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,mlp512,digits_cnn,vgg11")
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--out", default=os.path.join(RESULTS, "budget_search.md"))
    args = ap.parse_args(argv)
    lines = ["| model | eval images | candidates | numpy float64 s | onnxruntime float32 s | speed-up | "
             "same selection | params kept (numpy / ORT) |", "|" + "---|" * 8]
    for name in args.models.split(","):
        found = case(name)
        if found is None:
            print(f"{name}: not cached, skipped (run python -m benchmarks.vgg first)", file=sys.stderr)
            continue
        title, net, proto, scores, x, y = found
        timed = {}
        for engine in ("numpy", "ort"):
            accuracy_of = ort_measure(proto, net, x, y) if engine == "ort" else None
            clock = time.perf_counter()
            chosen, closest = by_accuracy(net, scores, x, y, args.budget, accuracy_of=accuracy_of)
            timed[engine] = (time.perf_counter() - clock, chosen or closest)
        (t_np, a), (t_ort, b) = timed["numpy"], timed["ort"]
        same = all(np.array_equal(a.scales[i], b.scales[i]) for i in a.scales)
        params = [params_after(net, {i: s > 0 for i, s in sel.scales.items()}) for sel in (a, b)]
        lines.append(f"| {title} | {len(x):,} | {len(b.tried)} | {t_np:.1f} | {t_ort:.1f} | x{t_np / t_ort:.1f} | "
                     f"{'yes' if same else 'no'} | {params[0]:,} / {params[1]:,} |")
        print(lines[-1], file=sys.stderr)
    text = (f"Accuracy budget {args.budget:g} points, rescale tried both ways (the default), one process, "
            f"{os.cpu_count()} cores; onnxruntime with 1 thread. Command: `python -m benchmarks.budget_search`\n\n"
            + "\n".join(lines) + "\n")
    publish(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
