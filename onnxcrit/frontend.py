"""ONNX -> IR: load a model, recognise a feed-forward ReLU chain, fold BatchNorm, refuse the rest.

Every refusal is an `UnsupportedModelError` (or `InputError`) with one line naming the op, the node and why.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import InputError, UnsupportedModelError
from .ir import (KINDS, LINEAR_KINDS, Add, Affine, AvgPool, Concat, Conv, Dense, MaxPool, Network, ParamRef, Relu,
                 Reshape, Transpose)

# Ops after the logits that onnxcrit keeps untouched and ignores (scikit-learn's exporter adds the last few).
# Relu, Softmax, Sigmoid are monotone per logit or order-preserving, so the logits underneath decide the class.
TAIL_OPS = {"Softmax", "LogSoftmax", "ArgMax", "Identity", "Cast", "ArrayFeatureExtractor", "ZipMap",
            "Reshape", "Flatten", "Sigmoid", "Relu"}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}


def node_label(node: onnx.NodeProto, index: int | None = None) -> str:
    """How messages name a node: its op type and name."""
    name = node.name or (f"#{index}" if index is not None else "(unnamed)")
    return f"{node.op_type} node '{name}'"


def load_model(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Read an ONNX file (external data resolved next to it) or take a ModelProto as it is.

    Raises InputError with one line when the file is missing, not a file, empty or not ONNX.
    """
    if isinstance(source, onnx.ModelProto):
        return source
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for garbage input
        raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node and not model.graph.input:
        raise InputError(f"{path}: not an ONNX model (no graph found)")
    _load_external(model, path.parent, path)
    return model


def _load_external(model: onnx.ModelProto, base: Path, path: Path) -> None:
    for tensor in stored_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = base / info.get("location", "")
        if not location.is_file():
            raise InputError(f"{path}: external data file '{info.get('location', '')}' of tensor "
                             f"'{tensor.name}' not found next to the model")
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(base))
    except Exception as exc:
        raise InputError(f"{path}: cannot read external data ({exc})") from None


