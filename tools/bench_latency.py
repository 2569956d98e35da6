#!/usr/bin/env python
"""Latency speed-up against MACs reduction after physically removing units (onnxcrit.rewrite).

Models (built once, cached in ~/.cache/onnxcrit, not in git):

* LeNet-5 on MNIST: conv(1,6,5)-relu-maxpool2-conv(6,16,5)-relu-maxpool2-flatten-fc120-relu-fc84-relu-fc10,
  trained for one epoch with torch on /work/shared/data/mnist.npz (random init if the data is missing).
* A wider CNN at 32x32x3: conv 3->64->128->256 (3x3, pad 1), each relu + maxpool2, flatten, fc512-relu-fc10,
  random init (latency does not depend on the weights).

For each model and each removed fraction, every scored layer loses that fraction of its units by magnitude
(L1 norm of the unit's incoming weights). The rewritten model is validated against the masked IR forward pass,
then onnxruntime latency is measured at batch 1 and 64 (one thread, warm-up, median of the repeats; the
original and the pruned model are timed in alternation so both see the same machine load).
Speed-up = latency before / latency after; MACs ratio = MACs before / MACs after. Target: at batch 64 the
speed-up reaches at least 0.8 of the MACs ratio.

Usage: python tools/bench_latency.py [--repeats 30] [--warmup 5] [--fractions 0.5 0.75] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools" / "bench"))

from onnxcrit.frontend import load_network  # noqa: E402
from onnxcrit.measure import file_size, layer_table, paired_timings, totals  # noqa: E402
from onnxcrit.output import write_model  # noqa: E402
from onnxcrit.rewrite import remove_units  # noqa: E402
from onnxcrit.validate import check_rewrite  # noqa: E402
from results import publish  # noqa: E402

CACHE = Path(os.environ.get("ONNXCRIT_CACHE", Path.home() / ".cache" / "onnxcrit"))
MNIST = Path("/work/shared/data/mnist.npz")
RESULTS = ROOT / "tools" / "results" / "bench_latency.md"


# models ----------------------------------------------------------------------------------------------------

def _export(model, shape, path: Path) -> None:
    import torch

    model.eval()
    torch.onnx.export(model, (torch.zeros(1, *shape),), str(path), dynamo=False, opset_version=17,
                      do_constant_folding=True, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def mnist():
    data = np.load(MNIST)
    scale = lambda a: (a.astype(np.float32) / 255.0)[:, None, :, :]  # noqa: E731
    return scale(data["x_train"]), data["y_train"].astype(np.int64), scale(data["x_test"]), \
        data["y_test"].astype(np.int64)


def lenet5(path: Path) -> None:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84),
                          nn.ReLU(), nn.Linear(84, 10))
    if MNIST.exists():
        x, y, _, _ = mnist()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        gen = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(xt), generator=gen)
        model.train()
        for i in range(0, len(xt), 128):  # one epoch
            b = perm[i:i + 128]
            opt.zero_grad()
            F.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()
    _export(model, (1, 28, 28), path)


def wide_cnn(path: Path) -> None:
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    layers, c = [], 3
    for width in (64, 128, 256):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c = width
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(256 * 4 * 4, 512), nn.ReLU(), nn.Linear(512, 10))
    _export(model, (3, 32, 32), path)


MODELS = {"LeNet-5 (MNIST)": ("lenet5_mnist.onnx", lenet5), "wide CNN (32x32x3)": ("wide_cnn32.onnx", wide_cnn)}


def cached(file: str, build) -> Path:
    path = CACHE / file
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.onnx")
        build(tmp)
        os.replace(tmp, path)
    return path


# masks -----------------------------------------------------------------------------------------------------

def magnitude_scales(net, fraction: float) -> dict[int, np.ndarray]:
    """Remove `fraction` of each scored layer's units: those with the smallest L1 norm of incoming weights."""
    scales = {}
    for k in net.scored_indices():
        w = net.layers[k].weight.reshape(net.layers[k].units, -1)
        remove = int(round(fraction * len(w)))
        remove = min(remove, len(w) - 1)
        order = np.argsort(np.abs(w).sum(axis=1), kind="stable")
        s = np.ones(len(w))
        s[order[:remove]] = 0.0
        scales[k] = s
    return scales


# benchmark -------------------------------------------------------------------------------------------------

def run(args) -> list[dict]:
    rows = []
    test = mnist()[2:] if MNIST.exists() else None
    for label, (file, build) in MODELS.items():
        path = cached(file, build)
        net, model = load_network(path)
        rng = np.random.default_rng(0)
        probe = rng.random((16, *net.input_shape)).astype(np.float32)
        base = totals(layer_table(net, model))
        acc0 = None
        if "MNIST" in label and test is not None:
            acc0 = float(np.mean(net.predict(test[0]) == test[1]))
        for fraction in args.fractions:
            scales = magnitude_scales(net, fraction)
            new, new_net = remove_units(model, net, scales)
            report = check_rewrite(model, new, net, scales, [probe])
            if not report.ok:
                raise SystemExit(f"{label} {fraction:.0%}: rewrite failed validation: {report.reasons}")
            out = CACHE / f"{Path(file).stem}_{int(fraction * 100)}.onnx"
            write_model(new, out)
            after = totals(layer_table(new_net, new))
            lat = {}
            for lvl in args.levels:
                for b in (1, 64):  # before and after timed in alternation: same machine load for both
                    repeats = args.repeats * (10 if b == 1 else 1)
                    lat[lvl, b] = paired_timings([path, out], net.input_name, net.input_shape, b, repeats,
                                                 args.warmup, optimization=lvl)
            acc1 = float(np.mean(new_net.predict(test[0]) == test[1])) if acc0 is not None else None
            macs_ratio = base["macs"] / after["macs"]
            for lvl in args.levels:
                row = dict(model=label, removed=fraction, level=lvl, macs0=base["macs"], macs1=after["macs"],
                           macs_ratio=macs_ratio, params_ratio=base["params"] / after["params"],
                           size_ratio=file_size(path) / file_size(out), acc0=acc0, acc1=acc1)
                for b in (1, 64):
                    for clock in ("wall", "cpu"):
                        t0, t1 = lat[lvl, b][clock]
                        row[f"{clock}{b}"] = (t0, t1)
                        row[f"speedup_{clock}{b}"] = t0 / t1
                        row[f"share_{clock}{b}"] = t0 / t1 / macs_ratio
                rows.append(row)
                print(_line(row), flush=True)
    return rows


