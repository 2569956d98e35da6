"""Build the exporter-made test models in ``tests/data/`` (deterministic).

Each model is real output of an ONNX exporter (torch legacy/TorchScript,
torch dynamo, skl2onnx), so the tests exercise the graphs those exporters
actually produce.  The files are committed; CI never needs torch.  Next to
every ``foo.onnx`` this writes ``foo_x.npz`` with ``x``: 8 digits images
(float32, scaled to [0, 1], shaped like the model input).

Files (see tools/EXPORTERS.md for what each exporter emits):

1. torch_legacy_mlp.onnx         Linear/ReLU 64-32-16-10 + Dropout, legacy, opset 13
2. torch_legacy_cnn_bn.onnx      Conv/BatchNorm/ReLU/AvgPool CNN, legacy, opset 13,
                                 BatchNormalization nodes kept (not folded)
3. torch_dynamo_mlp.onnx(.data)  MLP 64-32-16-10, dynamo exporter, external data
4. torch_dynamo_cnn.onnx(.data)  digits CNN (tools/make_examples.py), dynamo, external data
5. skl_mlp.onnx                  sklearn MLPClassifier(32, 16) via skl2onnx, no ZipMap
6. torch_legacy_mlp_nobias.onnx  Linear(64,32,bias=False)/ReLU/Linear(32,10,bias=False)
7. torch_legacy_cnn_view.onnx    conv/relu/maxpool, x.view(x.size(0), -1), two Linear (Shape/Concat/Reshape)

Torch models are random-init (seeded); BatchNorm statistics and affine
parameters are set to random non-trivial values so that a wrong BN fold
shows.  The sklearn model is trained on digits.  Running the script twice
gives byte-identical files.

Usage: python -m tools.make_test_models [--out DIR] [--quiet]   (from the repository root)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import warnings
from collections import OrderedDict

# one BLAS/OpenMP thread so sklearn's training is reproducible everywhere
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from tools.make_examples import make_cnn, save_npz, setup_determinism  # noqa: E402

SEED = 0
N_SAMPLES = 8
LEGACY_OPSET = 13


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def samples(shape) -> np.ndarray:
    x, _ = digits()
    return np.ascontiguousarray(x[:N_SAMPLES].reshape(shape))


# --------------------------------------------------------------------------
# exporters
# --------------------------------------------------------------------------
DYN = {"input": {0: "batch"}, "logits": {0: "batch"}}


def export_legacy(model, x, path, **kw) -> None:
    model.eval()
    kw.setdefault("do_constant_folding", True)
    torch.onnx.export(
        model,
        (torch.from_numpy(x),),
        path,
        dynamo=False,
        opset_version=LEGACY_OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes=DYN,
        **kw,
    )


def export_dynamo(model, x, path, quiet: bool) -> None:
    """torch.onnx.export(dynamo=True, external_data=True) with a dynamic batch.

    The only change to the exporter's output: each node's
    ``pkg.torch.onnx.stack_trace`` metadata is dropped before saving, because
    it holds absolute source paths and line numbers (of this checkout and of
    the venv), which would make the bytes depend on where the script runs.
    Saving goes through ``ONNXProgram.save``, as ``export(f=path)`` does.
    """
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    out = io.StringIO()
    ctx = contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext()
    with ctx:
        prog = torch.onnx.export(
            model,
            (torch.from_numpy(x),),
            None,
            dynamo=True,
            external_data=True,
            dynamic_shapes=({0: batch},),
            input_names=["input"],
            output_names=["logits"],
        )
    for node in prog.model.graph.all_nodes():
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
    data = path + ".data"
    if os.path.exists(data):  # start from a clean weights file
        os.remove(data)
    prog.save(path, external_data=True)


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------
def mlp(dropout: bool) -> nn.Sequential:
    layers = [("fc1", nn.Linear(64, 32)), ("relu1", nn.ReLU())]
    if dropout:
        layers.append(("drop1", nn.Dropout(0.1)))
    layers += [("fc2", nn.Linear(32, 16)), ("relu2", nn.ReLU())]
    if dropout:
        layers.append(("drop2", nn.Dropout(0.1)))
    layers += [("fc3", nn.Linear(16, 10))]
    return nn.Sequential(OrderedDict(layers))


def cnn_bn() -> nn.Sequential:
    m = nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(1, 4, 3, padding=1, bias=False)),
                ("bn1", nn.BatchNorm2d(4)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.AvgPool2d(2)),
                ("conv2", nn.Conv2d(4, 6, 3)),
                ("bn2", nn.BatchNorm2d(6)),
                ("relu2", nn.ReLU()),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(6 * 2 * 2, 10)),
            ]
        )
    )
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            c = bn.num_features
            bn.weight.copy_(0.5 + torch.rand(c, generator=g))          # [0.5, 1.5)
            bn.bias.copy_(0.5 * torch.randn(c, generator=g))
            bn.running_mean.copy_(0.3 * torch.randn(c, generator=g))
            bn.running_var.copy_(0.25 + 1.5 * torch.rand(c, generator=g))  # [0.25, 1.75)
    return m


def nobias_mlp() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(64, 32, bias=False)),
                ("relu1", nn.ReLU()),
                ("fc2", nn.Linear(32, 10, bias=False)),
            ]
        )
    )


class ViewCNN(nn.Module):
    """Flattens with x.view(x.size(0), -1): the legacy exporter writes Shape/Gather/Unsqueeze/Concat/Reshape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(torch.relu(self.fc1(x)))