def stored_tensors(model: onnx.ModelProto):
    """Initializers and Constant/attribute tensors of the main graph (where weights can live)."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Every tensor whose value is known without running the model: initializers and Constant outputs."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        attr = node.attribute[0] if node.attribute else None
        if attr is None:
            continue
        if attr.name == "value":
            values[node.output[0]] = numpy_helper.to_array(attr.t)
        elif attr.name == "value_float":
            values[node.output[0]] = np.array(attr.f, dtype=np.float32)
        elif attr.name == "value_floats":
            values[node.output[0]] = np.array(list(attr.floats), dtype=np.float32)
        elif attr.name == "value_int":
            values[node.output[0]] = np.array(attr.i, dtype=np.int64)
        elif attr.name == "value_ints":
            values[node.output[0]] = np.array(list(attr.ints), dtype=np.int64)
    return values


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _decode(value):
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class _Walk:
    """State while walking the chain from the input to the logits."""

    model: onnx.ModelProto
    consts: dict[str, np.ndarray]
    consumers: dict[str, list[int]]
    opset: int
    layers: list = field(default_factory=list)
    shape: tuple[int, ...] = ()
    tensor: str = ""
    open_linear: dict = field(default_factory=dict)  # IR value -> a linear layer's output, nothing but bias/BN after
    visited: set[int] = field(default_factory=set)
    batch: int | None = None  # a fixed batch size from the input's first dimension, if any
    computed_targets: dict = field(default_factory=dict)  # Reshape target tensor -> its value, when computed
    # ONNX tensor -> (the IR value it is: a layer output name or the input's name, its per-sample shape)
    values: dict = field(default_factory=dict)
    source: str = ""  # the IR value the current node reads
    producer: dict = field(default_factory=dict)  # IR value name -> position of the layer writing it

    def const(self, name: str, node: onnx.NodeProto, what: str) -> np.ndarray:
        if name not in self.consts:
            raise UnsupportedModelError(f"{node_label(node)}: its {what} '{name}' is computed, not a constant")
        return self.consts[name]

    def fail(self, node: onnx.NodeProto, why: str):
        raise UnsupportedModelError(f"{node_label(node)}: {why}")

    def open_layer(self, node: onnx.NodeProto, what: str):
        """The linear layer whose output this node reads, when nothing but bias/BatchNorm followed it yet and no
        other node reads it (so a bias or BatchNorm can be folded into it); else a refusal naming `what`."""
        pos = self.producer.get(self.source)
        layer = self.layers[pos] if pos is not None else None
        if layer is None or layer.kind not in LINEAR_KINDS or not self.open_linear.get(self.source):
            self.fail(node, what)
        if len(self.consumers.get(self.tensor, [])) != 1:
            self.fail(node, f"folds into '{layer.name}', whose output '{self.tensor}' is also read by other nodes")
        return layer


def _pads_2d(walk: _Walk, node: onnx.NodeProto, attrs: dict, kernel, strides, dilations) -> tuple[int, ...]:
    auto = _decode(attrs.get("auto_pad", "NOTSET"))
    _, h, w = walk.shape
    if auto in ("NOTSET", ""):
        pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
        if len(pads) != 4:
            walk.fail(node, f"pads {list(pads)} are not 2-D")
        return pads  # ONNX order (begin_h, begin_w, end_h, end_w) == (top, left, bottom, right)
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip((h, w), kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if auto == "SAME_UPPER" else (big, small))
        return (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    walk.fail(node, f"auto_pad '{auto}' is not an ONNX value")


def _need_rank(walk: _Walk, node: onnx.NodeProto, rank: int, what: str) -> None:
    if len(walk.shape) != rank:
        walk.fail(node, f"expects {what}, got per-sample shape {list(walk.shape)}")


def _add_linear(walk: _Walk, layer) -> None:
    walk.layers.append(layer)
    walk.shape = layer.out_shape


def _on_gemm(walk: _Walk, node: onnx.NodeProto) -> None:
    attrs = _attrs(node)
    if node.input[0] != walk.tensor:
        walk.fail(node, "the activation must be input A (weights as A are not supported)")
    if attrs.get("transA", 0):
        walk.fail(node, "transA=1 would treat the batch axis as features")
    _need_rank(walk, node, 1, "a flat input [N, features]")
    b = walk.const(node.input[1], node, "weight B").astype(np.float64)
    trans_b = bool(attrs.get("transB", 0))
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if b.ndim != 2:
        walk.fail(node, f"weight '{node.input[1]}' has shape {list(b.shape)}, expected 2-D")
    weight = alpha * (b if trans_b else b.T)  # [out, in]
    if weight.shape[1] != walk.shape[0]:
        walk.fail(node, f"weight '{node.input[1]}' {list(b.shape)} does not fit input width {walk.shape[0]}")
    units = weight.shape[0]
    out_refs = [ParamRef(node.input[1], 0 if trans_b else 1)]
    bias = np.zeros(units)
    if len(node.input) > 2 and node.input[2]:
        c = walk.const(node.input[2], node, "bias C").astype(np.float64)
        try:
            bias = beta * np.broadcast_to(c, (1, units)).reshape(units).copy()
        except ValueError:
            walk.fail(node, f"bias '{node.input[2]}' {list(c.shape)} does not broadcast to [{units}]")
        if c.ndim >= 1 and c.shape[-1] == units and c.size == units:
            out_refs.append(ParamRef(node.input[2], c.ndim - 1))
    _add_linear(walk, Dense(name=node.name or node.output[0], weight=weight, bias=bias, in_shape=walk.shape,
                            out_refs=tuple(out_refs), in_refs=(ParamRef(node.input[1], 1 if trans_b else 0),),
                            nodes=(node.name,)))


def _on_matmul(walk: _Walk, node: onnx.NodeProto) -> None:
    if node.input[0] != walk.tensor:
        walk.fail(node, "the activation must be the first operand (x @ W)")
    _need_rank(walk, node, 1, "a flat input [N, features]")
    w = walk.const(node.input[1], node, "weight").astype(np.float64)
    if w.ndim != 2 or w.shape[0] != walk.shape[0]:
        walk.fail(node, f"weight '{node.input[1]}' {list(w.shape)} does not fit input width {walk.shape[0]}")
    _add_linear(walk, Dense(name=node.name or node.output[0], weight=w.T.copy(), bias=np.zeros(w.shape[1]),
                            in_shape=walk.shape, out_refs=(ParamRef(node.input[1], 1),),
                            in_refs=(ParamRef(node.input[1], 0),), nodes=(node.name,)))


def _on_conv(walk: _Walk, node: onnx.NodeProto) -> None:
    attrs = _attrs(node)
    if node.input[0] != walk.tensor:
        walk.fail(node, "the activation must be input X")
    _need_rank(walk, node, 3, "a 2-D image input [N, C, H, W]")
    w = walk.const(node.input[1], node, "weight").astype(np.float64)
    if w.ndim != 4:
        walk.fail(node, f"weight '{node.input[1]}' has shape {list(w.shape)}: only 2-D convolutions are supported")
    group = int(attrs.get("group", 1))
    if group < 1 or walk.shape[0] % group or w.shape[0] % group:
        walk.fail(node, f"group={group} does not divide {walk.shape[0]} input and {w.shape[0]} output channels")
    if w.shape[1] * group != walk.shape[0]:
        walk.fail(node, f"weight '{node.input[1]}' {list(w.shape)} does not fit {walk.shape[0]} input channels"
                        f"{f' in {group} groups' if group > 1 else ''}")
    kernel = tuple(int(k) for k in attrs.get("kernel_shape", w.shape[2:]))
    if kernel != tuple(w.shape[2:]):
        walk.fail(node, f"kernel_shape {list(kernel)} differs from the weight's {list(w.shape[2:])}")
    strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
    dilations = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
    pads = _pads_2d(walk, node, attrs, kernel, strides, dilations)
    out_refs = [ParamRef(node.input[1], 0)]
    bias = np.zeros(w.shape[0])
    if len(node.input) > 2 and node.input[2]:
        bias = walk.const(node.input[2], node, "bias").astype(np.float64).reshape(-1).copy()
        out_refs.append(ParamRef(node.input[2], 0))
    # a depthwise conv reads input channel c with weight row c; a group-1 conv with weight column c
    depthwise = group > 1 and group == walk.shape[0] == w.shape[0]
    layer = Conv(name=node.name or node.output[0], weight=w, bias=bias, in_shape=walk.shape, strides=strides,
                 pads=pads, dilations=dilations, out_refs=tuple(out_refs),
                 in_refs=(ParamRef(node.input[1], 0 if depthwise else 1),), nodes=(node.name,), group=group)
    if min(layer.out_hw) < 1:
        walk.fail(node, f"output would be empty for input {list(walk.shape)}")
    _add_linear(walk, layer)


def _has_linear(walk: _Walk) -> bool:
    return any(layer.kind in LINEAR_KINDS for layer in walk.layers)


def _on_affine(walk: _Walk, node: onnx.NodeProto) -> None:
    """Sub/Div/Mul/Add of a constant before the first linear layer (input normalisation, Keras Rescaling)."""
    op = node.op_type
    if _has_linear(walk) and op == "Mul":
        return _fold_scale(walk, node)
    if _has_linear(walk):
        walk.fail(node, f"{op} of a constant is supported before the first Gemm/MatMul/Conv only (input "
                        "normalisation), not between layers")
    first = node.input[0] == walk.tensor
    other = node.input[1] if first else node.input[0]
    if other == walk.tensor:
        walk.fail(node, f"applies {op} to the activation and itself")
    c = walk.const(other, node, "operand").astype(np.float64)
    full = (1,) + walk.shape
    try:
        if np.broadcast_shapes(c.shape, full) != full:
            raise ValueError
    except ValueError:
        walk.fail(node, f"constant '{other}' {list(c.shape)} does not broadcast to the input's per-sample shape "
                        f"{list(walk.shape)}")
    c = np.broadcast_to(c, full)[0]
    if op == "Add":
        scale, shift = np.ones_like(c), c
    elif op == "Sub":
        scale, shift = (np.ones_like(c), -c) if first else (-np.ones_like(c), c)
    elif op == "Mul":
        scale, shift = c, np.zeros_like(c)
    else:  # Div
        if not first:
            walk.fail(node, "divides a constant by the activation (not an affine map)")
        if np.any(c == 0):
            walk.fail(node, f"divides by constant '{other}', which has zero entries")
        scale, shift = 1.0 / c, np.zeros_like(c)
    walk.layers.append(Affine(name=node.name or node.output[0], in_shape=walk.shape, scale=scale, shift=shift,
                              nodes=(node.name,)))


def _per_unit(layer, c: np.ndarray) -> int | None:
    """The axis of constant c that indexes layer's units when c is one value per unit (as a bias or a
    per-channel scale is written), else None."""
    units = layer.units
    if c.size != units:
        return None
    if isinstance(layer, Dense):
        return c.ndim - 1 if c.ndim in (1, 2) and c.shape[-1] == units else None
    return c.ndim - 3 if c.shape in ((units, 1, 1), (1, units, 1, 1)) else None


def _fold_scale(walk: _Walk, node: onnx.NodeProto) -> None:
    """Mul of a per-unit (or scalar) constant right after a linear layer: a BatchNormalization written as
    Mul + Add (tf2onnx), folded into the layer's weight and bias."""
    other = node.input[1] if node.input[0] == walk.tensor else node.input[0]
    if other == walk.tensor:
        walk.fail(node, "multiplies the activation by itself")
    layer = walk.open_layer(node, "Mul of a constant is supported right after a Gemm/MatMul/Conv (a per-unit "
                                  "scale) or before the first one (input normalisation)")
    c = walk.consts[other].astype(np.float64)
    axis = _per_unit(layer, c)
    if axis is None and c.size != 1:
        walk.fail(node, f"constant '{other}' {list(c.shape)} is not a per-unit scale of {layer.kind} layer "
                        f"'{layer.name}' with {layer.units} units")
    scale = np.full(layer.units, float(c.reshape(-1)[0])) if axis is None else c.reshape(layer.units)
    layer.weight = layer.weight * scale.reshape((-1,) + (1,) * (layer.weight.ndim - 1))
    layer.bias = layer.bias * scale
    if axis is not None:
        layer.out_refs = layer.out_refs + (ParamRef(other, axis),)
    layer.nodes = layer.nodes + (node.name,)