def _ms(t: float) -> str:
    return f"{t * 1e3:.3f}"


def _line(r: dict) -> str:
    return (f"{r['model']:<20} {r['level']:<8} -{r['removed']:.0%}  "
            f"MACs {r['macs0']:,} -> {r['macs1']:,} (x{r['macs_ratio']:.2f})  "
            f"b1 x{r['speedup_wall1']:.2f} wall, x{r['speedup_cpu1']:.2f} cpu  "
            f"b64 {_ms(r['wall64'][0])} -> {_ms(r['wall64'][1])} ms wall (x{r['speedup_wall64']:.2f}), "
            f"x{r['speedup_cpu64']:.2f} cpu, {r['share_cpu64']:.2f} of MACs ratio")


COLUMNS = ("model", "ORT graph opt.", "removed per layer", "MACs before -> after", "MACs ratio", "params ratio",
           "b1 speed-up wall / CPU", "b64 wall ms before -> after", "b64 speed-up wall / CPU",
           "b64 speed-up / MACs ratio, wall / CPU", "target met (CPU)", "accuracy before / after")


def table(rows: list[dict], args) -> str:
    import onnxruntime

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        acc = f"{r['acc0']:.4f} / {r['acc1']:.4f}" if r["acc0"] is not None else "-"
        cells = (r["model"], r["level"], f"{r['removed']:.0%}", f"{r['macs0']:,} -> {r['macs1']:,}",
                 f"{r['macs_ratio']:.2f}", f"{r['params_ratio']:.2f}",
                 f"{r['speedup_wall1']:.2f} / {r['speedup_cpu1']:.2f}",
                 f"{_ms(r['wall64'][0])} -> {_ms(r['wall64'][1])}",
                 f"{r['speedup_wall64']:.2f} / {r['speedup_cpu64']:.2f}",
                 f"{r['share_wall64']:.2f} / {r['share_cpu64']:.2f}", "yes" if r["share_cpu64"] >= 0.8 else "no", acc)
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nonnxruntime {onnxruntime.__version__}, CPUExecutionProvider, 1 intra-op thread, {args.warmup} "
            f"warm-up runs, median of {args.repeats} runs at batch 64 and {10 * args.repeats} at batch 1, before "
            f"and after timed in alternation, {os.cpu_count()} CPU(s), 1-minute load average {args.load[0]:.1f} at "
            f"the start and {args.load[1]:.1f} at the end. Wall = wall-clock time; CPU = CPU time of the calling "
            "thread (with one intra-op thread onnxruntime runs there), which leaves out time the machine gave to "
            "other processes, so it is the steadier number on a shared machine. Magnitude masks (L1 norm of "
            "incoming weights); every scored layer loses the same fraction, the output layer keeps its 10 units. "
            "Accuracy: MNIST test set, no fine-tuning. Target: b64 speed-up >= 0.8 x MACs ratio. Produced by "
            f"`python tools/bench_latency.py`, {time.strftime('%Y-%m-%d')}.\n")
    return "\n".join(lines) + "\n" + note


NOTES = """
Why LeNet-5 misses the target: with ORT's default level ("all") the convolutions run in the NCHWc layout,
whose channel blocks are 8 (AVX2) or 16 (AVX-512) wide; LeNet's 6 and 16 channels fit in one block, so
removing channels does not shrink the blocked convolution work (per-node profile at batch 64: the first Conv
takes ~270 us before and after pruning). Level "extended" (no NCHWc) scales better but keeps the im2col cost
of the 1-channel 28x28 input. The wide CNN's 64-256 channels span many blocks, and latency follows MACs at
ORT's default level. At level "extended" and 75% removed, the pruned wide CNN is small enough (3 M MACs) for
fixed costs (im2col, pooling, per-node overhead) to show: 0.97 in an earlier, less loaded run (wall clock,
30 repeats), 0.6 under the load of the run above.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.75])
    parser.add_argument("--levels", nargs="+", default=["all", "extended"], choices=["all", "extended", "basic"],
                        help="onnxruntime graph optimisation levels to time ('all' is its default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = run(args)
    args.load = (load_before, os.getloadavg()[0])
    rows.sort(key=lambda r: (r["model"], args.levels.index(r["level"]), r["removed"]))
    text = "# Latency against MACs after removing units\n\n" + table(rows, args) + NOTES
    print()
    publish(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
