"""Does a pruning mask found on one data set transfer to another? (the paper's "lucky sub-network" experiment)

LeNet-5 (conv 6@5x5 - relu - maxpool 2 - conv 16@5x5 - relu - maxpool 2 - flatten - fc 120 - relu - fc 84 - relu -
fc 10) is trained on MNIST with torch; its untrained initial weights and its trained weights are saved as ONNX in
~/.cache/onnxcrit/ (not in git). A mask (which units of each hidden layer to keep) is computed from the trained
MNIST network, and four networks are then trained from scratch on KMNIST with `onnxcrit.retrain`:

  (a) the masked architecture with the network's *original* initial weights, sliced to the mask (lottery ticket)
  (b) the masked architecture with a fresh random initialisation
  (c) the full LeNet-5 with the original initial weights
  (d) a random mask of the same per-layer sizes, with the original initial weights

KMNIST here is only its 10k test split (see ../shared/data/README.md): a seeded permutation gives 8k images to
train and 2k to evaluate. Every configuration runs with 3 seeds (the seed orders the mini-batches and draws the
random init of (b) and the random mask of (d)); the table reports the mean and the standard deviation of the 2k
evaluation accuracy. It is written to benchmarks/results/cross_dataset.md and printed.

The mask comes from one function, `mask_source`: for now a magnitude mask (per layer, the units whose incoming
weights have the largest L1 norm), at the per-layer counts of a JSON file ({layer name: units to keep}) or 40% of
each hidden layer; `--mask mip` takes onnxcrit's own mask instead (`mip_mask`: `onnxcrit.optimize` under an
accuracy budget, the kept units read from its scales).

Usage: python -m benchmarks.cross_dataset [--mask magnitude|mip] [--counts COUNTS.json] [--epochs 15]
                                          [--mnist-epochs 3] [--seeds 0 1 2] [--out FILE]
Runtime: about 2 minutes on one CPU core (the MNIST training is cached in ~/.cache/onnxcrit).
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

from onnxcrit import evaluate, load_network, optimize, remove_units, retrain

from . import common
from .models import fit

ROOT = Path(common.ROOT)
DATA = ROOT.parent / "shared" / "data"
CACHE = Path(os.environ.get("ONNXCRIT_CACHE", Path.home() / ".cache" / "onnxcrit"))
RESULTS = Path(common.RESULTS) / "cross_dataset.md"
OPSET = 17
WIDTHS = {"conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84}  # hidden layers; fc3 (10 classes) is the output


class LeNet5(nn.Module):
    """LeNet-5 for 28x28 inputs, with the hidden widths as parameters (the pruned architectures)."""

    def __init__(self, widths=WIDTHS):
        super().__init__()
        c1, c2, f1, f2 = (widths[k] for k in ("conv1", "conv2", "fc1", "fc2"))
        self.conv1 = nn.Conv2d(1, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 4 * 4, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc3 = nn.Linear(f2, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def export(model: nn.Module, path: Path | None = None) -> onnx.ModelProto:
    """The legacy TorchScript exporter, as tools/make_examples.py uses it (node names /conv1/Conv, ...)."""
    import io
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 1, 28, 28),), buffer, dynamo=False, opset_version=OPSET,
                          do_constant_folding=True, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
    return proto


def load_mnist():
    with np.load(DATA / "mnist.npz") as d:
        def prep(x):
            return (x.astype(np.float32) / 255.0)[:, None, :, :]
        return (prep(d["x_train"]), d["y_train"].astype(np.int64)), (prep(d["x_test"]), d["y_test"].astype(np.int64))


def load_kmnist(n_train=8000):
    """KMNIST's 10k test split cut by a fixed permutation into 8k to train and 2k to evaluate."""
    with np.load(DATA / "kmnist.npz") as d:
        x = (d["x_test"].astype(np.float32) / 255.0)[:, None, :, :]
        y = d["y_test"].astype(np.int64)
    order = np.random.default_rng(12345).permutation(len(x))
    tr, ev = order[:n_train], order[n_train:]
    return (x[tr], y[tr]), (x[ev], y[ev])