def _on_add(walk: _Walk, node: onnx.NodeProto) -> None:
    """Add of a constant right after a linear layer: its bias; before the first linear layer: normalisation."""
    if not _has_linear(walk):
        return _on_affine(walk, node)
    other = node.input[1] if node.input[0] == walk.tensor else node.input[0]
    if other == walk.tensor:
        walk.fail(node, "adds the activation to itself")
    layer = walk.open_layer(node, "adds a constant that is not the bias of a Gemm/MatMul/Conv")
    c = walk.consts[other].astype(np.float64)
    units = layer.units
    if isinstance(layer, Dense):
        ok = c.size == units and c.ndim in (1, 2) and c.shape[-1] == units
        axis = c.ndim - 1
    else:
        ok = c.size == units and (c.shape in ((units, 1, 1), (1, units, 1, 1)))
        axis = c.ndim - 3
    if not ok and c.size == 1:
        layer.bias = layer.bias + float(c.reshape(()))
    elif ok:
        layer.bias = layer.bias + c.reshape(units)
        layer.out_refs = layer.out_refs + (ParamRef(other, axis),)
    else:
        walk.fail(node, f"constant '{other}' {list(c.shape)} is not a per-unit bias of {layer.kind} layer "
                        f"'{layer.name}' with {units} units")
    layer.nodes = layer.nodes + (node.name,)


