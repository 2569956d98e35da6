#!/usr/bin/env python
"""Build tests/data/branching/: small digits models whose graphs branch (residual Add, Concat, grouped convs).

The test corpus for branching-network support: ResNet basic blocks (identity and 1x1-downsample shortcuts, a
CIFAR-style ResNet-8), SqueezeNet fire modules (Concat of 1x1/3x3 expands; an all-conv head and a dense
head), MobileNet depthwise-separable blocks (Conv group = channels), an Inception block (Concat of three
branches, one of them a stride-1 MaxPool), a grouped (groups=2) conv net and an MLP with a residual Add.

Every model is really trained on scikit-learn's digits (8x8, /16 to [0, 1]; the stratified 1347/450 split
of tools/make_examples.py, seed 0) and reaches >= 90 % on the 450 held-out images.  Each ``NAME.onnx`` comes
with ``NAME_calib.npz`` (the first 20 training images of every class: 200) and ``NAME_eval.npz`` (the 450
held-out images); ``x`` is float32 shaped like the model's input with the batch axis first, ``y`` int64.
The data helpers (save_npz with fixed zip timestamps, the split, the calibration pick, onnxruntime runs) are
tools/make_published_patterns.py's; the training loop is benchmarks/models.py's ``fit`` (Adam, batch 32).

Exporters (torch 2.14.1, this venv): every model with the legacy TorchScript exporter
(``dynamo=False, opset_version=17``, ``do_constant_folding=True``: eval-mode BatchNorm is folded into the
Conv before it) with a dynamic batch axis ``batch``; the two ResNets without/with a downsample shortcut, the
all-conv SqueezeNet and the MobileNet also with the dynamo exporter (``dynamo=True``, its default opset 20, ``dynamic_shapes`` batch, external data in
``NAME.onnx.data``; the ``pkg.torch.onnx.stack_trace`` metadata is dropped because it holds absolute paths).
The dynamo exporter's graph optimizer folds BatchNorm into the Conv too, and writes global average pooling
plus flatten as ReduceMean + Reshape.

Checks for every file: ``onnx.checker.check_model(full_check=True)``; onnxruntime runs it at batch 450, 3 and
1 with the same results; its logits equal torch's within 1e-4 of the largest |logit|; held-out accuracy
>= 90 %; npz shapes and dtypes match the model input.

Deterministic: fixed seeds, one thread, deterministic algorithms, fixed zip timestamps; running it twice gives
the same bytes (check with ``sha256sum tests/data/branching/*``).  README.md is not written by the build; the
``--readme`` mode checks every file, runs ``onnxcrit optimize`` on each and rewrites it.

Usage: python -m tools.make_branching_models [--out DIR] [--only NAME ...] [--quiet]
       python -m tools.make_branching_models --readme   # check every file, run onnxcrit, write README.md
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
from tools.make_published_patterns import (  # noqa: E402  (no torch at import)
    CALIB_PER_CLASS, MIN_ACC, N_EVAL, calib_indices, load_split, ort_outputs, save_npz)

DEFAULT_OUT = os.path.join(ROOT, "tests", "data", "branching")
SEED = 0
OPSET = 17
REL_TOL = 1e-4  # |onnxruntime - torch| <= REL_TOL * max |torch logit|

# name -> (architecture, exporter).  The order is the README's.
LEGACY = "torch 2.14.1 legacy (`dynamo=False`, `do_constant_folding=True`)"
DYNAMO = "torch 2.14.1 dynamo (`dynamo=True`), external data"
MANIFEST = [
    ("torch_legacy_resnet_basic",
     "ResNet, 2 basic blocks without downsample (identity shortcuts): stem conv 1->8 3x3 + BN + ReLU, "
     "2 x [conv-BN-ReLU-conv-BN, + x, ReLU] (8 ch), GAP, fc 8->10", LEGACY),
    ("torch_dynamo_resnet_basic", "the same model (same weights) as `torch_legacy_resnet_basic`", DYNAMO),
    ("torch_legacy_resnet_downsample",
     "ResNet with a 1x1 downsample shortcut: stem conv 1->8 + BN + ReLU, block 8->16 stride 2 (shortcut "
     "conv 1x1 stride 2 + BN), block 16->16 (identity), GAP, fc 16->10", LEGACY),
    ("torch_dynamo_resnet_downsample", "the same model (same weights) as `torch_legacy_resnet_downsample`",
     DYNAMO),
    ("torch_legacy_resnet8",
     "CIFAR-style ResNet-8: stem conv 1->8 + BN + ReLU, stages 8/16/32 of one basic block each (stride 1/2/2; "
     "the 16 and 32 stages with conv 1x1 + BN downsample shortcuts), GAP, fc 32->10", LEGACY),
    ("torch_legacy_squeezenet_allconv",
     "SqueezeNet fire modules, all-conv head: stem conv 1->16 + ReLU, fire(s4, e8+8), MaxPool 2, "
     "fire(s8, e16+16), conv 1x1 32->10, GAP, flatten (fire = squeeze 1x1 + ReLU -> [expand 1x1 + ReLU, "
     "expand 3x3 + ReLU] -> Concat on channels)", LEGACY),
    ("torch_dynamo_squeezenet_allconv",
     "the architecture, seed and training of `torch_legacy_squeezenet_allconv`; its own weights (training "
     "here did not reproduce the committed legacy file's bytes)", DYNAMO),
    ("torch_legacy_squeezenet_dense",
     "the same fire body (trained separately), dense head: MaxPool 2, flatten, fc 128->10", LEGACY),
    ("torch_legacy_mobilenet_dwsep",
     "MobileNet depthwise-separable: stem conv 1->16 + BN + ReLU, [depthwise 3x3 (groups 16) + BN + ReLU, "
     "pointwise 1x1 16->32 + BN + ReLU], [depthwise 3x3 stride 2 (groups 32) + BN + ReLU, pointwise 32->32 + "
     "BN + ReLU], GAP, fc 32->10", LEGACY),
    ("torch_dynamo_mobilenet_dwsep",
     "the architecture, seed and training of `torch_legacy_mobilenet_dwsep`; its own weights (training here "
     "did not reproduce the committed legacy file's bytes)", DYNAMO),
    ("torch_legacy_inception",
     "Inception block: stem conv 1->16 + ReLU, MaxPool 2, branches [1x1 16->8], [1x1 16->8 -> 3x3 8->16], "
     "[MaxPool 3x3 stride 1 pad 1 -> 1x1 16->8] (each conv + ReLU), Concat on channels (32), GAP, fc 32->10",
     LEGACY),
    ("torch_legacy_grouped_conv",
     "grouped conv (groups=2, not depthwise): conv 1->8 + ReLU, conv 8->16 groups 2 + ReLU, MaxPool 2, "
     "conv 16->16 groups 2 + ReLU, MaxPool 2, flatten, fc 64->10", LEGACY),
    ("torch_legacy_mlp_residual",
     "MLP with a residual Add: fc 64->32 + ReLU = h, fc 32->32 + ReLU, fc 32->32, + h, ReLU, fc 32->10",
     LEGACY),
]
# the Keras 3 / tf2onnx files: written by tools/make_branching_keras.py in a tensorflow venv, checked and listed here
from tools.make_branching_keras import MANIFEST as KERAS_MANIFEST  # noqa: E402  (no tensorflow at import)

MANIFEST += [(name, arch, exporter) for name, (arch, exporter, _) in KERAS_MANIFEST.items()]
NAMES = [n for n, _, _ in MANIFEST]
EXTERNAL = {n for n in NAMES if n.startswith("torch_dynamo")}


# --------------------------------------------------------------------------
# training and export
# --------------------------------------------------------------------------
def architectures() -> dict:
    """Model group -> (factory, input shape, seed, lr, epochs, names exported from it).  Factories build untrained
    torch modules (the README counts their parameters with them)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def conv_bn(cin, cout, k=3, stride=1, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout))

    class BasicBlock(nn.Module):
        """torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(self, stem, blocks):
            super().__init__()
            self.conv1 = nn.Conv2d(1, stem, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            chans = [stem] + [c for c, _ in blocks]
            self.layers = nn.Sequential(*[BasicBlock(a, b, s) for a, (b, s) in zip(chans, blocks)])
            self.fc = nn.Linear(chans[-1], 10)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = self.layers(x)
            x = F.adaptive_avg_pool2d(x, 1)
            return self.fc(torch.flatten(x, 1))

    class Fire(nn.Module):
        def __init__(self, cin, squeeze, expand):
            super().__init__()
            self.squeeze = nn.Conv2d(cin, squeeze, 1)
            self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
            self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

        def forward(self, x):
            x = torch.relu(self.squeeze(x))
            return torch.cat([torch.relu(self.expand1x1(x)), torch.relu(self.expand3x3(x))], 1)

    class SqueezeNet(nn.Module):
        def __init__(self, dense_head):
            super().__init__()
            self.dense_head = dense_head
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.fire1 = Fire(16, 4, 8)
            self.fire2 = Fire(16, 8, 16)
            if dense_head:
                self.fc = nn.Linear(32 * 2 * 2, 10)
            else:
                self.classifier = nn.Conv2d(32, 10, 1)

        def forward(self, x):
            x = torch.relu(self.conv1(x))                  # 16 x 8 x 8
            x = F.max_pool2d(self.fire1(x), 2)             # 16 x 4 x 4
            x = self.fire2(x)                              # 32 x 4 x 4
            if self.dense_head:
                return self.fc(torch.flatten(F.max_pool2d(x, 2), 1))
            return torch.flatten(F.adaptive_avg_pool2d(self.classifier(x), 1), 1)

    class MobileNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(1, 16)
            self.dw1, self.pw1 = conv_bn(16, 16, 3, 1, groups=16), conv_bn(16, 32, 1)
            self.dw2, self.pw2 = conv_bn(32, 32, 3, 2, groups=32), conv_bn(32, 32, 1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            for layer in (self.stem, self.dw1, self.pw1, self.dw2, self.pw2):
                x = torch.relu(layer(x))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    class Inception(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 16, 3, padding=1)
            self.b1 = nn.Conv2d(16, 8, 1)
            self.b2_reduce, self.b2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 3, padding=1)
            self.b3 = nn.Conv2d(16, 8, 1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = F.max_pool2d(torch.relu(self.stem(x)), 2)  # 16 x 4 x 4
            b1 = torch.relu(self.b1(x))
            b2 = torch.relu(self.b2(torch.relu(self.b2_reduce(x))))
            b3 = torch.relu(self.b3(F.max_pool2d(x, 3, stride=1, padding=1)))
            x = torch.cat([b1, b2, b3], 1)                 # 32 x 4 x 4
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    class GroupedConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1, groups=2)
            self.conv3 = nn.Conv2d(16, 16, 3, padding=1, groups=2)
            self.fc = nn.Linear(16 * 2 * 2, 10)

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
            x = F.max_pool2d(torch.relu(self.conv3(x)), 2)
            return self.fc(torch.flatten(x, 1))

    class ResidualMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 32)
            self.fc4 = nn.Linear(32, 10)

        def forward(self, x):
            h = torch.relu(self.fc1(x))
            h = torch.relu(self.fc3(torch.relu(self.fc2(h))) + h)
            return self.fc4(h)

    IMG, VEC = (-1, 1, 8, 8), (-1, 64)
    return {
        "resnet_basic": (lambda: ResNet(8, [(8, 1), (8, 1)]), IMG, SEED + 1, 3e-3, 30,
                         ["torch_legacy_resnet_basic", "torch_dynamo_resnet_basic"]),
        "resnet_downsample": (lambda: ResNet(8, [(16, 2), (16, 1)]), IMG, SEED + 2, 3e-3, 30,
                              ["torch_legacy_resnet_downsample", "torch_dynamo_resnet_downsample"]),
        "resnet8": (lambda: ResNet(8, [(8, 1), (16, 2), (32, 2)]), IMG, SEED + 3, 3e-3, 30,
                    ["torch_legacy_resnet8"]),
        "squeezenet_allconv": (lambda: SqueezeNet(dense_head=False), IMG, SEED + 4, 3e-3, 45,
                               ["torch_legacy_squeezenet_allconv", "torch_dynamo_squeezenet_allconv"]),
        "squeezenet_dense": (lambda: SqueezeNet(dense_head=True), IMG, SEED + 5, 3e-3, 30,
                             ["torch_legacy_squeezenet_dense"]),
        "mobilenet_dwsep": (MobileNet, IMG, SEED + 6, 3e-3, 30, ["torch_legacy_mobilenet_dwsep",
                                                                  "torch_dynamo_mobilenet_dwsep"]),
        "inception": (Inception, IMG, SEED + 7, 3e-3, 45, ["torch_legacy_inception"]),
        "grouped_conv": (GroupedConv, IMG, SEED + 8, 3e-3, 30, ["torch_legacy_grouped_conv"]),
        "mlp_residual": (ResidualMLP, VEC, SEED + 9, 1e-3, 30, ["torch_legacy_mlp_residual"]),
    }


def build(out: str, only: set[str] | None, quiet: bool) -> None:
    import torch

    from benchmarks.models import fit  # the training loop the benchmarks and tools/make_examples.py share

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for cat in (DeprecationWarning, UserWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=cat)
    x_tr, y_tr, x_te, y_te = load_split()

    def want(*names):
        return only is None or any(n in only for n in names)

    def p(name):
        return os.path.join(out, name + ".onnx")

    def train(model, shape, seed, epochs, lr):
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        fit(model, torch.from_numpy(x_tr.reshape(shape)), torch.from_numpy(y_tr), epochs, batch_size=32,
            seed=seed, lr=lr)
        model.eval()
        if not quiet:
            print(f"  trained {type(model).__name__} ({sum(q.numel() for q in model.parameters())} params, "
                  f"{epochs} epochs) in {time.perf_counter() - t0:.1f}s", flush=True)
        return model

    def example(shape):
        return torch.from_numpy(np.ascontiguousarray(x_te[:1].reshape(shape)))

    def legacy(model, shape, name):
        torch.onnx.export(model.eval(), (example(shape),), p(name), dynamo=False, opset_version=OPSET,
                          do_constant_folding=True, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})

    def dynamo(model, shape, name):
        ctx = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
        with ctx:
            prog = torch.onnx.export(model.eval(), (example(shape),), None, dynamo=True, external_data=True,
                                     input_names=["input"], output_names=["logits"],
                                     dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        for node in prog.model.graph.all_nodes():  # absolute paths and line numbers: not reproducible
            node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
        if os.path.exists(p(name) + ".data"):
            os.remove(p(name) + ".data")
        prog.save(p(name), external_data=True)

    def data(name, shape):
        ci = calib_indices(y_tr)
        assert len(ci) == 10 * CALIB_PER_CLASS == 200
        save_npz(os.path.join(out, name + "_calib.npz"), x=np.ascontiguousarray(x_tr[ci].reshape(shape)),
                 y=y_tr[ci])
        save_npz(os.path.join(out, name + "_eval.npz"), x=np.ascontiguousarray(x_te.reshape(shape)), y=y_te)

    def check(name, model, shape):
        """onnxruntime logits == torch logits (relative to the logit scale) on the held-out images."""
        x = np.ascontiguousarray(x_te.reshape(shape))
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = ort_outputs(p(name), x)
        scale = float(np.abs(ref).max())
        err = float(np.abs(ref - got).max())
        acc = float((got.argmax(1) == y_te).mean())
        print(f"{name}: held-out acc {acc:.4f}, |onnxruntime - torch| max {err:.1e} (logit scale {scale:.1f})",
              flush=True)
        if not err <= REL_TOL * scale or acc < MIN_ACC:
            raise SystemExit(f"{name}: check failed")

    def emit(names, model, shape):
        for name in names:
            if not want(name):
                continue
            if name.startswith("torch_dynamo"):
                dynamo(model, shape, name)
            else:
                legacy(model, shape, name)
            data(name, shape)
            check(name, model, shape)

    for factory, shape, seed, lr, epochs, names in architectures().values():
        if want(*names):
            torch.manual_seed(seed)  # the initial weights
            emit(names, train(factory(), shape, seed=seed, epochs=epochs, lr=lr), shape)


# --------------------------------------------------------------------------
# checks and the README
# --------------------------------------------------------------------------
def op_summary(model) -> str:
    """Op counts in order of first appearance, e.g. `Conv x5, Relu x5, Add x2, GlobalAveragePool, Gemm`."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return ", ".join(op if k == 1 else f"{op} x{k}" for op, k in counts.items())


