"""Build tests/data/published/: small digits models with the graph patterns of ONNX files published by others.

Every model here is really trained on scikit-learn's digits (8x8, /16 to [0, 1]; the stratified 1347/450 split
of tools/make_examples.py, seed 0) and reaches >= 90 % on the 450 held-out images.  Each ``NAME.onnx`` comes
with ``NAME_calib.npz`` (the first 20 training images of every class: 200) and ``NAME_eval.npz`` (the 450
held-out images); ``x`` is float32 shaped like the model's declared input with the batch axis first (N
samples), ``y`` int64.  tests/data/published/README.md lists the files, their node sequences, accuracies and
what onnxcrit said about each.

Where the exporter that writes a pattern installs, the file is its real output:

* torch 2.14.1 (this venv): the legacy TorchScript exporter (``dynamo=False``) and the dynamo exporter;
* tf2onnx 1.17.0 with tensorflow-cpu 2.21.0 (tf_keras 2.21.0 = Keras 2, and Keras 3.15): these do not share
  numpy/protobuf pins with this venv safely, so they live in a separate venv and this script runs itself
  there with ``--keras-only``::

      python3 -m venv /tmp/tfvenv
      /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0 tf-keras==2.21.0 \\
          scikit-learn onnxruntime
      python -m tools.make_published_patterns --tf-python /tmp/tfvenv/bin/python

  (``--tf-python`` defaults to $ONNXCRIT_TF_PYTHON, else /tmp/tfvenv/bin/python; when it is missing the
  keras files are left as they are and a line says so.)

Patterns of old exporters (CNTK's model-zoo mnist-8 at opset 8, torch 0.4/1.0's flatten at opset 9, Pad with
its pads as an initializer input at opset 11) are built with onnx.helper, node for node as those exporters
wrote them, from the weights of a model trained here with torch.

Deterministic: fixed seeds, one thread, deterministic algorithms, fixed zip timestamps, PYTHONHASHSEED=0 and
a reset name counter for tf2onnx; running it twice gives the same bytes (check with ``sha256sum
tests/data/published/*``) for every file but keras3_cnn_nhwc.onnx, where tf2onnx's merge of duplicated
constants keeps either of two equal int64 [0] constants from run to run (one name and the initializer order
change; the graph and the weights do not).

Usage (from the repository root):
       python -m tools.make_published_patterns [--out DIR] [--only NAME ...] [--tf-python PY] [--no-keras]
       python -m tools.make_published_patterns --table   # check every file, run onnxcrit, print README rows
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import time
import warnings
import zipfile

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
           "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(ROOT, "tests", "data", "published")
SEED = 0
N_EVAL = 450
CALIB_PER_CLASS = 20
MIN_ACC = 0.90
PRODUCER = "onnxcrit tools/make_published_patterns.py"

# name -> (pattern, exporter text).  The order is the README's.
MANIFEST = [
    ("torch_legacy_mlp_batch1", "1 fixed batch 1 (input and output)",
     "torch 2.14.1 legacy (`dynamo=False`), dummy batch 1, no dynamic_axes, opset 13"),
    ("torch_legacy_cnn_batch1_view", "1 fixed batch 1, flatten `x.view(1, -1)`",
     "torch 2.14.1 legacy, no dynamic_axes, opset 13"),
    ("torch_legacy_cnn_batch1_flatten", "1 fixed batch 1, `torch.flatten(x, 1)`",
     "torch 2.14.1 legacy, no dynamic_axes, opset 13"),
    ("torch_dynamo_cnn_batch1", "1 fixed batch 1, dynamo, external data (`.onnx.data`)",
     "torch 2.14.1 dynamo (`dynamo=True`, no dynamic_shapes), opset 20"),
    ("tfkeras_cnn_nhwc", "2 NHWC keras CNN, free batch",
     "tf_keras 2.21 Sequential -> tf2onnx 1.17.0 `from_keras`, opset 13"),
    ("tfkeras_cnn_nhwc_batch1", "2 NHWC keras CNN, fixed batch 1 (`Input(batch_size=1)`)",
     "tf_keras 2.21 -> tf2onnx 1.17.0 `from_keras`, opset 13"),
    ("tfkeras_cnn_nhwc_rgb", "2 NHWC keras CNN, 3 channels (digit repeated): the input Transpose [0,3,1,2]",
     "tf_keras 2.21 -> tf2onnx 1.17.0 `from_keras`, opset 13"),
    ("keras3_cnn_nhwc", "2 NHWC Keras 3 CNN (Flatten becomes a Shape/Slice/Concat chain)",
     "Keras 3.15 in a `tf.function` -> tf2onnx 1.17.0 `from_function` (`from_keras` fails on Keras 3), opset 13"),
    ("tfkeras_mlp", "2 keras MLP (Dense relu x2, Dense softmax)",
     "tf_keras 2.21 -> tf2onnx 1.17.0 `from_keras`, opset 13"),
    ("torch_legacy_cnn_norm", "3a `(x - mean) / std` per channel `[1,C,1,1]` before a padding=1 Conv",
     "torch 2.14.1 legacy, free batch, opset 13"),
    ("torch_legacy_mlp_norm_feature", "3b `(x - mean) / std` per feature `[64]` before an MLP",
     "torch 2.14.1 legacy, free batch, opset 13"),
    ("torch_legacy_mlp_norm_scalar", "3b `(x - 0.5) / 0.5` scalar (python floats) before an MLP",
     "torch 2.14.1 legacy, free batch, opset 13"),
    ("torch_legacy_mlp_identity_norm", "3c identity `Sub 0` / `Div 1` (buffers zeros(1), ones(1))",
     "torch 2.14.1 legacy, free batch, opset 13"),
    ("tfkeras_cnn_rescaling", "3d keras `Rescaling(scale=2, offset=-1)` first layer",
     "tf_keras 2.21 -> tf2onnx 1.17.0 `from_keras`, opset 13"),
    ("cntk_mnist8_style_opset8", "4a model-zoo mnist-8 (CNTK) layout: Reshape'd weights, SAME_UPPER, "
     "`[C,1,1]` bias Adds, fixed Reshape, MatMul + `[1,10]` Add; initializers also graph inputs (IR 3)",
     "onnx.helper (CNTK not installable here), opset 8; weights of a torch-trained CNN"),
    ("torch_legacy_pad_opset10", "4b explicit zero `Pad` (pads attribute) before Conv and before AveragePool",
     "torch 2.14.1 legacy, `F.pad`/`nn.ZeroPad2d`, free batch, opset 10"),
    ("onnxhelper_pad_opset11", "4b `Pad` with pads (and constant_value 0) as initializer inputs, before Conv "
     "and AveragePool", "onnx.helper, opset 11; weights of torch_legacy_pad_opset10"),
    ("torch_legacy_pad_opset13", "4b `Pad` whose pads input is computed by a ConstantOfShape/Concat/Slice/"
     "Transpose/Reshape/Cast chain", "torch 2.14.1 legacy, `F.pad`/`nn.ZeroPad2d`, opset 13 (same weights)"),
    ("torch_dynamo_pad_avgpool", "4b `Pad` (pads initializer) before AveragePool; the Pad before the Conv is "
     "fused into its pads", "torch 2.14.1 dynamo, free batch, external data, opset 20 (same weights)"),
    ("torch04_flatten_opset9", "4c torch 0.4/1.0 flatten `Shape->Gather->Unsqueeze->Concat([-1])->Reshape`, "
     "fixed batch 1", "onnx.helper, opset 9, Constant nodes; weights of torch_legacy_cnn_batch1_*"),
    ("torch_legacy_allconv_gap", "5 all-conv: Conv(10) -> GlobalAveragePool -> Flatten",
     "torch 2.14.1 legacy, free batch, opset 13"),
    ("torch_legacy_allconv_1x1", "5 all-conv: Conv(10) over a 1x1 map -> Reshape `[-1, 10]`",
     "torch 2.14.1 legacy, free batch, opset 13"),
    ("torch_legacy_mlp_relu_logits", "6 Relu on the logits", "torch 2.14.1 legacy, free batch, opset 13"),
    ("torch_legacy_mlp_relu_logits_softmax", "6 Relu on the logits, then Softmax",
     "torch 2.14.1 legacy, free batch, opset 13 (same weights)"),
    ("torch_legacy_mlp_256x4", "7 MLP 64-256-256-256-256-10", "torch 2.14.1 legacy, free batch, opset 13"),
]
KERAS_NAMES = {n for n, _, _ in MANIFEST if n.startswith(("tfkeras", "keras3"))}
EXTERNAL = {"torch_dynamo_cnn_batch1", "torch_dynamo_pad_avgpool"}


# --------------------------------------------------------------------------
# data (no torch: the keras run imports this too)
# --------------------------------------------------------------------------
def save_npz(path: str, **arrays: np.ndarray) -> None:
    """np.savez_compressed with a fixed zip timestamp (same as tools/make_examples.save_npz)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, val in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(val), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def load_split():
    """Digits /16 float32, stratified split (seed 0) 1347/450, as tools/make_examples.load_digits_split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=N_EVAL, stratify=y, random_state=SEED)
    assert len(x_tr) == 1347 and len(x_te) == N_EVAL
    return x_tr, y_tr, x_te, y_te


def calib_indices(y: np.ndarray) -> np.ndarray:
    idx = [np.flatnonzero(y == c)[:CALIB_PER_CLASS] for c in range(10)]
    return np.sort(np.concatenate(idx))


def write_data(out: str, name: str, shape, x_tr, y_tr, x_te, y_te, channels: int = 1) -> None:
    """NAME_calib.npz (200 training images) and NAME_eval.npz (450 held-out), x shaped (-1, *shape)."""
    def fmt(x):
        x = x.reshape((-1,) + tuple(shape[:-1] if channels > 1 else shape))
        if channels > 1:
            x = np.repeat(x[..., None], channels, axis=-1)
        return np.ascontiguousarray(x.astype(np.float32))

    ci = calib_indices(y_tr)
    save_npz(os.path.join(out, name + "_calib.npz"), x=fmt(x_tr[ci]), y=y_tr[ci])
    save_npz(os.path.join(out, name + "_eval.npz"), x=fmt(x_te), y=y_te)


def ort_outputs(path: str, x: np.ndarray) -> np.ndarray:
    """First output on x; a model with a fixed batch dim 1 is run one sample at a time."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if inp.shape and inp.shape[0] == 1:
        return np.concatenate([sess.run(None, {inp.name: x[i:i + 1]})[0] for i in range(len(x))])
    return sess.run(None, {inp.name: x})[0]