def _on_merge(walk: _Walk, node: onnx.NodeProto, acts: list[str]) -> None:
    """Add / Sum of activations (a residual connection), Concat of activations on the channel axis."""
    shapes = [walk.values[t][1] for t in acts]
    sources = tuple(walk.values[t][0] for t in acts)
    name = node.name or node.output[0]
    if node.op_type in ("Add", "Sum"):
        if len(acts) != len(node.input) or any(sh != shapes[0] for sh in shapes):
            walk.fail(node, "adds tensors of different per-sample shapes "
                            f"({', '.join(str(list(sh)) for sh in shapes)}) or a constant to a sum of activations")
        walk.layers.append(Add(name=name, in_shape=shapes[0], nodes=(node.name,), inputs=sources))
    elif node.op_type == "Concat":
        rank = len(shapes[0]) + 1
        axis = int(_attrs(node).get("axis", 1))
        axis = axis + rank if axis < 0 else axis
        if len(acts) != len(node.input):
            walk.fail(node, "concatenates constants with activations")
        if axis != 1:
            walk.fail(node, f"concatenates on axis {axis}; only the channel axis (1) is supported")
        if any(len(sh) != len(shapes[0]) or sh[1:] != shapes[0][1:] for sh in shapes):
            walk.fail(node, f"concatenates per-sample shapes {', '.join(str(list(sh)) for sh in shapes)}")
        walk.layers.append(Concat(name=name, in_shapes=tuple(shapes), nodes=(node.name,), inputs=sources))
    else:
        walk.fail(node, f"combines several activations with {node.op_type} ({_why_unsupported(node.op_type)})")
    walk.shape = walk.layers[-1].out_shape


def _on_batchnorm(walk: _Walk, node: onnx.NodeProto) -> None:
    attrs = _attrs(node)
    layer = walk.open_layer(node, "BatchNormalization must directly follow a Conv, Gemm or MatMul to be folded")
    if attrs.get("training_mode", 0):
        walk.fail(node, "training_mode=1 (training-form BatchNormalization)")
    if any(out for out in node.output[1:]):
        walk.fail(node, "its running statistics outputs are used (training form)")
    scale, beta, mean, var = (walk.const(name, node, what).astype(np.float64).reshape(-1)
                              for name, what in zip(node.input[1:5], ("scale", "B", "mean", "var")))
    if not all(v.size == layer.units for v in (scale, beta, mean, var)):
        walk.fail(node, f"parameters do not have {layer.units} entries")
    g = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    layer.weight = layer.weight * g.reshape((-1,) + (1,) * (layer.weight.ndim - 1))
    layer.bias = (layer.bias - mean) * g + beta
    layer.out_refs = layer.out_refs + tuple(ParamRef(name, 0) for name in node.input[1:5])
    layer.nodes = layer.nodes + (node.name,)


def _on_relu(walk: _Walk, node: onnx.NodeProto) -> None:
    walk.layers.append(Relu(name=node.name or node.output[0], in_shape=walk.shape, nodes=(node.name,)))


def _on_maxpool(walk: _Walk, node: onnx.NodeProto) -> None:
    attrs = _attrs(node)
    _need_rank(walk, node, 3, "a 2-D image input [N, C, H, W]")
    if len(node.output) > 1 and node.output[1]:
        walk.fail(node, "its Indices output is used")
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    if len(kernel) != 2:
        walk.fail(node, f"kernel_shape {list(kernel)} is not 2-D")
    strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
    dilations = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
    pads = _pads_2d(walk, node, attrs, kernel, strides, dilations)
    layer = MaxPool(name=node.name or node.output[0], in_shape=walk.shape, kernel=kernel, strides=strides,
                    pads=pads, dilations=dilations, ceil_mode=bool(attrs.get("ceil_mode", 0)), nodes=(node.name,))
    walk.layers.append(layer)
    walk.shape = layer.out_shape


def _on_avgpool(walk: _Walk, node: onnx.NodeProto) -> None:
    attrs = _attrs(node)
    _need_rank(walk, node, 3, "a 2-D image input [N, C, H, W]")
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    if len(kernel) != 2:
        walk.fail(node, f"kernel_shape {list(kernel)} is not 2-D")
    strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
    if attrs.get("dilations") and tuple(attrs["dilations"]) != (1, 1):
        walk.fail(node, "dilated average pooling is not supported")
    pads = _pads_2d(walk, node, attrs, kernel, strides, (1, 1))
    layer = AvgPool(name=node.name or node.output[0], in_shape=walk.shape, kernel=kernel, strides=strides,
                    pads=pads, count_include_pad=bool(attrs.get("count_include_pad", 0)), nodes=(node.name,))
    if attrs.get("ceil_mode", 0):
        ceil = MaxPool(name="", in_shape=walk.shape, kernel=kernel, strides=strides, pads=pads, ceil_mode=True)
        if ceil.out_hw != layer.out_hw:
            walk.fail(node, "ceil_mode=1 changes the output size here, which is not supported for AveragePool")
    walk.layers.append(layer)
    walk.shape = layer.out_shape


def _on_reduce_mean(walk: _Walk, node: onnx.NodeProto) -> None:
    """ReduceMean over the spatial axes (the dynamo exporter's global average pooling)."""
    _need_rank(walk, node, 3, "a 2-D image input [N, C, H, W]")
    axes = sorted(a + 4 if a < 0 else a for a in _axes(walk, node))
    if axes != [2, 3]:
        walk.fail(node, f"reduces axes {axes}; only the spatial axes [2, 3] (global average pooling) are supported")
    _on_global_avgpool(walk, node)
    if not int(_attrs(node).get("keepdims", 1)):
        _add_reshape(walk, node, (walk.shape[0],), None)


