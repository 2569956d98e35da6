#!/usr/bin/env python
"""Which ranking suits a least-squares reconstruction: the MIP's order with the magnitude and the OBS tie-break
(the product's since this benchmark), a blend, and the reconstruction-aware saliency alone.

The compression benchmark (benchmarks/compression.py) found that once every criterion gets the same `lsq`
reconstruction and its own budget search, weight norms rank about as well as the MIP at its defaults, whose
scores are mostly 0 or 1 (so the order beyond its zeros is the magnitude tie-break). This measures, with the
same search, confirmation and test split as that benchmark (`compression.budget_run`):

- MIP, magnitude ties: the order before this change (score over layer mean, ties by relative magnitude);
- MIP, OBS ties: the product's order now: ties by the OBS saliency below instead of magnitude;
- MIP x OBS: the MIP score over its layer mean times the saliency over its layer mean (kept units at full strength);
- OBS alone: the saliency as the criterion (no MIP).

OBS saliency (onnxcrit/saliency.py) of unit j of a scored layer: what removing j alone costs the next linear layer's output when that
layer's other weights are refitted by least squares (Optimal Brain Surgeon on the layer's input, Hassibi & Stork
1993; the layer-wise form of ThiNet / OBC): tr(W_B [(G^-1)_BB]^-1 W_B^T), where B are the input features of j
(a conv's channel x kernel taps, a dense layer's columns of j), W the next layer's weight, G the centred Gram
matrix of its inputs (im2col rows for a conv) on the reconstruction's statistics images, damped as `lsq` is
(0.01 x its mean diagonal).

Usage: OPENBLAS_NUM_THREADS=1 python -m benchmarks.saliency [--models lenet5,mlp512,mlp300]
Writes benchmarks/results/saliency.md (and .json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from onnxcrit import DEFAULTS, Reconstructor, load_network, obs_saliency

from . import compression
from .common import RESULTS, ort_accuracy, publish

VARIANTS = ("MIP, magnitude ties", "MIP, OBS ties (the product)", "MIP x OBS", "OBS alone")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.saliency", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,mlp512,mlp300")
    ap.add_argument("--out", default=os.path.join(RESULTS, "saliency.md"))
    args = ap.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        case = compression.load_case(name)
        net, proto = load_network(case.path)
        case.base_test = ort_accuracy(proto, net, case.x_test, case.y_test)
        builder = Reconstructor(proto, net, "lsq", case.x_pool[:compression.POOL], seed=DEFAULTS.seed)
        scores, rescale, _, _ = compression.mip_scores(net, case)
        obs = obs_saliency(net, builder.x)
        for variant in VARIANTS:
            ranked, deploy, ties = scores, rescale, None
            if variant == "MIP, OBS ties (the product)":
                ties = obs
            elif variant == "MIP x OBS":
                ranked = {k: scores[k] / max(float(scores[k].mean()), 1e-12) * obs[k] / obs[k].mean() for k in scores}
                deploy = False
            elif variant == "OBS alone":
                ranked, deploy = obs, False
            clock = time.perf_counter()
            row = {"model": name, "variant": variant, "budgets": {}}
            for budget in (0.5, 1.0):
                compression.MEMO.clear()
                row["budgets"][str(budget)] = compression.budget_run(case, net, proto, builder, ranked, deploy,
                                                                     budget, None, ties)
            row["seconds"] = time.perf_counter() - clock
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "budgets"}), file=sys.stderr, flush=True)
    lines = ["| model | ranking | 0.5 pt: params removed (test drop) | 1 pt: params removed (test drop) | "
             "0.5 pt: search's pick (test drop) | 1 pt: search's pick (test drop) |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for key in ("params_removed", "pick_params_removed"):
            for b in ("0.5", "1.0"):
                x = r["budgets"][b]
                drop = x["test_drop"] if key == "params_removed" else x.get("pick_test_drop")
                cells.append("-" if x.get(key) is None else f"{100 * x[key]:.1f}% ({drop:.2f})")
        lines.append(f"| {compression.TITLES[r['model']]} | {r['variant']} | " + " | ".join(cells) + " |")
    publish(args.out, "# Rankings for a least-squares reconstruction (python -m benchmarks.saliency)\n\n"
            "Same search, confirmation and test split as benchmarks/compression.py; `lsq` for every row.\n\n"
            + "\n".join(lines) + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
