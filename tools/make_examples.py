"""Build the example models in ``models/`` (deterministic).

Trains two small ReLU classifiers on scikit-learn's bundled digits data set
(``sklearn.datasets.load_digits``: 1797 images, 8x8, pixel values 0..16,
scaled to [0, 1]) and exports them with the legacy TorchScript ONNX exporter:

* ``digits_mlp.onnx``  dense 64-64-32-10 (Gemm/Relu), input ``input`` [N, 64]
* ``digits_cnn.onnx``  LeNet-style CNN (Conv/Relu/MaxPool/Flatten/Gemm),
  input ``input`` [N, 1, 8, 8]

Both output raw ``logits`` [N, 10] and have a dynamic batch dimension.

Alongside each model it writes ``<name>_calib.npz`` (100 training images,
the first 10 of each class in order) and ``<name>_eval.npz`` (the 450
held-out images), each with ``x`` (float32, shaped like the model input) and
``y`` (int64).

Running it twice gives byte-identical files (seeded, deterministic
algorithms, one thread, fixed zip timestamps in the .npz files).

Usage: python -m tools.make_examples [--out DIR]   (from the repository root)
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn

from benchmarks.models import fit  # the training loop the benchmarks share

SEED = 0
N_EVAL = 450
CALIB_PER_CLASS = 10
OPSET = 17


# --------------------------------------------------------------------------
# helpers shared with make_test_models.py
# --------------------------------------------------------------------------
def save_npz(path: str, **arrays: np.ndarray) -> None:
    """Like ``np.savez_compressed`` but byte-deterministic.

    ``np.savez*`` stamps every zip member with the current time, so two runs
    never produce identical files.  Here each member gets a fixed timestamp.
    ``np.load`` reads the result as usual.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, val in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(val), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def setup_determinism(seed: int = SEED) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def load_digits_split():
    """Digits scaled to [0,1] float32, split stratified (seed 0) 1347/450."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=N_EVAL, stratify=y, random_state=SEED
    )
    return x_tr, y_tr, x_te, y_te


def calib_indices(y: np.ndarray, per_class: int = CALIB_PER_CLASS) -> np.ndarray:
    """First ``per_class`` indices of every class, in original order."""
    idx = [np.flatnonzero(y == c)[:per_class] for c in range(10)]
    return np.sort(np.concatenate(idx))


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------
def make_mlp() -> nn.Sequential:
    """Dense 64-64-32-10 ReLU classifier (fc1/relu1/fc2/relu2/fc3)."""
    return nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(64, 64)),
                ("relu1", nn.ReLU()),
                ("fc2", nn.Linear(64, 32)),
                ("relu2", nn.ReLU()),
                ("fc3", nn.Linear(32, 10)),
            ]
        )
    )


class DigitsCNN(nn.Module):
    """LeNet-style CNN for [N, 1, 8, 8] digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 2 * 2, 32)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu3(self.fc1(x))
        return self.fc2(x)


def make_cnn() -> DigitsCNN:
    return DigitsCNN()


# --------------------------------------------------------------------------
# training / export
# --------------------------------------------------------------------------
def train(model, x_tr, y_tr, *, epochs: int, lr: float = 1e-3, batch: int = 32,
          weight_decay: float = 0.0, seed: int = SEED):
    torch.manual_seed(seed)
    fit(model, torch.from_numpy(x_tr), torch.from_numpy(y_tr), epochs, batch_size=batch, seed=seed, lr=lr,
        weight_decay=weight_decay)
    model.eval()
    return model


def torch_accuracy(model, x, y) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def ort_accuracy(path: str, x, y) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == y).mean())


def export_legacy(model, example, path: str, opset: int = OPSET) -> None:
    model.eval()
    torch.onnx.export(
        model,
        (example,),
        path,
        dynamo=False,
        opset_version=opset,
        do_constant_folding=True,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def op_types(path: str) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(path).graph.node]


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "models"))
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    t0 = time.perf_counter()
    setup_determinism()
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    x_tr, y_tr, x_te, y_te = load_digits_split()
    ci = calib_indices(y_tr)
    assert len(x_tr) == 1347 and len(x_te) == 450 and len(ci) == 100

    specs = [
        ("digits_mlp", make_mlp, (-1, 64), dict(epochs=60)),
        ("digits_cnn", make_cnn, (-1, 1, 8, 8), dict(epochs=60, lr=3e-3)),
    ]
    for name, factory, shape, hp in specs:
        torch.manual_seed(SEED)
        model = factory()
        xtr = x_tr.reshape(shape)
        xte = x_te.reshape(shape)
        train(model, xtr, y_tr, **hp)
        acc_t = torch_accuracy(model, xte, y_te)

        onnx_path = os.path.join(out, name + ".onnx")
        export_legacy(model, torch.from_numpy(xte[:1]), onnx_path)
        ops = op_types(onnx_path)
        bad = {"Shape", "Gather", "Concat", "Reshape", "Unsqueeze"} & set(ops)
        if bad:
            raise SystemExit(f"{name}: unexpected ops {sorted(bad)} in {ops}")
        if name == "digits_cnn" and "Flatten" not in ops:
            raise SystemExit(f"{name}: no Flatten node in {ops}")

        save_npz(os.path.join(out, name + "_calib.npz"),
                 x=np.ascontiguousarray(xtr[ci]), y=y_tr[ci])
        save_npz(os.path.join(out, name + "_eval.npz"), x=xte, y=y_te)

        acc_o = ort_accuracy(onnx_path, xte, y_te)
        if acc_o != acc_t:
            raise SystemExit(f"{name}: onnxruntime accuracy {acc_o} != torch {acc_t}")
        if acc_t < 0.95:
            raise SystemExit(f"{name}: held-out accuracy {acc_t:.4f} < 0.95")
        print(f"{name}: held-out acc torch={acc_t:.4f} onnxruntime={acc_o:.4f}")
        print(f"  ops: {' '.join(ops)}")

    print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
