"""Benchmark the scoring stage: build and solve time, problem size, and the held-out accuracy of the MIP mask
against a magnitude mask and random masks with the same per-layer unit counts.

Models: the example digits MLP and CNN (models/), and LeNet-5 on MNIST, trained here with torch from
../shared/data/mnist.npz and exported to ONNX once (cached in ~/.cache/onnxcrit/, outside git).
Calibration images come from the training data (digits: models/*_calib.npz; MNIST: the train split), the
accuracy from held-out data (digits: models/*_eval.npz, 450 images; MNIST: the 10,000 test images).

Writes the table to benchmarks/results/bench_scores.md and prints it.

Usage: python -m benchmarks.scores [--models digits_mlp,digits_cnn,lenet5] [--variants]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from onnxcrit import compute_scores, keep_by_threshold, load_network, params_after, to_scales

from . import models
from .common import RESULTS, ROOT, ir_accuracy, publish
from .methods import as_scales, keep_top, magnitude

MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist.npz")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "onnxcrit")
LENET5 = os.path.join(CACHE, "bench_scores_lenet5_mnist.onnx")
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
        net, _ = load_network(lenet5_path())
        d = np.load(MNIST)
        f = lambda a: (a[:, None] / 255.0).astype(np.float32)
        return net, f(d["x_train"]), d["y_train"].astype(np.int64), f(d["x_test"]), d["y_test"].astype(np.int64)
    raise SystemExit(f"unknown model {name}")


def lenet5_path() -> str:
    """This benchmark's LeNet-5 (2 epochs on all 60,000 MNIST training images), trained and cached on first use;
    benchmarks/vgg.py uses it too."""
    if not os.path.exists(LENET5):
        t = time.perf_counter()
        models.train_and_export("lenet5", LENET5, train=60_000, epochs=2)
        print(f"trained and exported LeNet-5 to {LENET5} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return LENET5


# --------------------------------------------------------------------------------------------------
# baselines: magnitude and keep_top from methods.py (shared with the suite)


def run_case(name: str, options: dict, threshold: float = 0.1, label: str = "") -> dict:
    net, x_pool, y_pool, x_ev, y_ev = load_case(name)
    base = ir_accuracy(net, x_ev, y_ev)
    res = compute_scores(net, x_pool, y_pool, **options)
    scales = to_scales(res.scores, keep_by_threshold(net, res.scores, threshold), rescale=True)
    keep = {i: s > 0 for i, s in scales.items()}
    counts = {i: int(k.sum()) for i, k in keep.items()}
    acc_mip = ir_accuracy(net, x_ev, y_ev, scales)
    acc_mip01 = ir_accuracy(net, x_ev, y_ev, as_scales(keep))
    acc_mag = ir_accuracy(net, x_ev, y_ev, as_scales(keep_top(magnitude(net), counts)))
    accs = []
    for seed in range(RANDOM_SEEDS):
        rng = np.random.default_rng(seed)
        rnd = {i: rng.random(len(s)) for i, s in res.scores.items()}
        accs.append(ir_accuracy(net, x_ev, y_ev, as_scales(keep_top(rnd, counts))))
    removed = 1.0 - params_after(net, keep) / net.params
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
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scores", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits_mlp,digits_cnn,lenet5")
    ap.add_argument("--variants", action="store_true", help="also the comparisons behind the defaults")
    ap.add_argument("--out", default=os.path.join(RESULTS, "bench_scores.md"))
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
            f"Command: `python -m benchmarks.scores{' --variants' if args.variants else ''}`"]
    publish(args.out, "\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