# --------------------------------------------------------------------------
# keras / tf2onnx (run with --keras-only in the tensorflow venv)
# --------------------------------------------------------------------------
def keras_main(out: str, only: set[str] | None) -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":  # tf2onnx dedups equal constants in set order: fix str hashing
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras = tf_keras (Keras 2): tf2onnx.from_keras needs it
    import tensorflow as tf
    import tf2onnx
    import tf_keras

    tf.get_logger().setLevel("ERROR")
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    x_tr, y_tr, x_te, y_te = load_split()
    k2 = tf_keras
    L = k2.layers
    todo = [n for n in ("tfkeras_cnn_nhwc", "tfkeras_cnn_nhwc_batch1", "tfkeras_cnn_nhwc_rgb", "tfkeras_mlp",
                        "tfkeras_cnn_rescaling", "keras3_cnn_nhwc") if only is None or n in only]

    def cnn_layers(lib):
        return [lib.layers.Conv2D(8, 3, activation="relu", padding="same", name="conv1"),
                lib.layers.MaxPooling2D(name="pool1"),
                lib.layers.Conv2D(16, 3, activation="relu", name="conv2"),
                lib.layers.Flatten(name="flatten"),
                lib.layers.Dense(32, activation="relu", name="fc1"),
                lib.layers.Dense(10, activation="softmax", name="fc2")]

    def fit(model, shape, channels=1, epochs=40):
        x = x_tr.reshape((-1,) + shape)
        if channels > 1:
            x = np.repeat(x[..., None], channels, axis=-1)
        model.compile(optimizer=model_opt(model), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y_tr, epochs=epochs, batch_size=32, shuffle=True, verbose=0)

    def model_opt(model):
        return (k2.optimizers.Adam(3e-3) if isinstance(model, k2.Model) else keras3.optimizers.Adam(3e-3))

    keras3 = None
    for name in todo:
        shape, channels = (64,), 1
        if name == "tfkeras_mlp":
            k2.utils.set_random_seed(SEED)
            m = k2.Sequential([k2.Input((64,), name="input"), L.Dense(64, activation="relu", name="fc1"),
                               L.Dense(32, activation="relu", name="fc2"),
                               L.Dense(10, activation="softmax", name="fc3")], name="mlp")
            fit(m, shape)
        elif name.startswith("tfkeras"):
            batch = 1 if name.endswith("batch1") else None
            channels = 3 if name.endswith("rgb") else 1
            shape = (8, 8, channels)
            k2.utils.set_random_seed(SEED)
            first = [L.Rescaling(2.0, offset=-1.0, name="rescale")] if name.endswith("rescaling") else []
            m = k2.Sequential([k2.Input(shape, batch_size=batch, name="input")] + first + cnn_layers(k2),
                              name="cnn")
            fit(m, (8, 8) if channels > 1 else shape, channels)
        else:  # Keras 3: tf2onnx.convert.from_keras raises KeyError('keras_tensor_..'), so a tf.function
            import keras as keras3

            keras3.utils.set_random_seed(SEED)
            shape = (8, 8, 1)
            m = keras3.Sequential([keras3.Input(shape, name="input")] + cnn_layers(keras3), name="cnn")
            fit(m, shape)
        spec = (tf.TensorSpec((1 if name.endswith("batch1") else None,) + shape, tf.float32, name="input"),)
        tf2onnx.utils.INTERNAL_NAME = 1  # the counter behind tf2onnx's "__N" names: same names with --only
        if name.startswith("keras3"):
            fn = tf.function(lambda x: m(x, training=False), input_signature=spec)
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=13)
        else:
            proto, _ = tf2onnx.convert.from_keras(m, input_signature=spec, opset=13)
        path = os.path.join(out, name + ".onnx")
        with open(path, "wb") as f:
            f.write(proto.SerializeToString())
        write_data(out, name, shape, x_tr, y_tr, x_te, y_te, channels)
        ev = np.load(os.path.join(out, name + "_eval.npz"))
        ref = m.predict(ev["x"], batch_size=1 if name.endswith("batch1") else 450, verbose=0)
        got = ort_outputs(path, ev["x"])
        err = float(np.abs(ref - got).max())
        acc = float((got.argmax(1) == ev["y"]).mean())
        print(f"{name}: held-out acc {acc:.4f}, |onnxruntime - keras| max {err:.1e}")
        if err > 1e-4 or acc < MIN_ACC:
            raise SystemExit(f"{name}: check failed")
    return 0