def merges(model) -> str:
    """The nodes that join branches (two or more inputs computed from the graph input, with their producers),
    the tensors that feed several nodes (split: producer -> consumers) and the Conv nodes with group > 1."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consts = {i.name for i in model.graph.initializer}
    live = {model.graph.input[0].name}
    for n in model.graph.node:  # tensors that depend on the input (not constant-shape chains)
        if n.op_type not in ("Shape", "Constant") and any(i in live for i in n.input):
            live.update(n.output)
    found: dict[str, int] = {}
    for n in model.graph.node:
        ins = [i for i in n.input if i in live and i not in consts]
        if len(ins) >= 2:
            key = f"{n.op_type}({', '.join(producer[i].op_type if i in producer else 'input' for i in ins)})"
            if n.op_type == "Concat":
                key = key[:-1] + f"; axis {next(a.i for a in n.attribute if a.name == 'axis')})"
            found[key] = found.get(key, 0) + 1
    parts = [k if v == 1 else f"{k} x{v}" for k, v in found.items()]
    users: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in dict.fromkeys(n.input):
            if i in live:
                users.setdefault(i, []).append(n.op_type)
    splits: dict[str, int] = {}
    for t, ops in users.items():
        if len(ops) >= 2:
            key = f"{producer[t].op_type if t in producer else 'input'} -> [{', '.join(ops)}]"
            splits[key] = splits.get(key, 0) + 1
    parts += ["split " + (k if v == 1 else f"{k} x{v}") for k, v in splits.items()]
    groups: dict[int, int] = {}
    for n in model.graph.node:
        if n.op_type == "Conv":
            g = next((a.i for a in n.attribute if a.name == "group"), 1)
            if g > 1:
                groups[g] = groups.get(g, 0) + 1
    parts += [f"Conv group={g}" + (f" x{k}" if k > 1 else "") for g, k in sorted(groups.items())]
    return "; ".join(parts) or "none"


def check_all(out: str, names) -> dict:
    """onnx.checker (full), npz shapes, onnxruntime at batch 450/3/1, accuracy; returns name -> info."""
    import onnx
    from onnx import numpy_helper

    info = {}
    for name in names:
        path = os.path.join(out, name + ".onnx")
        onnx.checker.check_model(path, full_check=True)
        m = onnx.load(path, load_external_data=False)
        full = onnx.load(path)
        cal, ev = np.load(os.path.join(out, name + "_calib.npz")), np.load(os.path.join(out, name + "_eval.npz"))
        dims = [d.dim_value if d.HasField("dim_value") else None for d in m.graph.input[0].type.tensor_type.shape.dim]
        assert dims[0] is None, (name, dims)
        for arr, n in ((cal, 10 * CALIB_PER_CLASS), (ev, N_EVAL)):
            assert arr["x"].dtype == np.float32 and arr["y"].dtype == np.int64, name
            assert arr["x"].shape[0] == n and list(arr["x"].shape[1:]) == dims[1:], (name, arr["x"].shape, dims)
        logits = ort_outputs(path, ev["x"])
        for b in (3, 1):
            assert np.allclose(ort_outputs(path, ev["x"][:b]), logits[:b], rtol=0, atol=1e-5), (name, b)
        acc = float((logits.argmax(1) == ev["y"]).mean())
        if acc < MIN_ACC:
            raise SystemExit(f"{name}: accuracy {acc:.4f} < {MIN_ACC}")
        weights = sum(int(np.prod(t.dims)) for t in full.graph.initializer
                      if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE))
        weights += sum(numpy_helper.to_array(a.t).size for n in full.graph.node if n.op_type == "Constant"
                       for a in n.attribute if a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT)
        size = os.path.getsize(path) + (os.path.getsize(path + ".data") if os.path.exists(path + ".data") else 0)
        info[name] = dict(ops=" ".join(n.op_type for n in m.graph.node), summary=op_summary(m), merges=merges(m),
                          acc=acc, weights=weights, size=size, ir=m.ir_version,
                          opset=",".join(f"{o.domain + ':' if o.domain else ''}{o.version}" for o in m.opset_import))
    return info


def run_onnxcrit(out: str, name: str, timeout: int = 900) -> tuple[int, str]:
    """`onnxcrit optimize NAME.onnx --data NAME_calib.npz --eval-data NAME_eval.npz --no-latency`, as typed,
    in a scratch copy of the files (so a run that writes NAME.pruned.onnx leaves `out` alone):
    (exit code, what it printed: stdout then stderr, blank lines dropped)."""
    files = [name + s for s in (".onnx", "_calib.npz", "_eval.npz")]
    if os.path.exists(os.path.join(out, name + ".onnx.data")):
        files.append(name + ".onnx.data")
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            shutil.copy(os.path.join(out, f), tmp)
        exe = os.path.join(ROOT, ".venv", "bin", "onnxcrit")
        # a worktree without its own .venv: this interpreter, with this checkout's package first on the path
        cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "onnxcrit.cli"]
        cmd += ["optimize", name + ".onnx", "--data", name + "_calib.npz", "--eval-data", name + "_eval.npz",
                "--no-latency"]
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        try:
            r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return -1, f"(killed after {timeout} s)"
    lines = [ln.rstrip() for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    return r.returncode, "\n".join(lines) or "(nothing printed)"


README_HEAD = """\
# tests/data/branching: branching networks (residual Add, Concat, grouped and depthwise convs)