def _on_global_avgpool(walk: _Walk, node: onnx.NodeProto) -> None:
    _need_rank(walk, node, 3, "a 2-D image input [N, C, H, W]")
    _, h, w = walk.shape
    layer = AvgPool(name=node.name or node.output[0], in_shape=walk.shape, kernel=(h, w), strides=(1, 1),
                    nodes=(node.name,))
    walk.layers.append(layer)
    walk.shape = layer.out_shape


def _add_reshape(walk: _Walk, node: onnx.NodeProto, out_shape: tuple[int, ...], shape_node: str | None) -> None:
    if int(np.prod(out_shape)) != int(np.prod(walk.shape)):
        walk.fail(node, f"reshapes {list(walk.shape)} to {list(out_shape)}: sizes differ")
    walk.layers.append(Reshape(name=node.name or node.output[0], in_shape=walk.shape, out_shape=tuple(out_shape),
                               shape_node=shape_node, nodes=(node.name,)))
    walk.shape = tuple(out_shape)


def _on_flatten(walk: _Walk, node: onnx.NodeProto) -> None:
    axis = int(_attrs(node).get("axis", 1))
    if axis < 0:
        axis += len(walk.shape) + 1
    if axis != 1:
        walk.fail(node, f"axis={axis} would mix the batch axis with features (only axis 1 is supported)")
    _add_reshape(walk, node, (int(np.prod(walk.shape)),), None)


def _on_reshape(walk: _Walk, node: onnx.NodeProto) -> None:
    attrs = _attrs(node)
    if len(node.input) > 1 and node.input[1]:
        target = walk.const(node.input[1], node, "shape").astype(np.int64).reshape(-1).tolist()
    elif "shape" in attrs:  # opset 1-4 attribute form
        target = [int(v) for v in attrs["shape"]]
    else:
        walk.fail(node, "has no target shape")
    allowzero = bool(attrs.get("allowzero", 0))
    if not target:
        walk.fail(node, "reshapes to a scalar")
    head, rest = target[0], list(target[1:])
    if head not in (0, -1) and head != walk.batch:
        walk.fail(node, f"target shape {target} does not keep the batch axis first")
    if head == -1 and -1 in rest:
        walk.fail(node, f"target shape {target} has two -1 entries")
    if head == 0 and allowzero:
        walk.fail(node, f"target shape {target} with allowzero=1 makes an empty batch")
    for i, v in enumerate(rest):
        if v == 0 and not allowzero:
            if i + 1 > len(walk.shape):
                walk.fail(node, f"target shape {target} copies a dimension the input does not have")
            rest[i] = walk.shape[i]
    total = int(np.prod(walk.shape))
    if head == -1:
        known = int(np.prod(rest)) if rest else 1
        if known <= 0 or total % known:
            walk.fail(node, f"target shape {target} does not keep the per-sample size {total}")
    elif -1 in rest:
        known = int(np.prod([v for v in rest if v != -1])) if len(rest) > 1 else 1
        if known <= 0 or total % known:
            walk.fail(node, f"target shape {target} does not fit per-sample shape {list(walk.shape)}")
        rest[rest.index(-1)] = total // known
    # a target that spells out unit counts must be rewritten when units are removed upstream
    spelled = any(v > 0 for v in target[1:])
    _add_reshape(walk, node, tuple(rest), node.output[0] if spelled else None)
    walk.layers[-1].computed_target = walk.computed_targets.get(node.input[1]) if len(node.input) > 1 else None


def _axes(walk: _Walk, node: onnx.NodeProto) -> list[int]:
    attrs = _attrs(node)
    if len(node.input) > 1 and node.input[1]:
        return walk.const(node.input[1], node, "axes").astype(np.int64).reshape(-1).tolist()
    return [int(a) for a in attrs.get("axes", [])]


def _on_squeeze(walk: _Walk, node: onnx.NodeProto) -> None:
    rank = len(walk.shape) + 1
    axes = [a + rank if a < 0 else a for a in _axes(walk, node)]
    full = (walk.batch or 1,) + walk.shape
    if not axes:
        axes = [i for i in range(1, rank) if full[i] == 1]
    if 0 in axes:
        walk.fail(node, "squeezes the batch axis")
    if any(full[a] != 1 for a in axes):
        walk.fail(node, f"squeezes axes {axes} of shape {list(walk.shape)} that are not 1")
    _add_reshape(walk, node, tuple(d for i, d in enumerate(full) if i not in axes)[1:], None)


def _on_unsqueeze(walk: _Walk, node: onnx.NodeProto) -> None:
    rank = len(walk.shape) + 1 + len(_axes(walk, node))
    axes = sorted(a + rank if a < 0 else a for a in _axes(walk, node))
    if 0 in axes:
        walk.fail(node, "inserts an axis before the batch axis")
    out = list(walk.shape)
    for a in axes:
        out.insert(a - 1, 1)
    _add_reshape(walk, node, tuple(out), None)