# --------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------
def torch_main(out: str, only: set[str] | None, quiet: bool) -> int:
    import onnx
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.models import fit  # the training loop the benchmarks and tools/make_examples.py share

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    x_tr, y_tr, x_te, y_te = load_split()

    def want(*names):
        return only is None or any(n in only for n in names)

    def p(name):
        return os.path.join(out, name + ".onnx")

    def train(model, shape, epochs=40, lr=3e-3, seed=SEED):
        torch.manual_seed(seed)
        fit(model, torch.from_numpy(x_tr.reshape(shape)), torch.from_numpy(y_tr), epochs, batch_size=32,
            seed=seed, lr=lr)
        return model.eval()

    def legacy(model, shape, name, opset=13, batch1=False):
        kw = {} if batch1 else {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}
        example = torch.from_numpy(np.ascontiguousarray(x_te[:1].reshape(shape)))
        torch.onnx.export(model.eval(), (example,), p(name), dynamo=False, opset_version=opset,
                          do_constant_folding=True, input_names=["input"], output_names=["logits"], **kw)

    def dynamo(model, shape, name, batch1):
        example = torch.from_numpy(np.ascontiguousarray(x_te[:1].reshape(shape)))
        kw = {} if batch1 else {"dynamic_shapes": ({0: torch.export.Dim("batch", min=1)},)}
        ctx = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
        with ctx:
            prog = torch.onnx.export(model.eval(), (example,), None, dynamo=True, external_data=True,
                                     input_names=["input"], output_names=["logits"], **kw)
        for node in prog.model.graph.all_nodes():  # absolute paths and line numbers: not reproducible
            node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
        if os.path.exists(p(name) + ".data"):
            os.remove(p(name) + ".data")
        prog.save(p(name), external_data=True)

    def save_helper(graph, name, opset, ir):
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir,
                              producer_name=PRODUCER, producer_version="1")
        onnx.save(m, p(name))

    def data(name, shape):
        write_data(out, name, shape[1:], x_tr, y_tr, x_te, y_te)

    def check(name, model, shape):
        """onnxruntime output == torch output on the held-out images."""
        x = np.ascontiguousarray(x_te.reshape(shape))
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = ort_outputs(p(name), x)
        err = float(np.abs(ref - got).max())
        acc = float((got.argmax(1) == y_te).mean())
        print(f"{name}: held-out acc {acc:.4f}, |onnxruntime - torch| max {err:.1e}")
        if err > 1e-4 or acc < MIN_ACC:
            raise SystemExit(f"{name}: check failed")

    def t(a):
        return a.detach().numpy().astype(np.float32)

    IMG, VEC = (-1, 1, 8, 8), (-1, 64)
    B1IMG, B1VEC = (1, 1, 8, 8), (1, 64)

    def mlp(*widths, relu_logits=False):
        layers = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            layers += [nn.Linear(a, b)]
            if i < len(widths) - 2 or relu_logits:
                layers += [nn.ReLU()]
        return nn.Sequential(*layers)

    class CNN(nn.Module):
        """conv8(p1)-relu-pool-conv16(p1)-relu-pool-fc32-relu-fc10; flatten as `how`; optional normalisation."""

        def __init__(self, how="flatten", mean=None, std=None):
            super().__init__()
            self.how = how
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.fc1 = nn.Linear(64, 32)
            self.fc2 = nn.Linear(32, 10)
            if mean is not None:
                self.register_buffer("mean", torch.full((1, 1, 1, 1), float(mean)))
                self.register_buffer("std", torch.full((1, 1, 1, 1), float(std)))
            else:
                self.mean = None

        def forward(self, x):
            if self.mean is not None:
                x = (x - self.mean) / self.std
            x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
            x = x.view(1, -1) if self.how == "view1" else torch.flatten(x, 1)
            return self.fc2(torch.relu(self.fc1(x)))

    class Norm(nn.Module):
        def __init__(self, inner, mean=None, std=None, scalar=None):
            super().__init__()
            self.inner, self.scalar = inner, scalar
            if mean is not None:
                self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
                self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

        def forward(self, x):
            x = (x - self.scalar[0]) / self.scalar[1] if self.scalar else (x - self.mean) / self.std
            return self.inner(x)

    # ---- 1. fixed batch 1 ----------------------------------------------------------------------------
    if want("torch_legacy_mlp_batch1"):
        torch.manual_seed(SEED)
        m = train(mlp(64, 64, 32, 10), VEC, lr=1e-3)
        legacy(m, B1VEC, "torch_legacy_mlp_batch1", batch1=True)
        data("torch_legacy_mlp_batch1", B1VEC)
        check("torch_legacy_mlp_batch1", m, VEC)
    if want("torch_legacy_cnn_batch1_view", "torch_legacy_cnn_batch1_flatten", "torch_dynamo_cnn_batch1",
            "torch04_flatten_opset9"):
        torch.manual_seed(SEED + 1)
        cnn = train(CNN(), IMG)
        view1 = CNN("view1")
        view1.load_state_dict(cnn.state_dict())
        view1.eval()
        if want("torch_legacy_cnn_batch1_view"):
            legacy(view1, B1IMG, "torch_legacy_cnn_batch1_view", batch1=True)
            data("torch_legacy_cnn_batch1_view", B1IMG)
            check("torch_legacy_cnn_batch1_view", cnn, IMG)
        if want("torch_legacy_cnn_batch1_flatten"):
            legacy(cnn, B1IMG, "torch_legacy_cnn_batch1_flatten", batch1=True)
            data("torch_legacy_cnn_batch1_flatten", B1IMG)
            check("torch_legacy_cnn_batch1_flatten", cnn, IMG)
        if want("torch_dynamo_cnn_batch1"):
            dynamo(cnn, B1IMG, "torch_dynamo_cnn_batch1", batch1=True)
            data("torch_dynamo_cnn_batch1", B1IMG)
            check("torch_dynamo_cnn_batch1", cnn, IMG)
        # ---- 4c. torch 0.4 / 1.0 flatten at opset 9 (x.view(x.size(0), -1), traced with batch 1) ------
        if want("torch04_flatten_opset9"):
            name = "torch04_flatten_opset9"
            sd = {k: t(v) for k, v in cnn.state_dict().items()}
            f32 = TensorProto.FLOAT
            i64 = TensorProto.INT64
            inits = [numpy_helper.from_array(v, k) for k, v in sd.items()]
            c_pool = dict(kernel_shape=[2, 2], pads=[0, 0, 0, 0], strides=[2, 2])
            c_conv = dict(dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
            nodes = [
                helper.make_node("Conv", ["0", "conv1.weight", "conv1.bias"], ["9"], **c_conv),
                helper.make_node("Relu", ["9"], ["10"]),
                helper.make_node("MaxPool", ["10"], ["11"], **c_pool),
                helper.make_node("Conv", ["11", "conv2.weight", "conv2.bias"], ["12"], **c_conv),
                helper.make_node("Relu", ["12"], ["13"]),
                helper.make_node("MaxPool", ["13"], ["14"], **c_pool),
                helper.make_node("Shape", ["14"], ["15"]),
                helper.make_node("Constant", [], ["16"], value=numpy_helper.from_array(np.array(0, np.int64))),
                helper.make_node("Gather", ["15", "16"], ["17"], axis=0),
                helper.make_node("Unsqueeze", ["17"], ["18"], axes=[0]),
                helper.make_node("Constant", [], ["19"], value=numpy_helper.from_array(np.array([-1], np.int64))),
                helper.make_node("Concat", ["18", "19"], ["20"], axis=0),
                helper.make_node("Reshape", ["14", "20"], ["21"]),
                helper.make_node("Gemm", ["21", "fc1.weight", "fc1.bias"], ["22"], alpha=1.0, beta=1.0,
                                 transB=1),
                helper.make_node("Relu", ["22"], ["23"]),
                helper.make_node("Gemm", ["23", "fc2.weight", "fc2.bias"], ["24"], alpha=1.0, beta=1.0,
                                 transB=1),
            ]
            del i64
            g = helper.make_graph(nodes, "torch-jit-export",
                                  [helper.make_tensor_value_info("0", f32, [1, 1, 8, 8])],
                                  [helper.make_tensor_value_info("24", f32, [1, 10])], inits)
            save_helper(g, name, 9, 4)
            data(name, B1IMG)
            check(name, cnn, IMG)

    # ---- 3. input normalisation ------------------------------------------------------------------------
    if want("torch_legacy_cnn_norm"):
        mean, std = float(x_tr.mean()), float(x_tr.std())
        torch.manual_seed(SEED + 2)
        m = train(CNN(mean=round(mean, 4), std=round(std, 4)), IMG)
        legacy(m, IMG, "torch_legacy_cnn_norm")
        data("torch_legacy_cnn_norm", IMG)
        check("torch_legacy_cnn_norm", m, IMG)
    if want("torch_legacy_mlp_norm_feature"):
        mu = x_tr.mean(0).astype(np.float32)
        sd = x_tr.std(0).astype(np.float32)
        sd[sd == 0] = 1.0  # sklearn StandardScaler's rule for constant features
        torch.manual_seed(SEED + 3)
        m = train(Norm(mlp(64, 64, 32, 10), mean=mu, std=sd), VEC, lr=1e-3)
        legacy(m, VEC, "torch_legacy_mlp_norm_feature")
        data("torch_legacy_mlp_norm_feature", VEC)
        check("torch_legacy_mlp_norm_feature", m, VEC)
    if want("torch_legacy_mlp_norm_scalar"):
        torch.manual_seed(SEED + 4)
        m = train(Norm(mlp(64, 64, 32, 10), scalar=(0.5, 0.5)), VEC, lr=1e-3)
        legacy(m, VEC, "torch_legacy_mlp_norm_scalar")
        data("torch_legacy_mlp_norm_scalar", VEC)
        check("torch_legacy_mlp_norm_scalar", m, VEC)
    if want("torch_legacy_mlp_identity_norm"):
        torch.manual_seed(SEED + 5)
        m = train(Norm(mlp(64, 64, 32, 10), mean=np.zeros(1, np.float32), std=np.ones(1, np.float32)), VEC,
                  lr=1e-3)
        legacy(m, VEC, "torch_legacy_mlp_identity_norm")
        data("torch_legacy_mlp_identity_norm", VEC)
        check("torch_legacy_mlp_identity_norm", m, VEC)

    # ---- 4a. CNTK model-zoo mnist-8 layout -----------------------------------------------------------
    if want("cntk_mnist8_style_opset8"):
        name = "cntk_mnist8_style_opset8"

        class Zoo(nn.Module):  # Conv SAME - relu - pool - Conv SAME - relu - pool - flatten - Linear
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
                self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
                self.fc = nn.Linear(64, 10)

            def forward(self, x):
                x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
                x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
                return self.fc(torch.flatten(x, 1))

        torch.manual_seed(SEED + 6)
        zoo = train(Zoo(), IMG)
        f32 = TensorProto.FLOAT
        arrays = {
            "Parameter5": t(zoo.conv1.weight).reshape(8, 9),              # reshaped to [8,1,3,3] by a node
            "Parameter5_reshape1_shape": np.array([8, 1, 3, 3], np.int64),
            "Parameter6": t(zoo.conv1.bias).reshape(8, 1, 1),
            "Parameter87": t(zoo.conv2.weight),
            "Parameter88": t(zoo.conv2.bias).reshape(16, 1, 1),
            "Pooling160_Output_0_reshape0_shape": np.array([1, 64], np.int64),
            "Parameter193": np.ascontiguousarray(t(zoo.fc.weight).T).reshape(16, 2, 2, 10),
            "Parameter193_reshape1_shape": np.array([64, 10], np.int64),
            "Parameter194": t(zoo.fc.bias).reshape(1, 10),
        }
        same = dict(auto_pad="SAME_UPPER", dilations=[1, 1], group=1, kernel_shape=[3, 3], strides=[1, 1])
        pool = dict(auto_pad="NOTSET", kernel_shape=[2, 2], pads=[0, 0, 0, 0], strides=[2, 2])
        nodes = [
            helper.make_node("Reshape", ["Parameter193", "Parameter193_reshape1_shape"],
                             ["Parameter193_reshape1"], name="Times212_reshape1"),
            helper.make_node("Reshape", ["Parameter5", "Parameter5_reshape1_shape"], ["Parameter5_reshape1"],
                             name="Convolution28_reshape1"),
            helper.make_node("Conv", ["Input3", "Parameter5_reshape1"], ["Convolution28_Output_0"],
                             name="Convolution28", **same),
            helper.make_node("Add", ["Convolution28_Output_0", "Parameter6"], ["Plus30_Output_0"], name="Plus30"),
            helper.make_node("Relu", ["Plus30_Output_0"], ["ReLU32_Output_0"], name="ReLU32"),
            helper.make_node("MaxPool", ["ReLU32_Output_0"], ["Pooling66_Output_0"], name="Pooling66", **pool),
            helper.make_node("Conv", ["Pooling66_Output_0", "Parameter87"], ["Convolution110_Output_0"],
                             name="Convolution110", **same),
            helper.make_node("Add", ["Convolution110_Output_0", "Parameter88"], ["Plus112_Output_0"],
                             name="Plus112"),
            helper.make_node("Relu", ["Plus112_Output_0"], ["ReLU114_Output_0"], name="ReLU114"),
            helper.make_node("MaxPool", ["ReLU114_Output_0"], ["Pooling160_Output_0"], name="Pooling160",
                             **pool),
            helper.make_node("Reshape", ["Pooling160_Output_0", "Pooling160_Output_0_reshape0_shape"],
                             ["Pooling160_Output_0_reshape0"], name="Times212_reshape0"),
            helper.make_node("MatMul", ["Pooling160_Output_0_reshape0", "Parameter193_reshape1"],
                             ["Times212_Output_0"], name="Times212"),
            helper.make_node("Add", ["Times212_Output_0", "Parameter194"], ["Plus214_Output_0"], name="Plus214"),
        ]
        inits = [numpy_helper.from_array(v, k) for k, v in arrays.items()]
        # IR 3: every initializer is also a graph input (CNTK and torch <= 1.2 wrote them so)
        inputs = [helper.make_tensor_value_info("Input3", f32, [1, 1, 8, 8])] + [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
            for k, v in arrays.items()]
        g = helper.make_graph(nodes, "CNTKGraph", inputs,
                              [helper.make_tensor_value_info("Plus214_Output_0", f32, [1, 10])], inits)
        save_helper(g, name, 8, 3)
        data(name, B1IMG)
        check(name, zoo, IMG)

    # ---- 4b. explicit zero Pad before Conv and AveragePool ---------------------------------------------
    pad_names = ("torch_legacy_pad_opset10", "onnxhelper_pad_opset11", "torch_legacy_pad_opset13",
                 "torch_dynamo_pad_avgpool")
    if want(*pad_names):
        class PadNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.pad = nn.ZeroPad2d(1)
                self.conv1 = nn.Conv2d(1, 8, 3)
                self.conv2 = nn.Conv2d(8, 16, 3)
                self.fc = nn.Linear(64, 10)

            def forward(self, x):
                x = torch.relu(self.conv1(self.pad(x)))                  # Pad -> Conv   8x8
                x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)    # Pad -> AveragePool  4x4
                x = torch.relu(self.conv2(self.pad(x)))                  # Pad -> Conv   4x4
                x = F.max_pool2d(x, 2)                                   # 2x2
                return self.fc(torch.flatten(x, 1))

        torch.manual_seed(SEED + 7)
        pn = train(PadNet(), IMG)
        for name, opset in (("torch_legacy_pad_opset10", 10), ("torch_legacy_pad_opset13", 13)):
            if want(name):
                legacy(pn, IMG, name, opset=opset)
                data(name, IMG)
                check(name, pn, IMG)
        if want("torch_dynamo_pad_avgpool"):
            dynamo(pn, IMG, "torch_dynamo_pad_avgpool", batch1=False)
            data("torch_dynamo_pad_avgpool", IMG)
            check("torch_dynamo_pad_avgpool", pn, IMG)
        if want("onnxhelper_pad_opset11"):
            name = "onnxhelper_pad_opset11"
            f32 = TensorProto.FLOAT
            arrays = {k: t(v) for k, v in pn.state_dict().items()}
            arrays["pads"] = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
            arrays["pad_value"] = np.array(0.0, np.float32)
            nodes = [
                helper.make_node("Pad", ["input", "pads", "pad_value"], ["pad1"], name="Pad_0", mode="constant"),
                helper.make_node("Conv", ["pad1", "conv1.weight", "conv1.bias"], ["conv1"], name="Conv_1",
                                 kernel_shape=[3, 3], pads=[0, 0, 0, 0], strides=[1, 1]),
                helper.make_node("Relu", ["conv1"], ["relu1"], name="Relu_2"),
                helper.make_node("Pad", ["relu1", "pads", "pad_value"], ["pad2"], name="Pad_3", mode="constant"),
                helper.make_node("AveragePool", ["pad2"], ["pool1"], name="AveragePool_4", kernel_shape=[3, 3],
                                 pads=[0, 0, 0, 0], strides=[2, 2]),
                helper.make_node("Pad", ["pool1", "pads", "pad_value"], ["pad3"], name="Pad_5", mode="constant"),
                helper.make_node("Conv", ["pad3", "conv2.weight", "conv2.bias"], ["conv2"], name="Conv_6",
                                 kernel_shape=[3, 3], pads=[0, 0, 0, 0], strides=[1, 1]),
                helper.make_node("Relu", ["conv2"], ["relu2"], name="Relu_7"),
                helper.make_node("MaxPool", ["relu2"], ["pool2"], name="MaxPool_8", kernel_shape=[2, 2],
                                 pads=[0, 0, 0, 0], strides=[2, 2]),
                helper.make_node("Flatten", ["pool2"], ["flat"], name="Flatten_9", axis=1),
                helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="Gemm_10",
                                 alpha=1.0, beta=1.0, transB=1),
            ]
            g = helper.make_graph(nodes, "main_graph", [helper.make_tensor_value_info("input", f32,
                                                                                      ["batch", 1, 8, 8])],
                                  [helper.make_tensor_value_info("logits", f32, ["batch", 10])],
                                  [numpy_helper.from_array(v, k) for k, v in arrays.items()])
            save_helper(g, name, 11, 6)
            data(name, IMG)
            check(name, pn, IMG)

    # ---- 5. all-convolutional ------------------------------------------------------------------------
    if want("torch_legacy_allconv_gap"):
        torch.manual_seed(SEED + 8)
        m = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 10, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
        m = train(m, IMG)
        legacy(m, IMG, "torch_legacy_allconv_gap")
        data("torch_legacy_allconv_gap", IMG)
        check("torch_legacy_allconv_gap", m, IMG)
    if want("torch_legacy_allconv_1x1"):
        class AllConv1x1(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
                self.conv2 = nn.Conv2d(16, 32, 3)
                self.conv3 = nn.Conv2d(32, 10, 2)

            def forward(self, x):
                x = F.max_pool2d(torch.relu(self.conv1(x)), 2)  # 4x4
                x = torch.relu(self.conv2(x))                   # 2x2
                return self.conv3(x).view(-1, 10)               # [N, 10, 1, 1] -> [N, 10]

        torch.manual_seed(SEED + 9)
        m = train(AllConv1x1(), IMG)
        legacy(m, IMG, "torch_legacy_allconv_1x1")
        data("torch_legacy_allconv_1x1", IMG)
        check("torch_legacy_allconv_1x1", m, IMG)

    # ---- 6. Relu on the logits -----------------------------------------------------------------------
    if want("torch_legacy_mlp_relu_logits", "torch_legacy_mlp_relu_logits_softmax"):
        torch.manual_seed(SEED + 10)
        m = mlp(64, 64, 32, 10, relu_logits=True)
        with torch.no_grad():  # from the default init a third of the images end with every logit dead (59 %)
            m[4].bias.fill_(1.0)
        m = train(m, VEC, lr=1e-3)
        legacy(m, VEC, "torch_legacy_mlp_relu_logits")
        data("torch_legacy_mlp_relu_logits", VEC)
        check("torch_legacy_mlp_relu_logits", m, VEC)
        sm = nn.Sequential(m, nn.Softmax(dim=1)).eval()
        legacy(sm, VEC, "torch_legacy_mlp_relu_logits_softmax")
        data("torch_legacy_mlp_relu_logits_softmax", VEC)
        check("torch_legacy_mlp_relu_logits_softmax", sm, VEC)

    # ---- 7. larger MLP -------------------------------------------------------------------------------
    if want("torch_legacy_mlp_256x4"):
        torch.manual_seed(SEED + 11)
        m = train(mlp(64, 256, 256, 256, 256, 10), VEC, epochs=30, lr=1e-3)
        legacy(m, VEC, "torch_legacy_mlp_256x4")
        data("torch_legacy_mlp_256x4", VEC)
        check("torch_legacy_mlp_256x4", m, VEC)
    return 0


# --------------------------------------------------------------------------
# checks and the README table
# --------------------------------------------------------------------------
def describe_ops(model) -> str:
    return " ".join(n.op_type for n in model.graph.node)


def input_shape(model) -> str:
    dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
            for d in model.graph.input[0].type.tensor_type.shape.dim]
    return "[" + ", ".join(dims) + "]"


