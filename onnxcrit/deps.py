"""Which channels must be removed together: the channel-dependency map of an ONNX graph, computed once.

A unit can only go where every tensor that carries it loses it too. Every (tensor, channel) pair is a node of a
union-find and every op adds edges with an index map (Torch-Pruning's DependencyGraph is the anchor):

- a linear op (Conv with group 1, Gemm, MatMul with a constant weight) cuts the chain: its output channels are
  new units (it is their *producer*) and its input channels are read by it (it is a *consumer*);
- per-channel ops (Relu, pooling, BatchNormalization, constant Add/Sub/Mul/Div, Dropout, Identity, Cast, Pad,
  Clip, ...) pass channel c through;
- an element-wise op between activations (residual Add, Sub, Mul, Max, Min, Sum) joins its operands and its
  output, channel by channel: in a ResNet stage the stem, every block's last conv and every Add share units;
- Concat on the channel axis maps its inputs to offset ranges of its output (the inputs stay independent);
- Flatten/Reshape into a dense layer gives channel c the columns c*H*W .. (c+1)*H*W - 1;
- a depthwise Conv (group == C_in == C_out) joins its input and output channels and is producer and consumer;
- anything that mixes channels or is not known (Transpose, Softmax or Reduce over channels, a grouped Conv, ...)
  freezes every channel it touches, and so do the graph's inputs and outputs.

A *unit* is a connected component that some producer creates; units with the same producers form a `Group`
(e.g. the C channels of a ResNet stage). A group that touches a frozen channel is kept whole and says why.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .frontend import constant_values

PER_CHANNEL = {"Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization",
               "Dropout", "Identity", "Cast", "Pad", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid",
               "Elu", "Selu", "Softplus", "HardSwish", "PRelu"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"}
LINEAR = {"Conv", "Gemm", "MatMul"}
DATA_FIRST = {"Reshape", "Pad", "Clip", "Expand", "ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin",
              "ReduceL2", "ReduceL1", "Squeeze", "Unsqueeze"}
REDUCE = {"ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "ReduceL2", "ReduceL1"}


@dataclass
class Group:
    """Units (channels) that go together: created by `producers`, read by `consumers` (node names)."""

    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    units: int
    frozen: str | None = None  # why the group is kept whole, None when it can be pruned
    tensors: dict[str, list[int]] = field(default_factory=dict)  # tensor -> its channel of each unit, in order


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, count: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return start

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def dependency_groups(model: onnx.ModelProto) -> list[Group]:
    """The channel-dependency map of `model` (shapes from onnx shape inference), one Group per set of
    producers, in the order their first producer appears in the graph."""
    graph = model.graph
    channels, ranks = _shapes(model)
    consts = constant_values(graph)
    uf = _UnionFind()
    base: dict[str, int] = {}
    frozen: dict[int, str] = {}  # node of the union-find -> why
    producers: dict[int, set[str]] = {}
    consumers: dict[int, set[str]] = {}

    def slots(tensor: str) -> int | None:
        if tensor not in base:
            if tensor not in channels:
                return None
            base[tensor] = uf.add(channels[tensor])
        return base[tensor]

    def freeze(tensor: str, why: str) -> None:
        start = slots(tensor)
        if start is not None:
            for c in range(channels[tensor]):
                frozen.setdefault(start + c, why)

    def join(a: str, b: str, index=None) -> bool:
        """Union channel index[c] of a with channel c of b (index None: the identity); False if unknown."""
        sa, sb = slots(a), slots(b)
        if sa is None or sb is None:
            return False
        n = channels[b]
        index = np.arange(n) if index is None else index
        if len(index) != n or (len(index) and int(np.max(index)) >= channels[a]):
            return False
        for c in range(n):
            uf.union(sa + int(index[c]), sb + c)
        return True

    for vi in graph.input:
        if vi.name not in consts:
            freeze(vi.name, f"graph input '{vi.name}'")
    for vi in graph.output:
        freeze(vi.name, f"graph output '{vi.name}'")
    for node in graph.node:
        op, name = node.op_type, node.name or node.output[0]
        acts = [t for t in node.input if t and t not in consts]
        if op in DATA_FIRST:  # later inputs are shapes, pads, bounds or axes, possibly computed
            acts = acts[:1] if node.input and node.input[0] in acts else []
        out = node.output[0] if node.output else ""
        if op in ("Constant", "Shape", "Size") or not acts:
            continue  # Shape and Size read sizes, never values
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if op in LINEAR and len(acts) == 1 and acts[0] == node.input[0]:
            group = int(attrs.get("group", 1)) if op == "Conv" else 1
            c_in, c_out = channels.get(acts[0]), channels.get(out)
            if op == "Conv" and group > 1:
                if group == c_in == c_out:  # depthwise: one channel in, one out
                    if join(acts[0], out):
                        _mark(consumers, slots(acts[0]), c_in, name)
                        _mark(producers, slots(out), c_out, name)
                        continue
                freeze(acts[0], f"grouped convolution '{name}' (group {group})")
                freeze(out, f"grouped convolution '{name}' (group {group})")
                continue
            if slots(out) is not None and slots(acts[0]) is not None:
                _mark(producers, slots(out), c_out, name)
                _mark(consumers, slots(acts[0]), c_in, name)
                continue
        elif op in PER_CHANNEL and len(acts) == 1 and join(acts[0], out):
            continue
        elif op in REDUCE and len(acts) == 1 and _spatial_axes(node, attrs, consts, ranks.get(acts[0], 0)) and \
                join(acts[0], out):  # e.g. the dynamo exporter's global average pooling
            continue
        elif op in ELEMENTWISE and all(channels.get(t) == channels.get(out) for t in acts) and \
                all(join(t, out) for t in acts):
            continue
        elif op == "Concat" and int(attrs.get("axis", 0)) % max(ranks.get(out, 2), 1) == 1 and \
                len(acts) == len(node.input):
            offset, ok = 0, slots(out) is not None
            for t in node.input:
                if not ok or slots(t) is None:
                    ok = False
                    break
                for c in range(channels[t]):
                    uf.union(slots(t) + c, slots(out) + offset + c)
                offset += channels[t]
            if ok and offset == channels[out]:
                continue
        elif op in ("Flatten", "Reshape") and len(acts) == 1 and slots(acts[0]) is not None and \
                slots(out) is not None and ranks.get(out) == 2 and channels[out] % channels[acts[0]] == 0:
            per = channels[out] // channels[acts[0]]
            if join(acts[0], out, np.repeat(np.arange(channels[acts[0]]), per)):
                continue
        why = f"{op} node '{name}' mixes channels or is not understood"
        for t in [*acts, *node.output]:
            freeze(t, why)
    order = {node.name or node.output[0]: i for i, node in enumerate(graph.node)}
    return sorted(_groups(uf, base, channels, frozen, producers, consumers),
                  key=lambda g: min(order.get(p, 0) for p in g.producers))


def _spatial_axes(node: onnx.NodeProto, attrs: dict, consts: dict, rank: int) -> bool:
    """The reduction leaves the batch and channel axes alone (and keeps channels on axis 1)."""
    if "axes" in attrs:
        axes = [int(a) for a in attrs["axes"]]
    elif len(node.input) > 1 and node.input[1] in consts:
        axes = [int(a) for a in consts[node.input[1]].reshape(-1)]
    else:
        return False  # no axes: every axis is reduced
    return rank > 2 and bool(axes) and all(a % rank >= 2 for a in axes)


def _mark(table: dict[int, set[str]], start: int | None, count: int | None, name: str) -> None:
    for c in range(count or 0):
        table.setdefault(start + c, set()).add(name)


def _groups(uf, base, channels, frozen, producers, consumers) -> list[Group]:
    members: dict[int, list[int]] = {}
    for slot in range(len(uf.parent)):
        members.setdefault(uf.find(slot), []).append(slot)
    owner = {}  # slot -> tensor, channel
    for tensor, start in base.items():
        for c in range(channels[tensor]):
            owner[start + c] = (tensor, c)
    by_producers: dict[tuple[str, ...], list[list[int]]] = {}
    for root, slots in members.items():
        made = tuple(sorted(set().union(*(producers.get(s, set()) for s in slots))))
        if made:
            by_producers.setdefault(made, []).append(slots)
    groups = []
    for made, units in by_producers.items():
        units.sort(key=min)
        reasons = [frozen[s] for unit in units for s in unit if s in frozen]
        read = tuple(sorted(set().union(*(consumers.get(s, set()) for unit in units for s in unit))))
        tensors: dict[str, list[int]] = {}
        for unit in units:
            for s in sorted(unit):
                tensor, c = owner[s]
                tensors.setdefault(tensor, []).append(c)
        groups.append(Group(producers=made, consumers=read, units=len(units), frozen=reasons[0] if reasons else None,
                            tensors=tensors))
    return groups


def _shapes(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """Channel count (dimension 1) and rank of every tensor of rank >= 2 whose channel count shape inference
    fixes; a tensor without one is left out, and an op touching it is frozen."""
    channels, ranks, sizes = _inferred(model)
    # a flatten whose target is computed from the batch size (torch's view, Keras 3) stays unsized; when only
    # dense layers read it, it is [batch, per-sample size of its input]: declare that and infer again
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    declared = []
    for node in model.graph.node:
        out = node.output[0] if node.output else ""
        if node.op_type in ("Reshape", "Flatten") and out not in channels and node.input[0] in sizes \
                and readers.get(out) and all(op in ("Gemm", "MatMul") for op in readers[out]):
            declared.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT,
                                                               ["batch", sizes[node.input[0]]]))
    if declared:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.value_info.extend(declared)
        channels, ranks, _ = _inferred(copy)
    return channels, ranks


def _inferred(model: onnx.ModelProto):
    try:  # data propagation sizes what it can of computed shapes
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - without shapes every op is frozen
        inferred = model
    channels, ranks, sizes = {}, {}, {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
            channels[vi.name], ranks[vi.name] = int(dims[1].dim_value), len(dims)
            if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:]):
                sizes[vi.name] = int(np.prod([d.dim_value for d in dims[1:]]))
    return channels, ranks, sizes