def _on_transpose(walk: _Walk, node: onnx.NodeProto) -> None:
    full = (1,) + walk.shape
    perm = [int(p) for p in _attrs(node).get("perm", list(range(len(full)))[::-1])]
    if sorted(perm) != list(range(len(full))):
        walk.fail(node, f"perm {perm} does not fit rank {len(full)}")
    moved = [p for p in perm if full[p] != 1]
    if perm[0] == 0 and moved != sorted(moved) and not _has_linear(walk):
        # on the input (an NHWC image turned NCHW): the graph keeps it, the IR computes it
        walk.layers.append(Transpose(name=node.name or node.output[0], in_shape=walk.shape,
                                     perm=tuple(p - 1 for p in perm[1:]), nodes=(node.name,)))
        walk.shape = walk.layers[-1].out_shape
        return
    if perm[0] != 0 or moved != sorted(moved):
        walk.fail(node, f"perm {perm} changes the memory layout of {list(walk.shape)} between layers (supported: "
                        "on the input, and right before the flatten that feeds a dense layer)")
    _add_reshape(walk, node, tuple(full[p] for p in perm[1:]), None)


def _on_passthrough(walk: _Walk, node: onnx.NodeProto) -> None:
    """Identity, Dropout (inference), Cast to a float type: dropped."""
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1] and walk.consumers.get(node.output[1]):
        walk.fail(node, "its mask output is used")
    if node.op_type == "Cast" and _attrs(node).get("to") not in FLOAT_TYPES:
        walk.fail(node, "casts to a non-float type inside the network")


BODY_OPS: dict[str, Callable[[_Walk, onnx.NodeProto], None]] = {
    "Gemm": _on_gemm,
    "MatMul": _on_matmul,
    "Conv": _on_conv,
    "Add": _on_add,
    "Sub": _on_affine,
    "Mul": _on_affine,
    "Div": _on_affine,
    "BatchNormalization": _on_batchnorm,
    "Relu": _on_relu,
    "MaxPool": _on_maxpool,
    "AveragePool": _on_avgpool,
    "GlobalAveragePool": _on_global_avgpool,
    "ReduceMean": _on_reduce_mean,
    "Flatten": _on_flatten,
    "Reshape": _on_reshape,
    "Squeeze": _on_squeeze,
    "Unsqueeze": _on_unsqueeze,
    "Transpose": _on_transpose,
    "Identity": _on_passthrough,
    "Sum": _on_add,
    "Dropout": _on_passthrough,
    "Cast": _on_passthrough,
}

_ELEM_TO_NUMPY = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
                  onnx.TensorProto.FLOAT16: np.float16}