def train_lenet_on_mnist(epochs: int, threads: int) -> tuple[Path, Path]:
    """Untrained and MNIST-trained LeNet-5 as ONNX files in the cache (reused when already there)."""
    init_path = CACHE / "cross_dataset_lenet5_init.onnx"
    trained_path = CACHE / f"cross_dataset_lenet5_mnist_e{epochs}.onnx"
    if init_path.exists() and trained_path.exists():
        return init_path, trained_path
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = LeNet5()
    export(model, init_path)
    (x, y), _ = load_mnist()
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    fit(model, x, y, epochs, batch_size=128,
        after_epoch=lambda epoch: print(f"  MNIST epoch {epoch + 1}/{epochs} done", flush=True))
    export(model, trained_path)
    return init_path, trained_path


# -- masks ---------------------------------------------------------------------------------------------------------

def hidden_layers(path) -> list:
    net, _ = load_network(path)
    return [net.layers[i] for i in net.scored_indices()]


def default_counts(path, fraction=0.4) -> dict[str, int]:
    return {layer.name: max(1, round(fraction * layer.units)) for layer in hidden_layers(path)}


def mask_source(trained_path, counts: dict[str, int]) -> dict[str, list[int]]:
    """The units of each hidden layer to keep: {layer name: sorted unit indices}.

    Magnitude criterion for now: the units whose incoming weights have the largest L1 norm.
    """
    kept = {}
    for layer in hidden_layers(trained_path):
        norms = np.abs(layer.weight.reshape(layer.units, -1)).sum(axis=1)
        kept[layer.name] = sorted(int(i) for i in np.argsort(-norms, kind="stable")[:counts[layer.name]])
    return kept


def mip_mask(trained_path, budget: float = 0.5, num_samples: int = 50) -> dict[str, list[int]]:
    """onnxcrit's own mask: the MIP scores on MNIST training images, cut by an accuracy budget (points) measured on
    5,000 held-back MNIST training images (the test set stays unseen)."""
    (x, y), _ = load_mnist()
    result = optimize(trained_path, (x[:2000], y[:2000]), eval_data=(x[-5000:], y[-5000:]),
                      max_accuracy_drop=budget, num_samples=num_samples, measure_latency=False)
    net, _ = load_network(trained_path)
    return {net.layers[k].name: [int(i) for i in np.flatnonzero(s)] for k, s in sorted(result.scales.items())}


def random_mask(trained_path, counts: dict[str, int], seed: int) -> dict[str, list[int]]:
    rng = np.random.default_rng(1000 + seed)
    return {layer.name: sorted(int(i) for i in rng.choice(layer.units, counts[layer.name], replace=False))
            for layer in hidden_layers(trained_path)}


def pruned_architecture(kept: dict[str, list[int]]) -> onnx.ModelProto:
    """A LeNet-5 ONNX file with the kept widths (its weights are placeholders: retrain replaces them, from the
    original initial weights sliced to `kept` or at random)."""
    names = {"/conv1/Conv": "conv1", "/conv2/Conv": "conv2", "/fc1/Gemm": "fc1", "/fc2/Gemm": "fc2"}
    widths = dict(WIDTHS)
    for name, idx in kept.items():
        widths[names[name]] = len(idx)
    return export(LeNet5(widths))


# -- the experiment ------------------------------------------------------------------------------------------------