def sklearn_mlp(path: str):
    """Train MLPClassifier on digits, convert with skl2onnx; return (x, clf)."""
    from skl2onnx import to_onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, y = digits()
    clf = MLPClassifier(
        hidden_layer_sizes=(32, 16), activation="relu", random_state=0, max_iter=300
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    onx = to_onnx(
        clf,
        x[:1].astype(np.float32),
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())
    xs = samples((-1, 64))
    return xs, clf


# --------------------------------------------------------------------------
# reporting / checks
# --------------------------------------------------------------------------
def _shape(vi) -> list:
    t = vi.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in t.shape.dim]
    return [onnx.TensorProto.DataType.Name(t.elem_type), dims]


def describe(path: str) -> str:
    m = onnx.load(path, load_external_data=False)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in m.opset_import)
    lines = [
        f"== {os.path.basename(path)}  ({m.producer_name} {m.producer_version}, "
        f"ir {m.ir_version}, opsets {opsets})",
        "  ops: " + " ".join(n.op_type for n in m.graph.node),
        "  nodes: " + ", ".join(f"{n.op_type}:{n.name}" for n in m.graph.node),
    ]
    for i in m.graph.initializer:
        ext = " (external)" if i.data_location == onnx.TensorProto.EXTERNAL else ""
        lines.append(f"  init {i.name} {list(i.dims)} "
                     f"{onnx.TensorProto.DataType.Name(i.data_type)}{ext}")
    for v in m.graph.input:
        lines.append(f"  input {v.name} {_shape(v)}")
    for v in m.graph.output:
        lines.append(f"  output {v.name} {_shape(v)}")
    return "\n".join(lines)


def run_ort(path: str, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def check_torch(path, model, x, atol=1e-5) -> float:
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = run_ort(path, x)[0]
    err = float(np.abs(got - ref).max())
    if not err <= atol:
        raise SystemExit(f"{path}: onnxruntime differs from torch by {err}")
    # a different batch size must work too (dynamic batch)
    got3 = run_ort(path, x[:3])[0]
    assert np.allclose(got3, got[:3], atol=1e-6), path
    return err


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data"))
    ap.add_argument("--quiet", action="store_true", help="only print the summary")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")

    t0 = time.perf_counter()
    setup_determinism(SEED)

    def p(name):
        return os.path.join(out, name)

    written = []

    # 1. legacy MLP with dropout (eval mode)
    torch.manual_seed(SEED)
    m = mlp(dropout=True).eval()
    x = samples((-1, 64))
    export_legacy(m, x, p("torch_legacy_mlp.onnx"))
    written.append(("torch_legacy_mlp.onnx", m, x))

    # 2. legacy CNN with BatchNormalization kept in the graph.  With the
    # default do_constant_folding=True (TrainingMode.EVAL) the exporter folds
    # BN into the Conv weights; do_constant_folding=False keeps it.
    torch.manual_seed(SEED + 1)
    m = cnn_bn().eval()
    x = samples((-1, 1, 8, 8))
    export_legacy(m, x, p("torch_legacy_cnn_bn.onnx"), do_constant_folding=False)
    ops = [n.op_type for n in onnx.load(p("torch_legacy_cnn_bn.onnx")).graph.node]
    if ops.count("BatchNormalization") != 2:
        raise SystemExit(f"torch_legacy_cnn_bn: BatchNormalization folded away: {ops}")
    written.append(("torch_legacy_cnn_bn.onnx", m, x))

    # 3. dynamo MLP (no dropout), external data
    torch.manual_seed(SEED + 2)
    m = mlp(dropout=False).eval()
    x = samples((-1, 64))
    export_dynamo(m, x, p("torch_dynamo_mlp.onnx"), args.quiet)
    written.append(("torch_dynamo_mlp.onnx", m, x))

    # 4. dynamo digits CNN, external data
    torch.manual_seed(SEED + 3)
    m = make_cnn().eval()
    x = samples((-1, 1, 8, 8))
    export_dynamo(m, x, p("torch_dynamo_cnn.onnx"), args.quiet)
    written.append(("torch_dynamo_cnn.onnx", m, x))

    # 5. scikit-learn MLPClassifier via skl2onnx
    x, clf = sklearn_mlp(p("skl_mlp.onnx"))
    written.append(("skl_mlp.onnx", clf, x))

    # 6. legacy MLP without biases
    torch.manual_seed(SEED + 5)
    m = nobias_mlp().eval()
    x = samples((-1, 64))
    export_legacy(m, x, p("torch_legacy_mlp_nobias.onnx"))
    written.append(("torch_legacy_mlp_nobias.onnx", m, x))

    # 7. legacy CNN flattening with x.view(x.size(0), -1) (a Shape branch computing the Reshape target)
    torch.manual_seed(SEED + 6)
    m = ViewCNN().eval()
    x = samples((-1, 1, 8, 8))
    export_legacy(m, x, p("torch_legacy_cnn_view.onnx"))
    written.append(("torch_legacy_cnn_view.onnx", m, x))

    for name, model, x in written:
        path = p(name)
        onnx.checker.check_model(path, full_check=True)
        save_npz(p(name[: -len(".onnx")] + "_x.npz"), x=x)
        print(describe(path))
        if isinstance(model, nn.Module):
            err = check_torch(path, model, x)
            print(f"  onnxruntime vs torch on {len(x)} samples: max |diff| = {err:.2e}")
        else:
            outs = run_ort(path, x)
            label, proba = outs[0], outs[1]
            ok = np.array_equal(label, model.predict(x)) and np.allclose(
                proba, model.predict_proba(x), atol=1e-5
            )
            if not ok:
                raise SystemExit(f"{name}: onnxruntime differs from sklearn")
            print(f"  onnxruntime matches sklearn predict/predict_proba on {len(x)} samples")

    print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