def check_all(out: str, names) -> dict:
    """onnx.checker (full), onnxruntime accuracy on NAME_eval.npz, npz shapes; returns name -> info."""
    import onnx

    info = {}
    for name in names:
        path = os.path.join(out, name + ".onnx")
        onnx.checker.check_model(path, full_check=True)
        m = onnx.load(path, load_external_data=False)
        cal, ev = np.load(os.path.join(out, name + "_calib.npz")), np.load(os.path.join(out, name + "_eval.npz"))
        dims = [d.dim_value if d.HasField("dim_value") else None for d in m.graph.input[0].type.tensor_type.shape.dim]
        for arr, n in ((cal, 200), (ev, N_EVAL)):
            assert arr["x"].dtype == np.float32 and arr["y"].dtype == np.int64, name
            assert arr["x"].shape[0] == n and list(arr["x"].shape[1:]) == dims[1:], (name, arr["x"].shape, dims)
        acc = float((ort_outputs(path, ev["x"]).argmax(1) == ev["y"]).mean())
        if acc < MIN_ACC:
            raise SystemExit(f"{name}: accuracy {acc:.4f} < {MIN_ACC}")
        opsets = ",".join(f"{o.domain or ''}{':' if o.domain else ''}{o.version}" for o in m.opset_import)
        info[name] = dict(ops=describe_ops(m), shape=input_shape(m), acc=acc, opset=opsets, ir=m.ir_version,
                          producer=f"{m.producer_name} {m.producer_version}".strip())
    return info


