"""Does bias compensation help? Accuracy of pruned digits models with and without it.

For models/digits_mlp.onnx and models/digits_cnn.onnx, every scored layer loses a fraction of its units, picked
by magnitude (smallest L1 norm of incoming weights) or at random (mean over 5 seeds). The compensation is
computed on the calibration images (*_calib.npz, 100 images); accuracy and logit error are measured on the
held-out images (*_eval.npz, 450). Each rewritten model is validated (onnxruntime == masked IR forward).

Usage: python -m benchmarks.compensation [--fractions 0.3 0.45 0.6] [--out FILE]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from onnxcrit import bias_compensation, check_rewrite, load_network, remove_units

from . import common
from .common import publish
from .methods import magnitude_scales

ROOT = Path(common.ROOT)
RESULTS = Path(common.RESULTS) / "bias_compensation.md"
SEEDS = 5


def random_scales(net, fraction: float, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    scales = {}
    for k in net.scored_indices():
        units = net.layers[k].units
        s = np.ones(units)
        s[rng.permutation(units)[:min(int(round(fraction * units)), units - 1)]] = 0.0
        scales[k] = s
    return scales


def evaluate(model, net, scales, calib, evals, compensate: bool) -> tuple[float, float]:
    """(accuracy on eval, mean |logit - original logit| on eval) of the rewritten model, after validation."""
    comp = bias_compensation(net, calib["x"], scales) if compensate else None
    new, _ = remove_units(model, net, scales, compensation=comp)
    report = check_rewrite(model, new, net, scales, [evals["x"]], evals["y"], compensation=comp)
    if not report.ok:
        raise SystemExit(f"validation failed: {report.reasons}")
    return report.accuracy_after, report.mean_abs_logit_diff


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compensation", description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.45, 0.6])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    lines = ["| model | mask | units removed per layer | accuracy original | accuracy pruned | accuracy pruned "
             "+ compensation | mean abs logit diff pruned | ... + compensation |", "|---" * 8 + "|"]
    for kind in ("mlp", "cnn"):
        net, model = load_network(ROOT / "models" / f"digits_{kind}.onnx")
        calib = dict(np.load(ROOT / "models" / f"digits_{kind}_calib.npz"))
        evals = dict(np.load(ROOT / "models" / f"digits_{kind}_eval.npz"))
        base = float(np.mean(net.predict(evals["x"]) == evals["y"]))
        for fraction in args.fractions:
            for mask in ("magnitude", "random"):
                draws = [magnitude_scales(net, fraction)] if mask == "magnitude" else \
                    [random_scales(net, fraction, seed) for seed in range(SEEDS)]
                plain = np.mean([evaluate(model, net, s, calib, evals, False) for s in draws], axis=0)
                comp = np.mean([evaluate(model, net, s, calib, evals, True) for s in draws], axis=0)
                label = mask if mask == "magnitude" else f"random (mean of {SEEDS})"
                lines.append(f"| digits_{kind} | {label} | {fraction:.0%} | {base:.4f} | {plain[0]:.4f} | "
                             f"{comp[0]:.4f} | {plain[1]:.3f} | {comp[1]:.3f} |")
                print(lines[-1], flush=True)
    text = ("# Bias compensation: accuracy on the 450 held-out digits\n\n" + "\n".join(lines) +
            "\n\nCompensation: each removed unit's mean activation on the 100 calibration images times its "
            "outgoing weights, folded into the next layer's bias (for a conv next layer: the per-channel mean "
            "over positions). No fine-tuning. Produced by `python -m benchmarks.compensation`, "
            f"{time.strftime('%Y-%m-%d')}.\n")
    print()
    publish(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
