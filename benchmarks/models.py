"""The benchmark's models and data.

MNIST models (LeNet-5, MLP 784-300-100-10, MLP 784-512-512-512-10) are trained here with torch on the first
55,000 training images of ../shared/data/mnist.npz and exported once with torch's legacy ONNX exporter; the files
are cached in ~/.cache/onnxcrit/bench/ (outside git). The last 5,000 training images are the validation split
(accuracy budgets are chosen on it), the 10,000 test images measure every reported accuracy; calibration images
are drawn from the training split. The digits examples use models/ as committed (calibration pool
models/*_calib.npz, held-out models/*_eval.npz for both validation and test: the only held-out data they have).

`fit` is also the training loop of tools/make_examples.py and tools/make_published_patterns.py: a change to it
changes the committed models they generate.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from .common import ROOT

MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist.npz")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "onnxcrit", "bench")
TRAIN = 55_000

MODELS = ("lenet5", "mlp300", "mlp512", "digits_mlp", "digits_cnn")
TITLES = {"lenet5": "LeNet-5 / MNIST", "mlp300": "MLP 784-300-100-10 / MNIST",
          "mlp512": "MLP 784-512x3-10 / MNIST", "digits_mlp": "digits MLP 64-64-32-10",
          "digits_cnn": "digits CNN"}
EPOCHS = {"lenet5": 3, "mlp300": 5, "mlp512": 5}


@dataclass
class Case:
    name: str
    path: str  # the ONNX file
    x_pool: np.ndarray  # calibration pool (training data)
    y_pool: np.ndarray
    x_val: np.ndarray  # accuracy budgets are met on this
    y_val: np.ndarray
    x_test: np.ndarray  # every reported accuracy
    y_test: np.ndarray


def _torch_model(name: str):
    import torch.nn as nn

    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    widths = {"mlp300": [784, 300, 100], "mlp512": [784, 512, 512, 512]}[name]
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 10))


def _mnist(name: str):
    d = np.load(MNIST)
    shape = (-1, 1, 28, 28) if name == "lenet5" else (-1, 784)
    f = lambda a: (a.reshape(shape) / 255.0).astype(np.float32)
    return f(d["x_train"]), d["y_train"].astype(np.int64), f(d["x_test"]), d["y_test"].astype(np.int64)


def fit(model, x, y, epochs: int, batch_size: int = 64, seed: int = 0, lr: float = 1e-3, weight_decay: float = 0.0,
        after_epoch=None) -> None:
    """Adam on cross-entropy, shuffled by a generator seeded with `seed`; `after_epoch(k)` after each epoch."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            b = perm[i:i + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
        if after_epoch is not None:
            after_epoch(epoch)


def train_and_export(name: str, path: str, seed: int = 0, train: int = TRAIN, epochs: int | None = None) -> None:
    """Train `name` with Adam (lr 1e-3, batch 64) on the first `train` training images (default: the training
    split) for `epochs` (default EPOCHS[name]) and export it with the legacy exporter."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, _, _ = _mnist(name)
    x, y = torch.from_numpy(x_train[:train]), torch.from_numpy(y_train[:train])
    model = _torch_model(name)
    fit(model, x, y, EPOCHS[name] if epochs is None else epochs, seed=seed)
    model.eval()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.onnx.export(model, (x[:1],), tmp, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    os.replace(tmp, path)


def load_case(name: str) -> Case:
    if name.startswith("digits"):
        cal = np.load(os.path.join(ROOT, "models", f"{name}_calib.npz"))
        ev = np.load(os.path.join(ROOT, "models", f"{name}_eval.npz"))
        return Case(name, os.path.join(ROOT, "models", f"{name}.onnx"), cal["x"], cal["y"], ev["x"], ev["y"],
                    ev["x"], ev["y"])
    if name not in EPOCHS:
        raise SystemExit(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    path = os.path.join(CACHE, f"{name}_mnist.onnx")
    if not os.path.exists(path):
        clock = time.perf_counter()
        train_and_export(name, path)
        print(f"trained {name} and exported it to {path} in {time.perf_counter() - clock:.0f} s", file=sys.stderr)
    x_train, y_train, x_test, y_test = _mnist(name)
    return Case(name, path, x_train[:TRAIN], y_train[:TRAIN], x_train[TRAIN:], y_train[TRAIN:], x_test, y_test)
