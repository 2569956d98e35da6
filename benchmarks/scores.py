#!/usr/bin/env python
"""Benchmark the scoring stage: build and solve time, problem size, and the held-out accuracy of the MIP mask
against a magnitude mask and random masks with the same per-layer unit counts.

Models: the example digits MLP and CNN (models/), and LeNet-5 on MNIST, trained here with torch from
../shared/data/mnist.npz and exported to ONNX once (cached in ~/.cache/onnxcrit/, outside git).
Calibration images come from the training data (digits: models/*_calib.npz; MNIST: the train split), the
accuracy from held-out data (digits: models/*_eval.npz, 450 images; MNIST: the 10,000 test images).

Writes the table to tools/results/bench_scores.md and prints it.

Usage: python tools/bench_scores.py [--models digits_mlp,digits_cnn,lenet5] [--variants]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(HERE, "bench"))

from onnxcrit import select  # noqa: E402
from onnxcrit.frontend import load_network  # noqa: E402
from onnxcrit.scoring import compute_scores, masks_from_scores  # noqa: E402
from methods import keep_top  # noqa: E402
from results import publish  # noqa: E402
import models  # noqa: E402

MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist.npz")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "onnxcrit")
RESULTS = os.path.join(HERE, "results", "bench_scores.md")
RANDOM_SEEDS = 5


# --------------------------------------------------------------------------------------------------
# models and data


def load_case(name: str):
    """(network, calibration pool x, y, held-out x, y)."""
    if name.startswith("digits"):
        net, _ = load_network(os.path.join(ROOT, "models", f"{name}.onnx"))
        cal = np.load(os.path.join(ROOT, "models", f"{name}_calib.npz"))
        ev = np.load(os.path.join(ROOT, "models", f"{name}_eval.npz"))
        return net, cal["x"], cal["y"], ev["x"], ev["y"]
    if name == "lenet5":
        path = os.path.join(CACHE, "bench_scores_lenet5_mnist.onnx")
        if not os.path.exists(path):
            t = time.perf_counter()
            models.train_and_export("lenet5", path, train=60_000, epochs=2)  # all 60,000 images
            print(f"trained and exported LeNet-5 to {path} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        net, _ = load_network(path)
        d = np.load(MNIST)
        f = lambda a: (a[:, None] / 255.0).astype(np.float32)
        return net, f(d["x_train"]), d["y_train"].astype(np.int64), f(d["x_test"]), d["y_test"].astype(np.int64)
    raise SystemExit(f"unknown model {name}")


# --------------------------------------------------------------------------------------------------
# baselines (the criteria and keep_top are shared with the suite in tools/bench/)


def as_scales(keep):
    return {i: k.astype(float) for i, k in keep.items()}


# --------------------------------------------------------------------------------------------------


def run_case(name: str, options: dict, threshold: float = 0.1, label: str = "") -> dict:
    net, x_pool, y_pool, x_ev, y_ev = load_case(name)
    base = select.accuracy(net, x_ev, y_ev)
    res = compute_scores(net, x_pool, y_pool, **options)
    scales, _ = masks_from_scores(net, res.scores, threshold=threshold, as_scales=True)
    keep = {i: s > 0 for i, s in scales.items()}
    counts = {i: int(k.sum()) for i, k in keep.items()}
    acc_mip = select.accuracy(net, x_ev, y_ev, scales)
    acc_mip01 = select.accuracy(net, x_ev, y_ev, as_scales(keep))
    acc_mag = select.accuracy(net, x_ev, y_ev, as_scales(keep_top(select.magnitude(net), counts)))
    accs = []
    for seed in range(RANDOM_SEEDS):
        rng = np.random.default_rng(seed)
        rnd = {i: rng.random(len(s)) for i, s in res.scores.items()}
        accs.append(select.accuracy(net, x_ev, y_ev, as_scales(keep_top(rnd, counts))))
    removed = 1.0 - select.params_after(net, keep) / net.params
    units = {net.layers[i].name: f"{counts[i]}/{len(k)}" for i, k in keep.items()}
    return dict(model=name, label=label, status=res.status, build=res.build_seconds, solve=res.solve_seconds,
                variables=res.variables, binaries=res.binaries, constraints=res.constraints, nnz=res.nonzeros,
                params=net.params, removed=removed, base=base, mip=acc_mip, mip01=acc_mip01, mag=acc_mag,
                rnd=float(np.mean(accs)), units=units, solver=res.solver)


def table(rows: list[dict]) -> str:
    head = ("| model | configuration | status | build s | solve s | variables | binaries | rows | params removed | "
            "acc. unpruned | acc. MIP (scaled) | acc. MIP (0/1) | acc. magnitude | acc. random (mean of 5) | "
            "kept units |")
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        lines.append(f"| {r['model']} | {r['label']} | {r['status']} | {r['build']:.2f} | {r['solve']:.2f} | "
                     f"{r['variables']} | {r['binaries']} | {r['constraints']} | "
                     f"{100 * r['removed']:.1f}% of {r['params']} | {r['base']:.2f} | {r['mip']:.2f} | "
                     f"{r['mip01']:.2f} | {r['mag']:.2f} | {r['rnd']:.2f} | "
                     f"{', '.join(f'{k} {v}' for k, v in r['units'].items())} |")
    return "\n".join(lines) + "\n"


# (label, compute_scores options on top of the defaults, threshold)
CONFIGS = [
    ("defaults (N 10, margin 1, thr 0.1)", {}, 0.1),
    ("N 50, margin 2, thr 0.3", dict(num_samples=50, margin=2.0), 0.3),
]
VARIANTS = [
    ("loss lse", dict(loss="lse"), 0.1),
    ("MIP, CBC", dict(relax=False, solver="cbc"), 0.1),
    ("MIP, HiGHS", dict(relax=False, solver="highs"), 0.1),
    ("LP, HiGHS simplex", dict(solver="highs"), 0.1),
    ("sparsity paper", dict(sparsity="paper"), 0.1),
    ("stable_on nonneg (METHOD as written)", dict(stable_on="nonneg"), 0.1),
    ("N 50, margin 2, thr 0.3, loss lse", dict(num_samples=50, margin=2.0, loss="lse"), 0.3),
    ("N 50, margin 2, thr 0.3, nonneg", dict(num_samples=50, margin=2.0, stable_on="nonneg"), 0.3),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits_mlp,digits_cnn,lenet5")
    ap.add_argument("--variants", action="store_true", help="also the comparisons behind the defaults")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    names = args.models.split(",")
    t0 = time.perf_counter()
    configs = CONFIGS + (VARIANTS if args.variants else [])
    rows = [run_case(m, dict(time_limit=300.0, **opts), thr, label) for label, opts, thr in configs for m in names]
    rows.sort(key=lambda r: names.index(r["model"]))
    text = ["Options not named: eps 1e-5, lambda 5, hinge loss, LP relaxation by HiGHS interior point, 1 thread, "
            "calibration images "
            "balanced over classes and correctly classified (seed 0). MIP mask deployed with its scores folded "
            "into the outgoing weights (scaled) and as plain 0/1; magnitude (L1 in x L1 out) and random masks "
            "keep the same number of units per layer as the MIP mask. Accuracy in percent on held-out data "
            "(digits: 450 images; MNIST: 10,000 test images).", "", table(rows),
            f"Total benchmark time {time.perf_counter() - t0:.0f} s on {os.cpu_count()} cores. "
            f"Command: `python tools/bench_scores.py{' --variants' if args.variants else ''}`"]
    publish(args.out, "\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
