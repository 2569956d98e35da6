"""The default run on every file of the published-pattern corpus (tests/data/published/): what onnxcrit
recognised, parameters before and after, accuracy before and after on the file's evaluation images, and
latency before and after at batch 1 and 64, all from `onnxcrit.optimize` with its defaults.

Usage: python -m benchmarks.published [--out benchmarks/results/published.md]
"""
from __future__ import annotations

import argparse
import glob
import os
import time

from onnxcrit import optimize

from .common import RESULTS, ROOT, publish


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(RESULTS, "published.md"))
    args = parser.parse_args()
    rows = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "data", "published", "*.onnx"))):
        stem = path[:-len(".onnx")]
        clock = time.perf_counter()
        result = optimize(path, stem + "_calib.npz", eval_data=stem + "_eval.npz")
        seconds = time.perf_counter() - clock
        r = result.report
        lat = r.get("latency") or {}
        speed = " / ".join(f"x{lat[k]['before_ms'] / max(lat[k]['after_ms'], 1e-9):.2f}"
                           for k in ("batch_1", "batch_64") if k in lat)
        rows.append(f"| {os.path.basename(stem)} | {', '.join(r['canonicalised']) or '-'} | "
                    f"{r['params_before']:,} -> {r['params_after']:,} "
                    f"({1 - r['params_after'] / r['params_before']:.0%} removed) | "
                    f"{r['accuracy_before']:.2f} -> {r['accuracy_after']:.2f} | {speed} | "
                    f"{r['selection'].get('round_to', 1)} | {seconds:.1f} |")
    text = ("# The default run on the published-pattern corpus (`python -m benchmarks.published`)\n\n"
            "`onnxcrit optimize FILE --data FILE_calib.npz --eval-data FILE_eval.npz` (default 1-point budget on "
            "the 450 evaluation images); speed-up measured by onnxruntime in the same run, batch 1 / batch 64.\n\n"
            "| file | recognised | parameters | accuracy % | speed-up b1 / b64 | round-to | seconds |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    publish(args.out, text)


if __name__ == "__main__":
    main()
