#!/usr/bin/env python
"""Size and memory of the full MIP against its estimate (onnxcrit/resources.py), per model and calibration images.

For each model and N, in a fresh process (OPENBLAS_NUM_THREADS=1): `compute_scores` on N images (LP, defaults),
recording the built problem's nonzeros, this process's peak resident memory during build and solve above what it
held before (VmHWM reset through /proc/self/clear_refs), the solver process's peak (RUSAGE_CHILDREN), build and
solve seconds, and what `resources.estimate_full` predicted before building. Models: the two digits examples,
LeNet-5 (MNIST) and a wide CNN (conv 64-128-256 at 32 x 32 x 3, untrained; benchmarks/latency.py), both cached
in ~/.cache/onnxcrit/ (built by benchmarks/latency.py when missing). Inputs: the digits calibration files, MNIST
training images, CIFAR-10 images (the wide CNN is untrained: its memory, not its accuracy, is measured).

Writes benchmarks/results/bench_memory.md and prints it.

Usage: python -m tools.bench_memory [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DATA = os.path.join(ROOT, "..", "shared", "data")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "onnxcrit")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "bench_memory.md")

CASES = [  # (label, model, N values)
    ("digits MLP", "models/digits_mlp.onnx", (10, 50, 200)),
    ("digits CNN", "models/digits_cnn.onnx", (10, 50, 200)),
    ("LeNet-5", "lenet5_mnist.onnx", (10, 50, 100)),
    ("wide CNN 32x32x3", "wide_cnn32.onnx", (1, 2, 3)),
    # deep graphs: many layers of similar size, where the finished problem (all layers) outweighs the largest one
    ("ResNet-8 8x8 (corpus)", "tests/data/branching/torch_legacy_resnet8.onnx", (10, 50, 200)),
    ("Inception 8x8 (corpus)", "tests/data/branching/torch_legacy_inception.onnx", (10, 50, 200)),
]


def _model_path(name: str) -> str:
    if name.startswith(("models/", "tests/")):
        return os.path.join(ROOT, name)
    path = os.path.join(CACHE, name)
    if not os.path.exists(path):
        from benchmarks.latency import MODELS, cached  # builds the cached models

        for file, build in MODELS.values():
            if file == name:
                cached(file, build)
    return path


def _inputs(model: str, n: int, net) -> tuple[np.ndarray, np.ndarray]:
    if model.startswith(("models/", "tests/")):
        parts = [np.load(os.path.join(ROOT, model.replace(".onnx", f"_{k}.npz"))) for k in ("calib", "eval")]
        return np.concatenate([p["x"] for p in parts]), np.concatenate([p["y"] for p in parts])
    if "lenet" in model:
        d = np.load(os.path.join(DATA, "mnist.npz"))
        return (d["x_train"][:2000] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), d["y_train"][:2000]
    d = np.load(os.path.join(DATA, "cifar10_test_4class.npz"))
    x = (d["x_test"][:max(n, 10)] / 255.0).astype(np.float32).transpose(0, 3, 1, 2)
    return x, d["y_test"][:max(n, 10)].astype(np.int64)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class TreePeak:
    """Samples the resident memory of this process plus its descendants (the solver) every 0.05 s."""

    def __init__(self):
        import threading

        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    todo += [int(p) for p in f.read().split()]
            except OSError:
                pass
        return pids

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(self._rss(p) for p in self._tree()))
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def one(model: str, n: int) -> dict:
    """Runs in the child process: estimate, then build + solve, with memory and times; then the build alone
    under tracemalloc (the peak of the arrays it allocates: what tests/test_resources.py checks)."""
    import tracemalloc

    from onnxcrit import resources
    from onnxcrit.formulation import build_problem
    from onnxcrit.frontend import load_network
    from onnxcrit.scoring import compute_scores

    net, _ = load_network(_model_path(model))
    x, y = _inputs(model, n, net)
    estimate = resources.estimate_full(net, n)
    if model.startswith(("models/", "tests/")) or "lenet" in model:
        calibration = None  # correctly classified, balanced: as optimize does
    else:
        calibration = np.arange(n)  # untrained: any images
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size
    before = _status_kb("VmRSS")
    sampler = TreePeak()
    clock = time.perf_counter()
    res = compute_scores(net, x, y, num_samples=n, calibration=calibration, time_limit=300,
                         raise_on_failure=False)
    wall = time.perf_counter() - clock
    tree = sampler.stop() / 1024 - before  # kB
    peak = _status_kb("VmHWM") - before
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB, the solver process
    xs = np.asarray(x, dtype=np.float64).reshape(len(x), *net.input_shape)[res.calibration_indices]
    tracemalloc.start()
    build_problem(net, xs, np.asarray(y)[res.calibration_indices], relax=True)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"macs": net.macs, "n": n, "nonzeros": res.nonzeros, "rows": res.constraints, "cols": res.variables,
            "build_s": res.build_seconds, "solve_s": res.solve_seconds, "wall_s": wall, "status": res.status,
            "parent_mb": peak / 1024, "solver_mb": child / 1024, "tree_mb": tree / 1024,
            "traced_mb": traced / 2**20, "layer_nonzeros": estimate.nonzeros, "largest": estimate.largest,
            "est_mb": estimate.bytes / 2**20}


def run(model: str, n: int) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    code = f"import json; import tools.bench_memory as b; print(json.dumps(b.one({model!r}, {n})))"  # cwd: ROOT
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = ("| model | N | N x largest layer matrix (nonzeros) | built problem nonzeros | build s | solve s | peak MB: "
            "onnxcrit process | peak MB: with the solver process (sampled) | build arrays MB (tracemalloc) | "
            "estimate MB | estimate / peak |")
    out = [head, "|" + "---|" * 11]
    for r in rows:
        out.append(f"| {r['label']} | {r['n']} | {r['largest']:,} | {r['nonzeros']:,} | {r['build_s']:.2f} | "
                   f"{r['solve_s']:.2f} | {r['parent_mb']:.0f} | {r['tree_mb']:.0f} | {r['traced_mb']:.0f} | "
                   f"{r['est_mb']:.0f} | {r['est_mb'] / max(r['tree_mb'], r['parent_mb'], 1):.2f} |")
    return "\n".join(out) + "\n"


HEADER = ("# Full-MIP memory against its estimate (`python -m tools.bench_memory`)\n\n"
          "Per model and calibration images N, in a fresh process: `compute_scores` (LP relaxation, defaults) with "
          "the peak resident memory it added to the onnxcrit process (VmHWM) and to the onnxcrit process plus its "
          "solver process (sampled every 0.05 s from /proc), then the build alone under tracemalloc (the arrays it "
          "allocates), and what `onnxcrit.resources.estimate_full` predicted before building. The wide CNN is "
          "untrained (its memory is measured, not its accuracy) and takes any images. OPENBLAS_NUM_THREADS=1; "
          "2-core machine, loaded by other jobs (times are indicative).\n\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smallest N per model only")
    parser.add_argument("--only", default="", help="only the cases whose label contains this")
    args = parser.parse_args(argv)
    rows = []
    for label, model, ns in CASES:
        if args.only not in label:
            continue
        for n in ns[:1] if args.quick else ns:
            r = run(model, n)
            r["label"] = label
            rows.append(r)
            print(json.dumps(r), flush=True)
    text = HEADER + table(rows)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