Written by `python -m tools.make_branching_models` and `tools.make_branching_keras` (torch 2.14.1, onnx {onnx}, onnxruntime {ort},
onnxscript {onnxscript}); this file by `python -m tools.make_branching_models --readme`, which checks every
file again and runs onnxcrit on it.  The build is byte-deterministic: running it twice gives the same files
(`sha256sum tests/data/branching/*`).

Every model is trained on scikit-learn's digits (8x8 /16; the stratified 1347/450 split of
tools/make_examples.py, seed 0; Adam, batch 32, 30 epochs (45 for the SqueezeNet all-conv and the
Inception nets), lr 3e-3 (1e-3 for the MLP)).  Next to each `NAME.onnx` (and `NAME.onnx.data` for the
dynamo files): `NAME_calib.npz` (`x`, `y`: the first 20 training images of every class, 200) and
`NAME_eval.npz` (`x`, `y`: the 450 held-out images); `x` is float32 shaped like the model input with the
batch first (`[N, 1, 8, 8]`, or `[N, 64]` for the MLP), `y` int64.  Input `input`, output `logits` [N, 10]
(raw logits), batch axis symbolic (`batch`).

Checked for every file: `onnx.checker.check_model(path, full_check=True)`; onnxruntime gives the same
logits at batch 450, 3 and 1; onnxruntime's logits equal torch's within 1e-4 of the largest |logit|;
accuracy below is onnxruntime's on `NAME_eval.npz` (>= 90 %).  Both exporters fold eval-mode BatchNorm
into the Conv before it (legacy: `do_constant_folding=True`, the default; dynamo: its graph optimizer), so
no file has a BatchNormalization node: each "conv + BN" is one Conv with a bias.  The dynamo files write
global average pooling + flatten as ReduceMean + Reshape, the legacy ones as GlobalAveragePool + Flatten.