def onnxcrit_cmd(src: str | None) -> tuple[list[str], dict | None]:
    """(command, environment or None) running the venv's `onnxcrit` console script, or the package unpacked at
    `src` (e.g. `git archive REV onnxcrit`): found first through PYTHONPATH, and the child checks it is that one."""
    if src is None:
        return [os.path.join(ROOT, ".venv", "bin", "onnxcrit")], None
    boot = ("import sys, onnxcrit.cli as c; assert c.__file__.startswith(%r), c.__file__; "
            "sys.argv[0] = 'onnxcrit'; sys.exit(c.main())" % src)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    return [os.path.join(ROOT, ".venv", "bin", "python"), "-c", boot], env


def last_error(stderr: str) -> str:
    """The one-line error, or for a traceback 'Traceback: ' and the exception (its lines joined by ' / ')."""
    lines = [ln.rstrip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return "(nothing on stderr)"
    if not any(ln.startswith("Traceback") for ln in lines):
        return lines[-1].strip()
    frames = [i for i, ln in enumerate(lines) if ln.startswith("  File ")]
    i = frames[-1] + 1 if frames else 0
    while i < len(lines) and lines[i].startswith(" "):  # the frame's source line and its ^^^ markers
        i += 1
    return "Traceback: " + " / ".join(ln.strip() for ln in lines[i:])


def run_onnxcrit(out: str, name: str, extra=(), src: str | None = None, timeout=1200) -> tuple[int, str]:
    """`onnxcrit optimize NAME.onnx --data NAME_calib.npz --eval-data NAME_eval.npz [extra]` in `out`:
    (exit code, its last stderr line, or on success the report's parameters and accuracies)."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        cmd, env = onnxcrit_cmd(src)
        cmd += ["optimize", name + ".onnx", "--data", name + "_calib.npz", "--eval-data", name + "_eval.npz", "-o",
                os.path.join(tmp, "pruned.onnx"), "--report", report, *extra]
        try:
            r = subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return -1, f"(killed after {timeout} s)"
        err = last_error(r.stderr)
        if r.returncode == 0 and os.path.exists(report):
            rep = json.load(open(report))
            return 0, (f"params {rep['params_before']} -> {rep['params_after']}, accuracy "
                       f"{rep['accuracy_before']:.2f} -> {rep['accuracy_after']:.2f} % "
                       f"({rep['selection']['rule']})")
        return r.returncode, err


def table(out: str, names, baseline: str | None, current: str | None = None) -> int:
    info = check_all(out, names)
    head = "| file | pattern | exporter, opset | node sequence | input | held-out acc |"
    head += " onnxcrit before (baseline) |" if baseline else ""
    print(head + " onnxcrit now |")
    print("|---" * head.count("|") + "|")
    exp = {n: (pat, ex) for n, pat, ex in MANIFEST}

    def cell(rc, said):
        return f"exit {rc}: `{said.replace('|', '/').replace('`', chr(39))}`"

    for name in names:
        i = info[name]
        cols = []
        if baseline:
            cols.append(cell(*run_onnxcrit(out, name, src=baseline)))
        cols.append(cell(*run_onnxcrit(out, name, src=current)))
        files = f"`{name}.onnx`" + (" + `.onnx.data`" if name in EXTERNAL else "")
        print(f"| {files} | {exp[name][0]} | {exp[name][1]}; IR {i['ir']} | {i['ops']} | {i['shape']} | "
              f"{100 * i['acc']:.2f} % | " + " | ".join(cols) + " |", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--only", nargs="*", help="build only these names")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--keras-only", action="store_true", help="(internal) build the keras files; run by the tf venv")
    ap.add_argument("--no-keras", action="store_true", help="leave the keras/tf2onnx files as they are")
    ap.add_argument("--tf-python", default=os.environ.get("ONNXCRIT_TF_PYTHON", "/tmp/tfvenv/bin/python"))
    ap.add_argument("--table", action="store_true", help="check every file, run onnxcrit, print README rows")
    ap.add_argument("--baseline", metavar="DIR", help="with --table: also run the onnxcrit package unpacked in DIR")
    ap.add_argument("--current", metavar="DIR", help="with --table: run the onnxcrit package unpacked in DIR "
                    "(e.g. `git archive HEAD onnxcrit | tar -x -C DIR`) instead of the venv's `onnxcrit`")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    only = set(args.only) if args.only else None
    if only:
        unknown = only - {n for n, _, _ in MANIFEST}
        if unknown:
            raise SystemExit(f"unknown names: {sorted(unknown)}")
    names = [n for n, _, _ in MANIFEST if only is None or n in only]
    if args.table:
        return table(out, names, args.baseline, args.current)
    if args.keras_only:
        return keras_main(out, only)
    t0 = time.perf_counter()
    torch_main(out, only, args.quiet)
    if not args.no_keras and (only is None or only & KERAS_NAMES):
        if os.path.exists(args.tf_python):
            cmd = [args.tf_python, os.path.abspath(__file__), "--keras-only", "--out", out]
            if only:
                cmd += ["--only", *sorted(only & KERAS_NAMES)]
            subprocess.run(cmd, check=True)
        else:
            print(f"no tensorflow python at {args.tf_python}: keras/tf2onnx files left as they are "
                  "(see the docstring for the venv)", file=sys.stderr)
    check_all(out, [n for n in names if os.path.exists(os.path.join(out, n + ".onnx"))])
    print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
