"""Exact ONNX -> ONNX passes that turn what exporters write into the graphs the front end reads.

Published files carry patterns of their exporters that compute nothing a ReLU classifier needs to change:
weights produced by a Reshape of an initializer (CNTK, the ONNX model zoo), torch 0.4's Shape -> Gather ->
Unsqueeze -> Concat flatten target on a fixed-batch input, an explicit zero Pad before a Conv or an
AveragePool, and tf2onnx's NHWC Transpose before the flatten that feeds the first dense layer. Each pass below
rewrites one of them into the form the front end reads, exactly (same outputs), and says whether it changed
anything; `canonicalise` lists the passes that did. The model onnxcrit writes is the canonical one with units
removed, with the published file's inputs and outputs.

Constant folding and dead-node removal are onnxscript's optimiser and onnx-ir's passes (they keep node and
tensor names, opset imports and metadata; onnxruntime's offline "basic" optimisation also folds, but renames
fused nodes and adds eight opset imports). The two structural passes are small and written here because no
library does them exactly: onnxscript's rewriter fuses Pad into Conv but not into AveragePool with
count_include_pad, and no maintained pass permutes a dense layer's rows to drop an NHWC transpose.

Normalisation nodes on the input (Sub/Div/Mul/Add of constants) and the NHWC input Transpose stay in the graph:
the front end models them as an input stage (`ir.Affine`, `ir.Transpose`). Folding a per-channel shift into a
padded first convolution would be wrong at the borders, and keeping them costs nothing at run time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .frontend import constant_values

# constants this large are still folded: a weight computed by a Reshape must become an initializer
_FOLD_LIMIT = 1 << 31


@dataclass
class Canonical:
    """The canonical model (the input itself when no pass changed anything) and the passes that changed it."""

    model: onnx.ModelProto
    passes: list[str] = field(default_factory=list)


def canonicalise(model: onnx.ModelProto) -> Canonical:
    """Apply every pass in order; the input model is not modified."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    applied = [name for name, run in PASSES if run(work)]
    if not applied:
        return Canonical(model, [])
    if any(name != "fold_constants" for name in applied):
        remove_dead_nodes(work)
    return Canonical(work, applied)


# ---------------------------------------------------------------------------------------------------------
# constant folding (onnxscript) and dead-node removal (onnx-ir)

def fold_constants(model: onnx.ModelProto) -> bool:
    """Replace every node computing only from constants by its value (including Shape of a fixed-size tensor)."""
    if not _has_constant_computation(model):
        return False  # most files have none; skip the optimiser's import and round trip
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass
    from onnxscript.optimizer import fold_constants as fold

    work = onnx.ModelProto()
    work.CopyFrom(model)
    # IR version 3 lists every initializer as a graph input too (CNTK, the model zoo's mnist-8); the folder
    # rightly keeps inputs, so these become plain constants first (IR version 4 allows it)
    inits = {t.name for t in work.graph.initializer}
    if any(vi.name in inits for vi in work.graph.input):
        kept = [vi for vi in work.graph.input if vi.name not in inits]
        del work.graph.input[:]
        work.graph.input.extend(kept)
        work.ir_version = max(work.ir_version, 4)
    irmodel = ir.from_proto(work)
    # every foldable node, ConstantOfShape included (the optimiser keeps that one by default)
    folded = fold(irmodel, onnx_shape_inference=True, input_size_limit=_FOLD_LIMIT,
                  output_size_limit=_FOLD_LIMIT, should_fold=lambda node: True).modified
    if not folded:
        return False
    RemoveUnusedNodesPass()(irmodel)
    model.CopyFrom(ir.to_proto(irmodel))
    return True


def _has_constant_computation(model: onnx.ModelProto) -> bool:
    known = set(constant_values(model.graph))
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        if node.op_type == "Shape":
            return True
        inputs = [name for name in node.input if name]
        if inputs and all(name in known for name in inputs):
            return True
    return False


def remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes and initializers no output depends on (onnx-ir's pass), in place."""
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    irmodel = ir.from_proto(model)
    if RemoveUnusedNodesPass()(irmodel).modified:
        model.CopyFrom(ir.to_proto(irmodel))


# ---------------------------------------------------------------------------------------------------------
# a zero Pad merged into the next Conv / AveragePool

def merge_zero_pad(model: onnx.ModelProto) -> bool:
    """Pad(mode constant, value 0, spatial axes only) -> Conv or AveragePool: add its pads to theirs.

    Exact for Conv (its own padding is zeros too) and for AveragePool when the zeros are counted in the
    average either way (count_include_pad=1, or no padding of its own, in which case it becomes 1). MaxPool is
    left alone: it pads with -inf, not 0.
    """
    graph = model.graph
    consts = constant_values(graph)
    users_of = consumers(graph)
    outputs = {o.name for o in graph.output}
    changed = False
    for pad in [n for n in graph.node if n.op_type == "Pad" and n.domain in ("", "ai.onnx")]:
        spatial = _zero_spatial_pads(pad, consts)
        users = users_of.get(pad.output[0], [])
        if spatial is None or len(users) != 1 or pad.output[0] in outputs:
            continue
        user = users[0]
        if user.op_type not in ("Conv", "AveragePool") or user.input[0] != pad.output[0]:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in user.attribute}
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto not in ("NOTSET", "VALID", ""):
            continue
        own = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])] if auto != "VALID" else [0, 0, 0, 0]
        if len(own) != 4:
            continue
        if user.op_type == "AveragePool" and not attrs.get("count_include_pad", 0) and any(own):
            continue  # its own padding is not counted, the Pad's zeros are: not one AveragePool
        merged = [a + b for a, b in zip(own, spatial)]
        _set_attr(user, "pads", merged)
        _drop_attr(user, "auto_pad")
        if user.op_type == "AveragePool":
            _set_attr(user, "count_include_pad", 1)
        user.input[0] = pad.input[0]
        graph.node.remove(pad)
        changed = True
    return changed