def run(args) -> str:
    started = time.perf_counter()
    init_path, trained_path = train_lenet_on_mnist(args.mnist_epochs, args.threads)
    if args.mask == "mip":
        kept = mip_mask(trained_path)
        counts = {name: len(units) for name, units in kept.items()}
        how = "onnxcrit's MIP mask, 50 calibration images, accuracy budget 0.5 points"
    else:
        counts = json.loads(Path(args.counts).read_text()) if args.counts else default_counts(trained_path)
        kept = mask_source(trained_path, counts)
        how = (("counts from " + args.counts if args.counts else "40% of each hidden layer")
               + "; magnitude: largest L1 norm of the incoming weights")
    train, evaluation = load_kmnist()
    _, mnist_test = load_mnist()

    # the trained network with only the kept units: onnxcrit's rewrite with 0/1 scales
    full_net, full_proto = load_network(trained_path)
    scales = {k: np.isin(np.arange(full_net.layers[k].units), kept[full_net.layers[k].name]).astype(np.float64)
              for k in full_net.scored_indices()}
    masked, small_net = remove_units(full_proto, full_net, scales)
    full_accuracy = evaluate(full_proto, mnist_test, latency=False)["accuracy"]
    masked_accuracy = evaluate(masked, mnist_test, latency=False)["accuracy"]

    options = dict(eval_data=evaluation, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                   threads=args.threads)
    rows = []
    for label, setup in configurations(kept, counts, init_path, trained_path).items():
        accs, params = [], None
        for seed in args.seeds:
            model, init, mask = setup(seed)
            result = retrain(model, train, init=init, kept=mask, seed=seed, **options)
            accs.append(result.eval_accuracy_after)
            params = load_network(result.model)[0].params
            print(f"  {label}  seed {seed}: {result.eval_accuracy_after:.2f}%  ({result.seconds:.1f} s)", flush=True)
        rows.append((label, params, accs))

    widths = ", ".join(f"{layer.name.split('/')[1]} {len(kept[layer.name])}/{layer.units}"
                       for layer in hidden_layers(trained_path))
    lines = [
        "# Cross-data-set generalisation of a pruning mask (MNIST -> KMNIST)",
        "",
        "Generated by `python -m benchmarks.cross_dataset` "
        f"(epochs {args.epochs}, lr {args.lr}, batch {args.batch_size}, seeds {' '.join(map(str, args.seeds))}, "
        f"threads {args.threads}, {time.perf_counter() - started:.0f} s).",
        "",
        f"LeNet-5 trained {args.mnist_epochs} epochs on MNIST (60k): {full_accuracy:.2f}% on "
        f"the MNIST test set; the mask ({how}) keeps {widths}, "
        f"{small_net.params} of {full_net.params} parameters; without retraining, the masked trained network scores "
        f"{masked_accuracy:.2f}% on MNIST test.",
        "",
        "Each network is then trained from scratch on 8k KMNIST images (of its 10k test split) and evaluated on the "
        "other 2k; the seed orders the mini-batches, and draws the random init of (b) and the random mask of (d).",
        "",
        "| network | parameters | KMNIST eval accuracy (mean ± std, %) | per seed |",
        "| --- | ---: | ---: | --- |",
    ]
    for label, params, accs in rows:
        spread = np.std(accs, ddof=1) if len(accs) > 1 else 0.0
        per_seed = " ".join(f"{a:.2f}" for a in accs)
        lines.append(f"| {label} | {params} | {np.mean(accs):.2f} ± {spread:.2f} | {per_seed} |")
    lines += ["", "std is the sample standard deviation over the seeds."]
    return "\n".join(lines) + "\n"


def configurations(kept, counts, init_path, trained_path):
    """{label: seed -> (model to retrain, init, kept units)} for the four networks compared."""
    def random_masked(seed):
        mask = random_mask(trained_path, counts, seed)
        return pruned_architecture(mask), init_path, mask
    return {
        "(a) MNIST mask, original init": lambda seed: (pruned_architecture(kept), init_path, kept),
        "(b) MNIST mask, random init": lambda seed: (pruned_architecture(kept), "random", None),
        "(c) full LeNet-5, original init": lambda seed: (init_path, init_path, {}),
        "(d) random mask, original init": random_masked,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cross_dataset", description=__doc__.splitlines()[0])
    parser.add_argument("--counts", help="JSON file {layer name: units to keep} (default: 40%% of each layer)")
    parser.add_argument("--mask", choices=["magnitude", "mip"], default="magnitude",
                        help="where the MNIST mask comes from (default magnitude)")
    parser.add_argument("--epochs", type=int, default=15, help="KMNIST training epochs (default 15)")
    parser.add_argument("--mnist-epochs", type=int, default=3, help="MNIST training epochs (default 3)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1; 2 threads ran 10-50x slower while another process ran)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    table = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