def _graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {init.name for init in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(f"'{vi.name}'" for vi in inputs) or "none"
        raise UnsupportedModelError(f"model has {len(inputs)} inputs ({names}); onnxcrit needs exactly one")
    return inputs[0]


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


# what may stand between the last linear layer and the logits: an all-convolutional head
# (Conv -> [Relu] -> GlobalAveragePool / Flatten / Reshape -> logits)
HEAD_KINDS = (Relu, AvgPool, Reshape)


def _at_tail(walk: _Walk, tensor: str) -> bool:
    """True when `tensor` is the logits: a vector per sample written by the last linear layer (or, for a
    convolutional head, its pooling and flatten), read by tail ops only (or by nothing) and by no path that
    reaches another linear layer."""
    source, shape = walk.values[tensor]
    if len(shape) != 1:
        return False
    pos = walk.producer.get(source)
    while pos is not None and walk.layers[pos].kind not in LINEAR_KINDS:
        layer = walk.layers[pos]
        if not isinstance(layer, HEAD_KINDS) or len(layer.inputs) != 1:
            return False
        pos = walk.producer.get(layer.inputs[0])
    if pos is None:
        return False
    nodes = [i for i in walk.consumers.get(tensor, []) if i not in walk.visited]
    # Reshape/Flatten/Identity/Cast may be body ops too; they end the body only when nothing linear follows
    return not _reaches_linear(walk, tensor) and all(walk.model.graph.node[i].op_type in TAIL_OPS for i in nodes)


def _reaches_linear(walk: _Walk, tensor: str) -> bool:
    seen, todo = set(), [tensor]
    while todo:
        for i in walk.consumers.get(todo.pop(), []):
            if i in seen:
                continue
            seen.add(i)
            node = walk.model.graph.node[i]
            if node.op_type in ("Gemm", "MatMul", "Conv", "ConvTranspose"):
                return True
            todo.extend(node.output)
    return False


def to_network(model: onnx.ModelProto) -> Network:
    """Recognise the model's feed-forward chain as a Network, or raise UnsupportedModelError."""
    graph = model.graph
    opset = _opset(model)
    vi = _graph_input(model)
    ttype = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise UnsupportedModelError(f"input '{vi.name}' is not a tensor")
    if ttype.elem_type not in _ELEM_TO_NUMPY:
        raise UnsupportedModelError(f"input '{vi.name}' has element type "
                                    f"{onnx.TensorProto.DataType.Name(ttype.elem_type)}; a float input is needed")
    dims = list(ttype.shape.dim)
    if len(dims) < 2:
        raise UnsupportedModelError(f"input '{vi.name}' has rank {len(dims)}; expected [batch, features...]")
    shape = []
    for i, d in enumerate(dims[1:], start=1):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise UnsupportedModelError(f"input '{vi.name}' dimension {i} is not a fixed size ({d.dim_param or '?'})")
        shape.append(int(d.dim_value))
    batch = int(dims[0].dim_value) if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None

    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in set(node.input):
            if name:
                consumers.setdefault(name, []).append(i)
    consts = constant_values(graph)
    walk = _Walk(model=model, consts=consts, consumers=consumers, opset=opset, shape=tuple(shape),
                 tensor=vi.name, batch=batch)
    walk.values[vi.name] = (vi.name, tuple(shape))
    outputs = {o.name for o in graph.output}
    tail_ops: list[str] = []
    logits = None
    for index, node in enumerate(graph.node):  # ONNX keeps nodes in topological order
        if index in walk.visited or node.op_type == "Constant":
            continue
        acts = [t for t in node.input if t and t not in walk.consts]
        if not acts:
            continue  # computes on constants only (e.g. shape arithmetic); harmless
        unknown = [t for t in acts if t not in walk.values]
        if unknown:
            raise UnsupportedModelError(f"{node_label(node, index)} reads '{unknown[0]}', which is computed after the "
                                        "logits or by a node onnxcrit does not follow")
        if len(set(acts)) == 1 and logits is None and _at_tail(walk, acts[0]):
            logits = acts[0]
            tail_ops = _collect_tail(walk, [i for i in consumers[logits] if i not in walk.visited])
            continue
        if node.op_type == "Shape":
            walk.tensor = acts[0]
            walk.source, walk.shape = walk.values[acts[0]]
            _fold_shape_branch(walk, [i for i in consumers[acts[0]] if i not in walk.visited])
            if index in walk.visited:
                continue
        handler = BODY_OPS.get(node.op_type)
        if node.domain not in ("", "ai.onnx") or (handler is None and node.op_type not in MERGE_OPS):
            raise UnsupportedModelError(f"{node_label(node, index)}: op {node.op_type} is not supported "
                                        f"({_why_unsupported(node.op_type)})")
        for t in acts:
            if t in outputs and t != vi.name:
                raise UnsupportedModelError(f"intermediate tensor '{t}' is also a graph output; onnxcrit needs the "
                                            "logits to be the last linear layer's output")
        walk.visited.add(index)
        out = node.output[0]
        before = len(walk.layers)
        if len(set(acts)) > 1 or (node.op_type == "Concat"):
            _on_merge(walk, node, acts)
        else:
            walk.tensor = acts[0]
            walk.source, walk.shape = walk.values[acts[0]]
            handler(walk, node)
        if len(walk.layers) > before:
            previous = walk.source
            for pos in range(before, len(walk.layers)):  # a handler may write several layers in a row
                layer = walk.layers[pos]
                layer.inputs = layer.inputs or (previous,)
                layer.output = out if pos == len(walk.layers) - 1 else f"{out}#{pos - before}"
                walk.producer[layer.output] = pos
                previous = layer.output
            walk.values[out] = (out, tuple(layer.out_shape))
            walk.open_linear[out] = layer.kind in LINEAR_KINDS
        elif node.op_type in ("Add", "Mul", "BatchNormalization"):  # folded into the linear layer it follows
            pos = walk.producer.pop(walk.source)
            walk.layers[pos].output = out
            walk.producer[out] = pos
            walk.values[out] = (out, tuple(walk.layers[pos].out_shape))
            walk.open_linear[out] = True
        else:  # Identity, Dropout, Cast: the same value under another name
            walk.values[out] = walk.values[acts[0]]
    if logits is None:
        found = [o.name for o in graph.output if o.name in walk.values]
        if len(found) != 1:
            raise UnsupportedModelError(f"model has {len(found)} outputs computed from its input; onnxcrit needs "
                                        "one, the logits")
        if not _at_tail(walk, found[0]):
            raise UnsupportedModelError(f"output '{found[0]}' (per-sample shape {list(walk.values[found[0]][1])}) "
                                        "is not a vector of logits computed by a Gemm, MatMul or Conv layer")
        logits = found[0]
    _check_dead_ends(walk, graph, logits)
    linear = [layer for layer in walk.layers if layer.kind in LINEAR_KINDS]
    if len(linear) < 2:
        raise UnsupportedModelError("model has fewer than two Gemm/MatMul/Conv layers: nothing to prune")
    if not any(KINDS[layer.kind].activation for layer in walk.layers):
        raise UnsupportedModelError("model has no Relu: onnxcrit optimises ReLU networks")
    return Network(layers=walk.layers, input_name=vi.name, input_shape=tuple(shape),
                   input_dtype=np.dtype(_ELEM_TO_NUMPY[ttype.elem_type]), logits_name=logits,
                   output_names=tuple(o.name for o in graph.output), tail_ops=tuple(tail_ops), fixed_batch=batch)


def _fold_shape_branch(walk: _Walk, nodes: list[int]) -> list[int]:
    """torch's `x.view(x.size(0), -1)`: Shape(x) -> Gather -> Unsqueeze -> Concat -> Reshape(x, shape).

    When every consumer but one Reshape is a Shape node, and the target shape computed from x's shape keeps the
    batch axis first with fixed other entries, the target becomes a constant for the walk (the graph is left as
    it is) and the shape nodes are marked as visited. Anything else is left for the branching refusal.
    """
    graph = walk.model.graph
    shapes = [i for i in nodes if graph.node[i].op_type == "Shape"]
    others = [i for i in nodes if i not in shapes]
    if not shapes or len(others) != 1 or graph.node[others[0]].op_type != "Reshape":
        return nodes
    reshape = graph.node[others[0]]
    if len(reshape.input) < 2 or reshape.input[1] in walk.consts:
        return nodes
    # the nodes computing the target shape from the Shape outputs and constants only
    known = set(walk.consts)
    branch, produced = [], set()
    for i in shapes:
        produced.update(graph.node[i].output)
    for i, node in enumerate(graph.node):
        if i in shapes or i in walk.visited or not node.input:
            continue
        if all(not name or name in produced or name in known for name in node.input) and \
                any(name in produced for name in node.input):
            branch.append(i)
            produced.update(node.output)
    if reshape.input[1] not in produced:
        return nodes
    targets = []
    for batch in (1, 3):
        try:
            targets.append(_evaluate_shape(walk, shapes + branch, reshape.input[1], batch))
        except Exception:  # noqa: BLE001 - anything the evaluator cannot do stays a branching refusal
            return nodes
    first, second = targets
    if len(first) != len(second) or list(first[1:]) != list(second[1:]) or \
            not ({int(first[0]), int(second[0])} <= {0, -1} or (first[0], second[0]) == (1, 3)):
        return nodes
    rest = [int(v) for v in first[1:]]
    walk.consts[reshape.input[1]] = np.array([0, *rest], dtype=np.int64)
    if any(v > 0 for v in rest):  # sizes spelled out: the rewrite gives the Reshape a constant target instead
        walk.computed_targets[reshape.input[1]] = (0, *rest)
    walk.visited.update(shapes + branch)
    return others


def _evaluate_shape(walk: _Walk, node_ids: list[int], output: str, batch: int) -> np.ndarray:
    """Run the shape-computing nodes for an input of shape [batch, *walk.shape] with onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    graph = walk.model.graph
    nodes = [graph.node[i] for i in sorted(node_ids)]
    needed = {name for node in nodes for name in node.input if name in walk.consts}
    inits = [numpy_helper.from_array(np.asarray(walk.consts[name]), name) for name in sorted(needed)]
    x = onnx.helper.make_tensor_value_info(walk.tensor, onnx.TensorProto.FLOAT, [batch, *walk.shape])
    out = onnx.helper.make_tensor_value_info(output, onnx.TensorProto.INT64, None)
    sub = onnx.helper.make_model(onnx.helper.make_graph(nodes, "shape", [x], [out], inits),
                                 opset_imports=list(walk.model.opset_import))
    value = ReferenceEvaluator(sub).run(None, {walk.tensor: np.zeros((batch, *walk.shape), np.float32)})[0]
    return np.asarray(value).reshape(-1)


MERGE_OPS = ("Add", "Sum", "Concat")


def _why_unsupported(op: str) -> str:
    if op in ("Split", "Slice", "Mul", "Sub", "Max", "Min", "Div", "Mean"):
        return "onnxcrit reads Gemm/MatMul/Conv, bias, BatchNorm, Relu, pooling, residual Add and channel Concat"
    if op in ("Sigmoid", "Tanh", "LeakyRelu", "PRelu", "Elu", "Selu", "Gelu", "HardSigmoid", "Clip", "Softplus"):
        return "only Relu activations are supported inside the network"
    return "not a dense, convolution, ReLU, pooling or reshape op"


def _collect_tail(walk: _Walk, nodes) -> list[str]:
    seen, order, todo = set(), [], list(nodes)
    while todo:
        i = todo.pop(0)
        if i in seen:
            continue
        seen.add(i)
        node = walk.model.graph.node[i]
        order.append(node.op_type)
        for out in node.output:
            todo.extend(walk.consumers.get(out, []))
    walk.visited |= seen
    return order


def _check_dead_ends(walk: _Walk, graph: onnx.GraphProto, logits: str) -> None:
    """Every layer must lead to the logits, and the logits' layer must be the last one: a node off that path that
    is not a constant computation is a branch onnxcrit cannot account for."""
    for i, node in enumerate(graph.node):
        if i in walk.visited or node.op_type == "Constant":
            continue
        if all(not name or name in walk.consts for name in node.input):
            continue  # computes on constants only (e.g. shape arithmetic); harmless
        raise UnsupportedModelError(f"{node_label(node, i)} is off the path to the logits '{logits}'")
    last = walk.producer.get(walk.values[logits][0])
    needed = {last}
    for pos in range(len(walk.layers) - 1, -1, -1):
        if pos in needed:
            needed.update(walk.producer[name] for name in walk.layers[pos].inputs if name in walk.producer)
    dead = [layer for pos, layer in enumerate(walk.layers) if pos not in needed]
    if dead or last != len(walk.layers) - 1:
        name = dead[0].name if dead else walk.layers[-1].name
        raise UnsupportedModelError(f"layer '{name}' does not lead to the logits '{logits}'")


def load_network(source: str | os.PathLike | onnx.ModelProto) -> tuple[Network, onnx.ModelProto]:
    """Load an ONNX model, canonicalise it (`canonical.canonicalise`) and recognise it: (Network, the canonical
    ModelProto with external data loaded). `Network.canonicalised` names the passes that changed the graph."""
    from .canonical import canonicalise

    model = load_model(source)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise InputError(f"{_name_of(source)}: not a valid ONNX model ({first})") from None
    except ValueError:
        pass  # over 2 GB in memory: the checker needs a path; the walk below still validates what it uses
    canonical = canonicalise(model)
    net = to_network(canonical.model)
    net.canonicalised = tuple(canonical.passes)
    return net, canonical.model


def _name_of(source) -> str:
    return str(source) if not isinstance(source, onnx.ModelProto) else "model"