The `keras3_*` files are written by `python -m tools.make_branching_keras`, run in a separate venv with
tensorflow-cpu 2.21.0, keras 3.15.1 and tf2onnx 1.17.0 (Keras 3 model in a `tf.function` -> tf2onnx
`from_function`, opset 17; Adam 3e-3, batch 32, 30 epochs): input `input` is NHWC `[N, 8, 8, 1]` (its
batch axis `unk__N`), the NHWC -> NCHW change is one `Reshape` (one channel: a Transpose would move no data),
the output keeps tf2onnx's name `Identity:0`, and the opset imports list an unused `ai.onnx.ml`.  tf2onnx
folds BatchNorm into the Conv before it, except after a DepthwiseConv2D, where it stays as `Mul` + `Add` of
`[1, C, 1, 1]` constants; Dense is `MatMul` + `Add`, global average pooling `GlobalAveragePool` + `Squeeze`
(axes [2, 3]); a stride-2 'same' conv gets asymmetric pads [0, 0, 1, 1]; graph order differs from the
Keras layer order (a shortcut conv after the block's convs, expand 3x3 before expand 1x1).  The legacy
SqueezeNet (all-conv) and MobileNet files were built on another machine: rebuilding them here does not give
their bytes (the SqueezeNet trains to 94.22 % instead of 94.67 %), so their dynamo twins, built here later,
have their own weights.

*merges / splits* lists the nodes that join two computed tensors (with the op types that produce their
inputs), the tensors read by several nodes (`split PRODUCER -> [CONSUMERS]`) and the Conv nodes with
group > 1.  *params*: torch's trainable parameters; *weights in file*: float elements of the initializers
(fewer where BatchNorm was folded: a conv + BN keeps one weight and one bias).  *onnxcrit today*: what
`onnxcrit optimize NAME.onnx --data NAME_calib.npz --eval-data NAME_eval.npz --no-latency` printed (stdout
and stderr, all of it) and its exit code, run from the working tree at commit {commit}.

"""
COLUMNS = ["file", "architecture", "exporter, opset", "node sequence summary", "merges / splits",
           "params (torch) / weights in file", "size", "accuracy (onnxruntime, eval)", "onnxcrit today"]
README_HEAD += "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|\n"


def readme(out: str) -> int:
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    params = trained_params()
    info = check_all(out, NAMES)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "?"
    rows = []
    for name, arch, exporter in MANIFEST:
        i = info[name]
        rc, said = run_onnxcrit(out, name)
        print(f"{name}: exit {rc}: {said}", flush=True)
        said = said.replace("|", "\\|").replace("`", "'").replace("\n", "<br>")
        files = f"`{name}.onnx`" + (" + `.onnx.data`" if name in EXTERNAL else "")
        rows.append(f"| {files} | {arch} | {exporter}; opset {i['opset']}, IR {i['ir']} | "
                    f"{i['summary']} | {i['merges']} | {params[name]} / {i['weights']} | {i['size']:,} B | "
                    f"{100 * i['acc']:.2f} % | exit {rc}: `{said}` |")
    seqs = ["", "## Node sequences (graph order)", ""]
    seqs += [f"- `{n}`: {info[n]['ops']}" for n in NAMES]
    text = README_HEAD.format(onnx=onnx.__version__, ort=onnxruntime.__version__, onnxscript=onnxscript.__version__,
                              commit=commit)
    assert torch.__version__.startswith("2.14.1"), torch.__version__
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text + "\n".join(rows) + "\n" + "\n".join(seqs) + "\n")
    print(f"wrote {os.path.join(out, 'README.md')}")
    return 0


def trained_params() -> dict:
    """name -> torch's trainable parameter count (untrained modules of the same architectures)."""
    counts = {}
    for factory, _, _, _, _, names in architectures().values():
        n = sum(q.numel() for q in factory().parameters() if q.requires_grad)
        counts.update({name: n for name in names})
    counts.update({name: params for name, (_, _, params) in KERAS_MANIFEST.items()})
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--only", nargs="*", help="build only these names")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--readme", action="store_true", help="check every file, run onnxcrit, write README.md")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    if args.readme:
        return readme(out)
    only = set(args.only) if args.only else None
    if only and only - set(NAMES):
        raise SystemExit(f"unknown names: {sorted(only - set(NAMES))}")
    t0 = time.perf_counter()
    build(out, only, args.quiet)
    check_all(out, [n for n in NAMES if only is None or n in only])
    print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
