"""Benchmark decoupled mode: VGG-11 on the 4-class CIFAR-10 subset end to end, the scoring stage with 1 and 2
workers, and LeNet-5 on MNIST in full vs decoupled mode.

VGG-11 widths at CIFAR shape (conv 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M, then
512 -> 256 -> 4; BatchNorm, folded by the front end) trained here with torch on CPU on 3,200 of the 4,000
images of ../shared/data/cifar10_test_4class.npz (airplane, automobile, ship, truck -> labels 0..3; a
stratified split, seed 0), 800 held out. The file holds 4 of CIFAR-10's 10 classes only: this is a 4-class
task, its accuracies are not comparable with 10-class CIFAR-10 numbers. The model and the split are cached
in ~/.cache/onnxcrit/ (outside git).

Each onnxcrit run is `optimize` (or, for the 1 vs 2 workers comparison, the scoring stage
`decoupled_scores`) in a fresh process with OPENBLAS_NUM_THREADS=1 unless set: on this 2-core machine with
another job holding a core, OpenBLAS's default 2 threads made small products 33x slower (a 3,200 x 512
logistic-regression step: 80 ms vs 2.4 ms) and the numpy forward pass slower too. Peak memory is sampled over
the process and its descendants (the solver processes). Magnitude and random masks keep the same number of
units per layer as the MIP selection (0/1 masks).

Writes benchmarks/results/bench_vgg.md and prints it.

Usage: python -m benchmarks.vgg [--e2e-workers 2] [--samples 10,50] [--skip-lenet] [--heads]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from .common import RESULTS, ROOT, ir_accuracy, publish

DATA = os.path.join(ROOT, "..", "shared", "data")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "onnxcrit")
VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
CIFAR_CLASSES = (0, 1, 8, 9)  # airplane, automobile, ship, truck
RANDOM_SEEDS = 5


# --------------------------------------------------------------------------------------------------
# data and models (torch only here, never in onnxcrit's core)


def cifar_split(seed: int = 0, held_per_class: int = 200) -> dict[str, str]:
    """Stratified split of the 4-class file (default 3,200 / 800: 200 images per class held out), normalised
    NCHW float32 with the training part's statistics, cached as .npz."""
    tag = "" if held_per_class == 200 else f"_h{4 * held_per_class}"
    paths = {k: os.path.join(CACHE, f"bench_vgg_cifar4{tag}_{k}.npz") for k in ("train", "eval")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    d = np.load(os.path.join(DATA, "cifar10_test_4class.npz"))
    x = d["x_test"].astype(np.float32) / 255.0  # N, H, W, 3
    y = np.searchsorted(np.array(CIFAR_CLASSES), d["y_test"]).astype(np.int64)
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in range(len(CIFAR_CLASSES)):
        idx = rng.permutation(np.flatnonzero(y == c))
        held.append(idx[:held_per_class])
        train.append(idx[held_per_class:])
    train, held = np.sort(np.concatenate(train)), np.sort(np.concatenate(held))
    mean = x[train].mean(axis=(0, 1, 2))
    std = x[train].std(axis=(0, 1, 2))
    x = ((x - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)  # NHWC -> NCHW
    os.makedirs(CACHE, exist_ok=True)
    for key, idx in (("train", train), ("eval", held)):
        tmp = paths[key] + ".tmp.npz"
        np.savez(tmp, x=x[idx], y=y[idx])
        os.replace(tmp, paths[key])
    return paths


def _export(model, example, path: str) -> None:
    import torch

    tmp = path + ".tmp"
    torch.onnx.export(model, (example,), tmp, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    os.replace(tmp, path)


def crop_flip(xb, gen):
    """CIFAR augmentation of a batch [N, C, 32, 32]: random crop after padding 4, horizontal flip half the time
    (one draw per batch from the torch generator `gen`)."""
    import torch
    import torch.nn.functional as F

    xb = F.pad(xb, (4, 4, 4, 4))
    dx, dy = torch.randint(0, 9, (2,), generator=gen).tolist()
    xb = xb[:, :, dy:dy + 32, dx:dx + 32]
    if torch.rand(1, generator=gen).item() < 0.5:
        xb = xb.flip(3)
    return xb


def vgg11_onnx(path: str, train_npz: str, epochs: int = 8, seed: int = 0, threads: int = 1) -> dict:
    """Train VGG-11 (BatchNorm) on the training split with light augmentation; export with the legacy exporter."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    d = np.load(train_npz)
    x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
    layers, channels = [], 3
    for v in VGG11:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            channels = v
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 4))
    model = model.to(memory_format=torch.channels_last)
    steps = epochs * ((len(x) + 63) // 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            b = perm[i:i + 64]
            xb = crop_flip(x[b], gen)
            opt.zero_grad()
            F.cross_entropy(model(xb.contiguous(memory_format=torch.channels_last)), y[b]).backward()
            opt.step()
            sched.step()
    model.eval()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _export(model.to(memory_format=torch.contiguous_format), x[:1], path)
    return {"epochs": epochs, "seconds": time.perf_counter() - start}


def lenet5_case() -> tuple[str, str, str]:
    """LeNet-5 on MNIST (the scoring benchmark's, benchmarks/scores.py, trained and cached there); data files of
    2,000 training images for --data and the 10,000 test images for --eval-data."""
    from .scores import lenet5_path

    path = lenet5_path()
    paths = {k: os.path.join(CACHE, f"bench_vgg_mnist_{k}.npz") for k in ("train", "eval")}
    if not all(os.path.exists(p) for p in paths.values()):
        d = np.load(os.path.join(DATA, "mnist.npz"))
        f = lambda a: (a[:, None] / 255.0).astype(np.float32)
        rng = np.random.default_rng(0)
        pick = np.sort(rng.permutation(len(d["x_train"]))[:2000])
        np.savez(paths["train"], x=f(d["x_train"][pick]), y=d["y_train"][pick].astype(np.int64))
        np.savez(paths["eval"], x=f(d["x_test"]), y=d["y_test"].astype(np.int64))
    return path, paths["train"], paths["eval"]


# --------------------------------------------------------------------------------------------------
# one onnxcrit run, in a child process (clean peak memory; the solver processes counted)


def run_child(spec: dict) -> dict:
    """Run `_child(spec)` in a fresh interpreter; its JSON answer. BLAS runs single-threaded there unless the
    caller set OPENBLAS_NUM_THREADS (see the module docstring)."""
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.vgg", "--child", json.dumps(spec)], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"run {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class PeakMemory:
    """Samples the resident memory of this process plus all its descendants (/proc) every 0.1 s."""

    def __init__(self):
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self, pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def _tree(self) -> list[int]:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    pass
        tree, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += [c for c, p in parents.items() if p == pid]
        return tree

    def _run(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, sum(self._rss(p) for p in self._tree()))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def _child(spec: dict) -> dict:
    if spec.get("kind") == "score":
        return _child_score(spec)
    if spec.get("kind") == "heads":
        return _child_heads(spec)
    from onnxcrit import Progress, load_network, optimize

    from .methods import magnitude

    class Notes(Progress):
        def __init__(self):
            self.lines = []

        def note(self, message):
            self.lines.append(message)

    notes = Notes()
    memory = PeakMemory()
    start = time.perf_counter()
    result = optimize(spec["model"], spec["data"], eval_data=spec["eval"], mode=spec["mode"],
                          workers=spec.get("workers"), time_limit=spec.get("time_limit", 300.0),
                          num_samples=spec.get("num_samples", 10), measure_latency=False, progress=notes)
    wall = time.perf_counter() - start
    peak = memory.stop()
    rep = result.report

    # baselines at the same per-layer unit counts, on the held-out data (IR forward, 0/1 masks)
    net, _ = load_network(spec["model"])
    ev = np.load(spec["eval"])
    keep = {i: s > 0 for i, s in result.scales.items()}
    counts = {i: int(k.sum()) for i, k in keep.items()}

    def top(scores):
        return {i: np.isin(np.arange(len(s)), np.argsort(-s, kind="stable")[:counts[i]]).astype(float)
                for i, s in scores.items()}

    mag = ir_accuracy(net, ev["x"], ev["y"], top(magnitude(net)))
    rnd = [ir_accuracy(net, ev["x"], ev["y"], top({i: np.random.default_rng(s).random(len(k))
                                                       for i, k in keep.items()}))
           for s in range(spec.get("random_seeds", 0))]
    return {"mode": rep.get("mode"), "workers": spec.get("workers"), "num_samples": spec.get("num_samples", 10),
            "wall": wall, "timings": rep["timings"], "solver": rep["solver"], "blocks": rep.get("blocks", []),
            "params_before": rep["params_before"], "params_after": rep["params_after"],
            "macs_before": rep["macs_before"], "macs_after": rep["macs_after"],
            "accuracy_before": rep["accuracy_before"], "accuracy_after": rep["accuracy_after"],
            "magnitude": mag, "random": float(np.mean(rnd)) if rnd else None,
            "rescaled": any(0 < v < 1 for s in result.scales.values() for v in np.asarray(s)),
            "units": {l["name"]: f"{l['units_after']}/{l['units_before']}" for l in rep["layers"] if l["scored"]},
            "peak_rss_mb": peak, "notes": notes.lines, "rule": rep["selection"]["rule"]}


def _child_score(spec: dict) -> dict:
    """The scoring stage alone (heads + block solves), for the 1 vs 2 workers comparison."""
    from onnxcrit import decoupled_scores, load_network

    net, _ = load_network(spec["model"])
    d = np.load(spec["data"])
    memory = PeakMemory()
    start = time.perf_counter()
    r = decoupled_scores(net, d["x"], d["y"], workers=spec["workers"], num_samples=spec.get("num_samples", 10),
                         relax=True, time_limit=spec.get("time_limit", 300.0))
    wall = time.perf_counter() - start
    return {"workers": spec["workers"], "wall": wall, "heads": r.build_seconds, "solves": r.solve_seconds,
            "status": r.status, "peak_rss_mb": memory.stop(),
            "digest": float(sum(float(np.sum(v * np.arange(1, len(v) + 1))) for v in r.scores.values()))}


def _child_heads(spec: dict) -> dict:
    """Head kind x calibration images: held-out accuracy of the decoupled scores' masks at fixed parameter
    budgets (by_params, 0/1 masks) against magnitude masks with the same per-layer counts."""
    from onnxcrit import by_params, decoupled_scores, load_network

    from .methods import magnitude

    net, _ = load_network(spec["model"])
    d, ev = np.load(spec["data"]), np.load(spec["eval"])
    mag = magnitude(net)
    rows = []
    for head in ("gap", "pool2"):
        for n in (10, 50):
            r = decoupled_scores(net, d["x"], d["y"], workers=2, num_samples=n, head=head, relax=True)
            row = {"head": head, "N": n, "head_acc": [b["head_accuracy"] for b in r.blocks[:-1]]}
            for frac in spec["fractions"]:
                sel, _ = by_params(net, r.scores, frac, rescale=False)
                keep = {i: s > 0 for i, s in sel.scales.items()}
                counts = {i: int(k.sum()) for i, k in keep.items()}
                top = {i: np.isin(np.arange(len(s)), np.argsort(-s, kind="stable")[:counts[i]]).astype(float)
                       for i, s in mag.items()}
                row[str(frac)] = (ir_accuracy(net, ev["x"], ev["y"], sel.scales),
                                  ir_accuracy(net, ev["x"], ev["y"], top))
            rows.append(row)
    return {"rows": rows, "base": ir_accuracy(net, ev["x"], ev["y"])}


def heads_table(result: dict, fractions) -> str:
    out = ["| head | N | " + " | ".join(f"params <= {f:.0%}: MIP / magnitude" for f in fractions)
           + " | head accuracy per block (fit data) |", "|" + "---|" * (3 + len(fractions))]
    for r in result["rows"]:
        cells = " | ".join(f"{r[str(f)][0]:.2f} / {r[str(f)][1]:.2f}" for f in fractions)
        out.append(f"| {r['head']} | {r['N']} | {cells} | {', '.join(f'{a:.0f}' for a in r['head_acc'])} |")
    return "\n".join(out) + "\n"


def full_mode_estimate(model: str, num_samples: int = 10) -> tuple[int, float]:
    """Nonzeros of the per-image conv/dense matrices the full MIP builds for N images (sp.kron over images),
    and their CSR size in GB (8-byte values + 4-byte column indices): a lower bound of its memory."""
    from onnxcrit import load_network

    net, _ = load_network(model)
    nnz = 0
    for k in net.linear_indices():
        layer = net.layers[k]
        if layer.kind == "conv":
            valid = (layer.patches() >= 0).sum()  # (position, tap) pairs inside the input
            nnz += int(layer.units * layer.weight.shape[1] * valid)
        else:
            nnz += int(layer.weight.size)
    nnz *= num_samples
    return nnz, nnz * 12 / 1e9


# --------------------------------------------------------------------------------------------------
# tables


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def runs_table(rows: list[dict]) -> str:
    head = ("| model | mode | N | workers | wall s (end to end) | scoring: prep s | scoring: solves s | "
            "selection s | validation s | peak RSS MB | status | params | MACs | acc. before | acc. after | "
            "acc. magnitude (same counts) | acc. random (mean of 5) |")
    out = [head, "|" + "---|" * 17]
    for r in rows:
        t = r["timings"]
        out.append(f"| {r['model']} | {r['mode']} | {r['num_samples']} | {r['workers'] or '-'} | {r['wall']:.1f} | "
                   f"{t.get('build', 0):.1f} | {t.get('solve', 0):.1f} | {t.get('select', 0):.1f} | "
                   f"{t.get('validate', 0):.1f} | "
                   f"{r['peak_rss_mb']:.0f} | {r['solver']['status']} | "
                   f"{r['params_before']:,} -> {r['params_after']:,} | {r['macs_before']:,} -> {r['macs_after']:,} | "
                   f"{_fmt(r['accuracy_before'])} | {_fmt(r['accuracy_after'])} | {_fmt(r['magnitude'])} | "
                   f"{_fmt(r['random'])} |")
    return "\n".join(out) + "\n"


def blocks_table(run: dict) -> str:
    out = ["| block | units | head | head acc. (fit data) | variables | binaries | rows | status | seconds | "
           "limit s | kept |", "|" + "---|" * 11]
    for b in run["blocks"]:
        out.append(f"| {b['name']} | {b['units']} | {b['head']} | {b['head_accuracy']:.1f} | {b['variables']:,} | "
                   f"{b['binaries']} | {b['constraints']:,} | {b['status']} | {b['seconds']:.1f} | "
                   f"{b['time_limit']:.0f} | {run['units'].get(b['name'], '-')} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.vgg", description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--e2e-workers", default="2", help="worker counts of the end-to-end VGG runs")
    ap.add_argument("--samples", default="10,50", help="calibration images of the end-to-end VGG runs")
    ap.add_argument("--skip-lenet", action="store_true")
    ap.add_argument("--heads", action="store_true", help="only the head kind x calibration images comparison "
                    "(writes benchmarks/results/bench_vgg_heads.md)")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch threads for training (1 was faster "
                    "than 2 on the 2-core benchmark machine with another process running)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--time-limit", type=float, default=300.0)
    ap.add_argument("--out", default=os.path.join(RESULTS, "bench_vgg.md"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0

    t0 = time.perf_counter()
    split = cifar_split()
    vgg = os.path.join(CACHE, "bench_vgg11_cifar4.onnx")
    trained = None
    if not os.path.exists(vgg):
        trained = vgg11_onnx(vgg, split["train"], epochs=args.epochs, threads=args.torch_threads)
        print(f"trained VGG-11 in {trained['seconds']:.0f} s ({trained['epochs']} epochs) -> {vgg}", file=sys.stderr)
    if args.train_only:
        return 0
    if args.heads:
        fractions = (0.95, 0.9, 0.8)
        res = run_child({"kind": "heads", "model": vgg, "data": split["train"], "eval": split["eval"],
                         "fractions": fractions})
        body = ("# Decoupled mode: head kinds and calibration images (python -m benchmarks.vgg --heads)\n\n"
                "VGG-11 / 4-class CIFAR-10 as in bench_vgg.md; decoupled scores (LP relaxation, lambda 5, hinge), "
                "units removed lowest score first (ties by magnitude) until the parameter budget holds, kept units "
                "at full strength; held-out accuracy (800 images) of that mask / of a magnitude mask with the same "
                f"per-layer counts. Unpruned: {res['base']:.2f}%.\n\n" + heads_table(res, fractions))
        publish(os.path.join(RESULTS, "bench_vgg_heads.md"), body)
        return 0

    name = "VGG-11 / CIFAR-10 (4 classes)"
    scoring = []
    for w in (1, 2):
        r = run_child({"kind": "score", "model": vgg, "data": split["train"], "workers": w,
                       "time_limit": args.time_limit})
        scoring.append(r)
        print(f"VGG-11 scoring stage, {w} workers: {r['wall']:.1f} s", file=sys.stderr)
    rows = []
    for n in [int(v) for v in args.samples.split(",")]:
        for w in [int(v) for v in args.e2e_workers.split(",")]:
            r = run_child({"model": vgg, "data": split["train"], "eval": split["eval"], "mode": "decoupled",
                           "workers": w, "num_samples": n, "time_limit": args.time_limit,
                           "random_seeds": RANDOM_SEEDS})
            r["model"] = name
            rows.append(r)
            print(f"VGG-11 decoupled, N {n}, {w} workers: {r['wall']:.1f} s", file=sys.stderr)
    if not args.skip_lenet:
        lenet, train, held = lenet5_case()
        for mode in ("full", "decoupled"):
            r = run_child({"model": lenet, "data": train, "eval": held, "mode": mode, "workers": 2,
                           "time_limit": args.time_limit, "random_seeds": RANDOM_SEEDS})
            r["model"] = "LeNet-5 / MNIST"
            rows.append(r)
            print(f"LeNet-5 {mode}: {r['wall']:.1f} s", file=sys.stderr)

    one, two = scoring
    nnz, gb = full_mode_estimate(vgg)
    load = os.getloadavg()
    text = [
        "# Decoupled mode benchmark (python -m benchmarks.vgg)", "",
        "VGG-11 widths (conv 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M, then 512 -> 256 -> 4; "
        "BatchNorm folded by the front end), 3x32x32 input, trained with torch on CPU on 3,200 images of the "
        "**4-class** CIFAR-10 subset (airplane, automobile, ship, truck: the only classes in "
        "`cifar10_test_4class.npz`; 4-class accuracies, not comparable with 10-class CIFAR-10), 800 held out. "
        "onnxcrit `optimize` with `--data` the 3,200 training images and `--eval-data` the 800 held-out ones, "
        "defaults otherwise (LP relaxation, eps 1e-5, lambda 5, hinge loss, selection by the default 1-point "
        f"accuracy budget on the held-out data), time limit {args.time_limit:g} s. "
        "LeNet-5 / MNIST: `--data` 2,000 training images, `--eval-data` the 10,000 test images. "
        "Each run in a fresh process with OPENBLAS_NUM_THREADS=1; wall = the whole `optimize` call (load, heads, "
        "solves, selection, rewrite, validation); peak RSS = largest sum over the process and its "
        "descendants (sampled every 0.1 s). Scoring prep = calibration choice, the forward pass that fits the "
        "heads (decoupled) or the problem build (full); selection = the accuracy-budget search (onnxruntime on "
        "each rewritten candidate, over the held-out data; validation = onnxruntime against the masked numpy "
        "model on both data sets). Magnitude / random: the same per-layer unit counts as the MIP "
        "selection, 0/1 masks, same held-out data. "
        f"Machine: {os.cpu_count()} cores; load average at the end {load[0]:.2f}.", "",
        runs_table(rows),
        f"Scoring stage alone (heads on 3,200 images + 9 block solves, N 10): 1 worker {one['wall']:.1f} s "
        f"(heads {one['heads']:.1f} s, solves {one['solves']:.1f} s), 2 workers {two['wall']:.1f} s "
        f"(heads {two['heads']:.1f} s, solves {two['solves']:.1f} s): speed-up x{one['wall'] / two['wall']:.2f} "
        f"(heads x{one['heads'] / two['heads']:.2f}, solves x{one['solves'] / two['solves']:.2f}); "
        f"same scores: {one['digest'] == two['digest']}. Peak RSS {one['peak_rss_mb']:.0f} / "
        f"{two['peak_rss_mb']:.0f} MB.", "",
        f"Full mode on this VGG-11 is out of reach: its per-image conv matrices alone hold {nnz:,} nonzeros for "
        f"10 images (sparse Kronecker product over the images), {gb:.1f} GB in CSR before any row is written.", "",
    ]
    for r in rows:
        if r["blocks"]:
            text += [f"Blocks of {r['model']}, N {r['num_samples']}, {r['workers']} workers:", "", blocks_table(r)]
    for r in rows:
        text += [f"Kept units, {r['model']} {r['mode']} (N {r['num_samples']}): "
                 + ", ".join(f"{k} {v}" for k, v in r["units"].items())
                 + f"; kept units rescaled: {r['rescaled']}; notes: " + ("; ".join(r["notes"]) or "none"), ""]
    if trained:
        text.append(f"Training (this run): {trained['seconds']:.0f} s for {trained['epochs']} epochs.")
    text.append(f"Benchmark total: {time.perf_counter() - t0:.0f} s.")
    publish(args.out, "\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