def _zero_spatial_pads(pad: onnx.NodeProto, consts: dict) -> list[int] | None:
    """The Pad's (top, left, bottom, right) when it zero-pads H and W of an NCHW tensor only, else None."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pad.attribute}
    mode = attrs.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return None
    if "pads" in attrs:  # opset < 11
        pads, value = [int(p) for p in attrs["pads"]], float(attrs.get("value", 0.0))
    else:
        if len(pad.input) < 2 or pad.input[1] not in consts:
            return None
        pads = [int(p) for p in consts[pad.input[1]].reshape(-1)]
        value = 0.0
        if len(pad.input) > 2 and pad.input[2]:
            if pad.input[2] not in consts:
                return None
            value = float(np.asarray(consts[pad.input[2]]).reshape(-1)[0]) if consts[pad.input[2]].size else 0.0
        if len(pad.input) > 3 and pad.input[3]:  # opset 18 axes: pads for these axes only
            if pad.input[3] not in consts:
                return None
            axes = [int(a) % 4 for a in consts[pad.input[3]].reshape(-1)]
            if len(pads) != 2 * len(axes):
                return None
            full = [0] * 8
            for j, a in enumerate(axes):
                full[a], full[a + 4] = pads[j], pads[j + len(axes)]
            pads = full
    if value != 0.0 or len(pads) != 8 or any(p < 0 for p in pads) or any(pads[i] for i in (0, 1, 4, 5)):
        return None
    return [pads[2], pads[3], pads[6], pads[7]]


# ---------------------------------------------------------------------------------------------------------
# tf2onnx's NHWC flatten: Transpose [0,2,3,1] -> Flatten/Reshape -> MatMul/Gemm

def absorb_flatten_transpose(model: onnx.ModelProto) -> bool:
    """Drop the Transpose(perm [0,2,3,1]) before a flatten into a dense layer by permuting that layer's input
    rows, so the flatten reads NCHW: row c*H*W + h*W + w of the new weight is row (h*W + w)*C + c of the old."""
    graph = model.graph
    users_of = consumers(graph)
    outputs = {o.name for o in graph.output}
    inits = {t.name: t for t in graph.initializer}
    uses = {name: len(users) for name, users in users_of.items()}
    shapes = None
    changed = False
    for t in [n for n in graph.node if n.op_type == "Transpose"]:
        perm = [int(p) for a in t.attribute if a.name == "perm" for p in a.ints]
        if perm != [0, 2, 3, 1] or t.output[0] in outputs or len(users_of.get(t.output[0], [])) != 1:
            continue
        flat = users_of[t.output[0]][0]
        if not _is_flatten(flat) or flat.output[0] in outputs:
            continue
        dense = users_of.get(flat.output[0], [])
        if len(dense) != 1 or dense[0].input[0] != flat.output[0]:
            continue
        dense = dense[0]
        rows_axis = _dense_rows_axis(dense)
        weight = dense.input[1] if len(dense.input) > 1 else ""
        if rows_axis is None or weight not in inits or uses.get(weight, 0) != 1:
            continue
        if shapes is None:
            shapes = _inferred_shapes(model)
        chw = shapes.get(t.input[0])
        if chw is None:
            continue
        c, h, w = chw
        value = numpy_helper.to_array(inits[weight])
        if value.ndim != 2 or value.shape[rows_axis] != c * h * w:
            continue
        order = np.arange(c * h * w).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
        inits[weight].CopyFrom(numpy_helper.from_array(np.take(value, order, axis=rows_axis), weight))
        flat.input[0] = t.input[0]
        graph.node.remove(t)
        changed = True
    return changed


def _is_flatten(node: onnx.NodeProto) -> bool:
    """Flatten(axis 1), or any Reshape: its target may be computed (Keras 3 reads the batch size from Shape);
    the dense layer after it, whose weight has C*H*W rows, pins its output to [batch, C*H*W]."""
    if node.op_type == "Flatten":
        return all(a.i == 1 for a in node.attribute if a.name == "axis")
    return node.op_type == "Reshape"


def _dense_rows_axis(node: onnx.NodeProto) -> int | None:
    """Axis of the weight (input 1) that the flattened features index, or None if not a plain dense layer."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMul":
        return 0
    if node.op_type == "Gemm" and not attrs.get("transA", 0):
        return 1 if attrs.get("transB", 0) else 0
    return None


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of every rank-4 tensor whose per-sample dimensions shape inference fixes."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a help here, not a requirement
        return {}
    out = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:]):
            out[vi.name] = tuple(int(d.dim_value) for d in dims[1:])
    return out


# ---------------------------------------------------------------------------------------------------------
# small graph helpers

def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it (each node once)."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            if name:
                out.setdefault(name, []).append(node)
    return out


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    _drop_attr(node, name)
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _drop_attr(node: onnx.NodeProto, name: str) -> None:
    for a in [a for a in node.attribute if a.name == name]:
        node.attribute.remove(a)


PASSES = (("fold_constants", fold_constants), ("merge_zero_pad", merge_zero_pad),
          ("absorb_flatten_transpose", absorb_flatten_transpose))
