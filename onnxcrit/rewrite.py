"""IR masks -> a smaller ONNX graph: graph surgery on the original model.

Removing unit j of a scored linear layer k slices index j out of every tensor in `k.out_refs` (weight rows or
output channels, bias, BatchNorm tensors) and the columns it feeds out of every tensor in `n.in_refs`, where
n is the next linear layer. Which columns of n a unit feeds follows from the IR shapes alone: a map of "which
unit owns this element" is carried through the ReLU, pooling and reshape layers between k and n (pooling keeps
channels; a flatten of [C, H, W] gives channel c the columns c*H*W .. (c+1)*H*W - 1). A kept unit's positive
factor is folded into n's incoming weights; this is exact because ReLU, max and average pooling commute with a
positive per-channel factor. The result equals `net.forward(x, scales=scales)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .bounds import Bounds
from .canonical import consumers, remove_dead_nodes
from .errors import UnsupportedModelError
from .frontend import to_network
from .ir import KINDS, Network, ParamRef


# ---------------------------------------------------------------------------------------------------------
# public API

def remove_units(model: onnx.ModelProto, net: Network, scales: dict[int, np.ndarray], *,
                 compensation: dict[int, np.ndarray] | None = None,
                 keep: dict[int, np.ndarray] | None = None) -> tuple[onnx.ModelProto, Network]:
    """Remove the units whose scale is 0 and fold the positive scales into the next layer's weights.

    scales: position of a scored layer in `net.layers` -> per-unit factor (0 removes the unit). Layers not in
    scales are unchanged. compensation: position of a linear layer -> a shift of its (IR) bias, as returned by
    `bias_compensation`. keep: which units stay in the graph, per layer of scales (default: scale > 0); a kept
    unit with scale 0 stays with zero outgoing weights (`select.round_up` keeps such units so a layer keeps a
    rounded width). Returns (new model, its Network as the front end reads it); `model` is not changed.
    Raises ValueError for bad scales (wrong length, negative, all units removed) and UnsupportedModelError when
    a tensor to change is shared or a removed unit cannot be cut out of the graph cleanly.
    """
    scales = _checked_scales(net, scales)
    keeps = _checked_keep(scales, keep)
    net = replace(net, layers=list(net.layers))  # a local view: compensation may add a node to a layer
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    table = _TensorTable(graph)
    extra_refs: dict[int, list[ParamRef]] = {}
    edits: dict[str, _Edit] = {}

    for n, delta in sorted((compensation or {}).items()):
        delta = np.asarray(delta, dtype=np.float64).reshape(-1)
        if np.any(delta != 0):
            _add_to_bias(graph, table, net, n, delta, edits, extra_refs)

    changed = {k: keeps[k] for k in scales if not (keeps[k].all() and np.all(scales[k] == 1))}
    groups = {g.key: g for g in net.deps.prunable()}
    kept_any = {k: keep for k, keep in changed.items() if not keep.all()}
    # the groups' producers and coupled convs lose the removed units (a coupled conv may carry several groups,
    # e.g. a depthwise conv after a Concat: one mask over all its channels)
    cut = sorted({p for k in kept_any for p in [*groups[k].producers, *groups[k].coupled]})
    for p in cut:
        layer = net.layers[p]
        mask = net.output_keep(p, kept_any)
        for ref in (*layer.out_refs, *extra_refs.get(p, [])):
            _edit(edits, ref.tensor, p).keep_along(ref.axis, mask)
        if any(p in groups[k].coupled for k in kept_any):
            _set_group(graph, layer, int(mask.sum()))
    for i in net.linear_indices():  # every layer reading them loses their columns; a kept unit's factor folds in
        keys, units = net.input_columns(i)
        touched = sorted(set(keys.tolist()) & set(changed))
        if not touched:
            continue
        layer = net.layers[i]
        col_keep = np.ones(keys.size, dtype=bool)
        col_factor = np.ones(keys.size)
        for k in touched:
            cols = keys == k
            col_keep[cols] = changed[k][units[cols]]
            if groups[k].homogeneous:
                col_factor[cols] = np.where(changed[k], scales[k], 1.0)[units[cols]]
        if not layer.in_refs:
            raise UnsupportedModelError(f"layer '{layer.name}' does not say where its input weights are")
        for ref in layer.in_refs:
            edit = _edit(edits, ref.tensor, i)
            if np.any(col_factor != 1):
                edit.scale_along(ref.axis, col_factor)
            if not col_keep.all():
                edit.keep_along(ref.axis, col_keep)
    reshape_targets: list[tuple[str, list[int]]] = []
    for pos, layer in enumerate(net.layers):
        if getattr(layer, "shape_node", None) is not None:
            kept_in = net.channel_keep(net.inputs_of(pos)[0], kept_any)
            if not kept_in.all():
                reshape_targets.append((layer.shape_node, _resized_target(graph, table, net, pos, kept_in)))

    _check_ownership(graph, net, edits, extra_refs)
    for name, edit in edits.items():
        table.set(name, edit.apply(table.get(name), name))
    for shape_node, target in reshape_targets:
        _set_reshape_target(graph, table, shape_node, target)
    if any(getattr(layer, "computed_target", None) is not None for layer in net.layers):
        remove_dead_nodes(out)  # the shape computation a constant target replaced
    _sync_initializer_inputs(graph, out.ir_version)
    _reinfer_value_info(out, model)
    new_net = to_network(out)
    _check_units(net, new_net, keeps)
    return out, new_net


def dead_units(net: Network, bounds: Bounds) -> dict[int, np.ndarray]:
    """Per prunable group, the units that are never active: every tensor a linear layer reads the unit from is
    exactly 0 on every sample and position (e.g. after a ReLU whose input's upper bound is <= 0).

    Removing them changes no output on the inputs the bounds cover. If every unit of a group is dead, the one
    whose producers reach the largest upper bound is kept (a group keeps at least one unit; it outputs 0 either
    way).
    """
    dead = {}
    read = {net.inputs_of(i)[0] for i in net.linear_indices()}
    for g in net.deps.prunable():
        mask = np.ones(g.units, dtype=bool)
        for p, chans in g.values.items():
            if p not in read or p < 0:
                continue
            lo = np.asarray(bounds.lower[p]).reshape(len(bounds.lower[p]), -1, *net.layers[p].out_shape[1:])
            hi = np.asarray(bounds.upper[p]).reshape(lo.shape)
            if not len(lo):
                mask[:] = False  # no samples: nothing is known to be dead
                break
            zero = np.all((lo == 0) & (hi == 0), axis=tuple(a for a in range(lo.ndim) if a != 1))
            for u, ch in enumerate(chans):
                mask[u] &= bool(np.all(zero[ch]))
        if mask.all():
            peak = np.full(g.units, -np.inf)
            for p, chans in g.producers.items():
                up = np.asarray(bounds.upper[p]).reshape(len(bounds.upper[p]), net.layers[p].units, -1)
                peak = np.maximum(peak, up.max(axis=(0, 2))[chans] if len(up) else 0.0)
            mask[int(np.argmax(peak))] = False
        dead[g.key] = mask
    return dead


def scales_from_keep(keep: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Keep masks -> scales (1 keeps, 0 removes)."""
    return {k: np.asarray(mask, dtype=bool).astype(np.float64) for k, mask in keep.items()}


def bias_compensation(net: Network, x: np.ndarray, scales: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Bias shifts that stand in for the removed units: layer position -> shift of that layer's bias.

    For every group k with removed units, every linear layer n reading them gets the mean (over the samples x
    and, for a conv n, over its output positions) of what the removed units sent into it. For a dense n this is
    exactly mean activation times outgoing weights; for a conv n it is the best per-channel constant (borders
    see zero padding, so it is an approximation there). A depthwise conv the group passes through loses the
    same channels and gets nothing. Groups are processed in order, each on the network already pruned and
    compensated upstream.
    """
    scales = _checked_scales(net, scales)
    work = net
    shifts: dict[int, np.ndarray] = {}
    for k in sorted(scales):
        removed = scales[k] == 0
        if not removed.any():
            continue
        upstream = {j: s for j, s in scales.items() if j < k}
        acts = work.activations(x, scales=upstream)
        coupled = net.group(k).coupled
        step = {}
        for n in net.linear_indices():
            keys, units = net.input_columns(n)
            cols = keys == k
            if n in coupled or not cols.any():
                continue
            h = acts[net.inputs_of(n)[0]]
            layer = work.layers[n]
            mask = np.zeros(keys.size)
            mask[cols] = removed[units[cols]]
            silent = replace(layer, bias=np.zeros_like(layer.bias))
            sent = silent.forward(h * mask.reshape((1, -1) + (1,) * (h.ndim - 2)))
            step[n] = sent.reshape(len(sent), layer.units, -1).mean(axis=(0, 2))
            shifts[n] = shifts.get(n, 0.0) + step[n]
        work = with_bias_shift(work, step)
    return shifts


def with_bias_shift(net: Network, shifts: dict[int, np.ndarray] | None) -> Network:
    """A copy of the network whose linear layers' biases are shifted (the IR side of `compensation`)."""
    if not shifts:
        return net
    layers = list(net.layers)
    for n, delta in shifts.items():
        layers[n] = replace(layers[n], bias=layers[n].bias + np.asarray(delta, dtype=np.float64).reshape(-1))
    return replace(net, layers=layers)


# ---------------------------------------------------------------------------------------------------------
# which columns of the next layer a unit feeds (from the IR shapes only)

def _columns_of_next(net: Network, k: int) -> tuple[int, np.ndarray]:
    """(n, unit of group k owning each input column of n) for a group read by one linear layer n only (a chain);
    the chain reconstruction passes that fit "the next layer" use it."""
    readers = [i for i in net.linear_indices() if np.any(net.input_columns(i)[0] == k)]
    if len(readers) != 1:
        names = ", ".join(f"'{net.layers[i].name}'" for i in readers)
        raise UnsupportedModelError(f"the units of '{net.layers[k].name}' are read by {len(readers)} layers "
                                    f"({names}); refitting the next layer needs exactly one (a chain)")
    n = readers[0]
    keys, units = net.input_columns(n)
    if np.any(keys != k):
        raise UnsupportedModelError(f"layer '{net.layers[n].name}' reads units of several groups; refitting the "
                                    "next layer needs a chain")
    return n, np.ascontiguousarray(units)


def _checked_keep(scales: dict[int, np.ndarray], keep: dict[int, np.ndarray] | None) -> dict[int, np.ndarray]:
    """keep masks for every layer of scales: the given ones (which must keep every unit of positive scale), else
    scale > 0."""
    out = {}
    for k, factor in scales.items():
        mask = factor != 0
        if keep is not None and k in keep:
            given = np.asarray(keep[k], dtype=bool).reshape(-1)
            if given.shape != mask.shape or np.any(mask & ~given):
                raise ValueError(f"keep[{k}] must have one entry per unit and keep every unit of positive scale")
            mask = given
        out[k] = mask
    return out


def _checked_scales(net: Network, scales: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    scored = set(net.scored_indices())
    checked = {}
    for k, factor in scales.items():
        k = int(k)
        if k not in scored:
            raise ValueError(f"scales has layer position {k}, which is not a scored layer {sorted(scored)}")
        factor = np.asarray(factor, dtype=np.float64).reshape(-1)
        layer = net.layers[k]
        if factor.size != layer.units:
            raise ValueError(f"scales[{k}] has {factor.size} entries; layer '{layer.name}' has {layer.units} units")
        if np.any(~np.isfinite(factor)) or np.any(factor < 0):
            raise ValueError(f"scales[{k}] must be finite and >= 0 (0 removes a unit)")
        if not np.any(factor > 0):
            raise ValueError(f"scales[{k}] removes every unit of layer '{layer.name}'; at least one must remain")
        checked[k] = factor
    return checked


# ---------------------------------------------------------------------------------------------------------
# tensor edits

@dataclass
class _Edit:
    """What happens to one tensor: add a vector along an axis, scale along axes, keep indices along axes."""

    layer: int
    add: list[tuple[int, np.ndarray]] = field(default_factory=list)
    factors: dict[int, np.ndarray] = field(default_factory=dict)
    keeps: dict[int, np.ndarray] = field(default_factory=dict)

    def scale_along(self, axis: int, factor: np.ndarray) -> None:
        self.factors[axis] = self.factors.get(axis, 1.0) * factor

    def keep_along(self, axis: int, keep: np.ndarray) -> None:
        if axis in self.keeps and not np.array_equal(self.keeps[axis], keep):
            raise UnsupportedModelError(f"two different unit masks would cut axis {axis} of one tensor")
        self.keeps[axis] = keep

    def apply(self, value: np.ndarray, name: str) -> np.ndarray:
        for axis, vec in [*self.add, *self.factors.items(), *self.keeps.items()]:
            if axis >= value.ndim or value.shape[axis] != len(vec):
                raise UnsupportedModelError(f"tensor '{name}' {list(value.shape)} does not have {len(vec)} "
                                            f"entries on axis {axis} as its layer's units say")
        # arithmetic in float64, rounded once to the tensor's own type; pure cuts stay bit-exact
        out = value.astype(np.float64) if self.add or self.factors else value
        for axis, vec in self.add:
            out = out + vec.reshape((-1,) + (1,) * (out.ndim - axis - 1))
        for axis, vec in self.factors.items():
            out = out * vec.reshape((-1,) + (1,) * (out.ndim - axis - 1))
        for axis, keep in sorted(self.keeps.items()):
            out = np.compress(keep, out, axis=axis)
        return out.astype(value.dtype)


def _edit(edits: dict[str, _Edit], tensor: str, layer: int) -> _Edit:
    edit = edits.setdefault(tensor, _Edit(layer=layer))
    if edit.layer != layer:
        raise UnsupportedModelError(f"tensor '{tensor}' belongs to two layers; refusing to cut a shared tensor")
    return edit


class _TensorTable:
    """Constant tensors by name, whether initializers or Constant nodes; `set` keeps where they live."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.consts = {node.output[0]: node for node in graph.node if node.op_type == "Constant" and node.output}

    def __contains__(self, name: str) -> bool:
        return name in self.inits or name in self.consts

    def get(self, name: str) -> np.ndarray:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        attr = self.consts[name].attribute[0]
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
        raise UnsupportedModelError(f"Constant '{name}' stores its value as '{attr.name}', which cannot be cut")

    def set(self, name: str, value: np.ndarray) -> None:
        if name in self.inits:
            old = self.inits[name]
            new = numpy_helper.from_array(value, name)
            new.doc_string = old.doc_string
            new.metadata_props.extend(old.metadata_props)
            old.CopyFrom(new)
            return
        attr = self.consts[name].attribute[0]
        if attr.name == "value":
            attr.t.CopyFrom(numpy_helper.from_array(value, attr.t.name))
        elif attr.name == "value_floats":
            del attr.floats[:]
            attr.floats.extend(float(v) for v in value.reshape(-1))
        else:
            del attr.ints[:]
            attr.ints.extend(int(v) for v in value.reshape(-1))

    def add_initializer(self, value: np.ndarray, base: str) -> str:
        name = _unique_tensor_name(self.graph, base)
        tensor = numpy_helper.from_array(value, name)
        self.graph.initializer.append(tensor)
        self.inits[name] = self.graph.initializer[-1]
        return name


def _check_ownership(graph: onnx.GraphProto, net: Network, edits: dict[str, _Edit],
                     extra_refs: dict[int, list[ParamRef]]) -> None:
    """Every tensor about to change must belong to one layer and feed one of that layer's nodes only."""
    owners: dict[str, set[int]] = {}
    for i, layer in enumerate(net.layers):
        for ref in (*getattr(layer, "out_refs", ()), *getattr(layer, "in_refs", ()), *extra_refs.get(i, [])):
            owners.setdefault(ref.tensor, set()).add(i)
    users = consumers(graph)
    outputs = {o.name for o in graph.output}
    for name, edit in edits.items():
        layer = net.layers[edit.layer]
        others = sorted(owners.get(name, set()) - {edit.layer})
        if others:
            names = ", ".join(f"'{net.layers[i].name}'" for i in [edit.layer, *others])
            raise UnsupportedModelError(f"tensor '{name}' is shared by layers {names}; refusing to cut it")
        nodes = users.get(name, [])
        strangers = [nd for nd in nodes if nd.name not in layer.nodes]
        if len(nodes) != 1 or strangers or name in outputs:
            used = ", ".join(f"{nd.op_type} '{nd.name}'" for nd in nodes) or "no node"
            raise UnsupportedModelError(f"tensor '{name}' of layer '{layer.name}' is used by {used}"
                                        f"{' and is a graph output' if name in outputs else ''}; refusing to "
                                        "cut a tensor that other nodes read")


# ---------------------------------------------------------------------------------------------------------
# bias compensation on the graph

def _add_to_bias(graph: onnx.GraphProto, table: _TensorTable, net: Network, n: int, delta: np.ndarray,
                 edits: dict[str, _Edit], extra_refs: dict[int, list[ParamRef]]) -> None:
    """Shift layer n's bias by delta (IR units), in whichever tensor holds it; create one if there is none."""
    layer = net.layers[n]
    if not KINDS[layer.kind].linear:
        raise ValueError(f"compensation for layer {n} ('{layer.name}'), which is not linear")
    if delta.size != layer.units:
        raise ValueError(f"compensation[{n}] has {delta.size} entries; layer '{layer.name}' has {layer.units}")
    users = consumers(graph)
    refs = {ref.tensor: ref for ref in layer.out_refs}
    main = users[layer.in_refs[0].tensor][0]
    by_op = {}
    for ref in layer.out_refs:
        for node in users.get(ref.tensor, []):
            by_op.setdefault(node.op_type, (node, ref))
    if "BatchNormalization" in by_op:  # IR bias = (b - mean) * g + B: shift B
        bn = by_op["BatchNormalization"][0]
        _edit(edits, bn.input[2], n).add.append((refs[bn.input[2]].axis, delta))
        return
    if "Add" in by_op:
        node, ref = by_op["Add"]
        _edit(edits, ref.tensor, n).add.append((ref.axis, delta))
        return
    if len(main.input) > 2 and main.input[2] in refs:
        beta = next((a.f for a in main.attribute if a.name == "beta"), 1.0) if main.op_type == "Gemm" else 1.0
        ref = refs[main.input[2]]
        _edit(edits, ref.tensor, n).add.append((ref.axis, delta / beta))
        return
    dtype = table.get(layer.in_refs[0].tensor).dtype
    base = f"{main.name or layer.name}_bias"
    if main.op_type in ("Gemm", "Conv"):
        beta = next((a.f for a in main.attribute if a.name == "beta"), 1.0) if main.op_type == "Gemm" else 1.0
        old = np.zeros(layer.units)
        if len(main.input) > 2 and main.input[2]:  # a scalar Gemm C broadcast over units
            old = np.broadcast_to(table.get(main.input[2]).astype(np.float64).reshape(-1), (layer.units,))
        name = table.add_initializer((old + delta / beta).astype(dtype), base)
        while len(main.input) < 3:
            main.input.append("")
        replaced, main.input[2] = main.input[2], name
        if replaced and replaced in table.inits and len(users.get(replaced, [])) == 1:
            graph.initializer.remove(table.inits.pop(replaced))  # the scalar it replaces is now unused
    elif main.op_type == "MatMul":
        # give the MatMul an Add; the Add takes over the MatMul's output name so consumers stay as they are
        name = table.add_initializer(delta.astype(dtype), base)
        out = main.output[0]
        inner = _unique_tensor_name(graph, out + "_matmul")
        main.output[0] = inner
        add = helper.make_node("Add", [inner, name], [out], name=_unique_node_name(graph, base + "_add"))
        graph.node.insert(list(graph.node).index(main) + 1, add)
        net.layers[n] = replace(layer, nodes=(*layer.nodes, add.name))  # remove_units' local copy
    else:
        raise UnsupportedModelError(f"cannot add a bias to {main.op_type} node '{main.name}'")
    extra_refs.setdefault(n, []).append(ParamRef(name, 0))


def _set_group(graph: onnx.GraphProto, layer, channels: int) -> None:
    """A depthwise conv keeps one group per channel: its `group` attribute follows the kept channel count."""
    node = next(nd for nd in graph.node if nd.op_type == "Conv" and nd.name in layer.nodes)
    for attr in node.attribute:
        if attr.name == "group":
            attr.i = channels
            return
    node.attribute.append(helper.make_attribute("group", channels))


def _unique_tensor_name(graph: onnx.GraphProto, base: str) -> str:
    names = {t.name for t in graph.initializer} | {o for node in graph.node for o in node.output}
    names |= {vi.name for vi in graph.input} | {vi.name for vi in graph.output}
    name, i = base, 1
    while name in names:
        i += 1
        name = f"{base}_{i}"
    return name


def _unique_node_name(graph: onnx.GraphProto, base: str) -> str:
    names = {node.name for node in graph.node}
    name, i = base, 1
    while name in names:
        i += 1
        name = f"{base}_{i}"
    return name


# ---------------------------------------------------------------------------------------------------------
# reshape targets

def _resized(shape: tuple[int, ...], kept: np.ndarray) -> tuple[int, tuple[int, ...]] | None:
    """(axis, new shape) when the kept elements form a slab along one axis, else None."""
    for axis in range(len(shape)):
        others = tuple(a for a in range(len(shape)) if a != axis)
        line = kept.any(axis=others) if others else kept
        full = np.broadcast_to(line.reshape((-1,) + (1,) * (len(shape) - axis - 1)), shape)
        if np.array_equal(full, kept):
            return axis, shape[:axis] + (int(line.sum()),) + shape[axis + 1:]
    return None


def _reshape_node(graph: onnx.GraphProto, output: str) -> onnx.NodeProto:
    return next(node for node in graph.node if node.op_type == "Reshape" and node.output[0] == output)


def _resized_target(graph: onnx.GraphProto, table: _TensorTable, net: Network, pos: int,
                    channels: np.ndarray) -> list[int]:
    """The new constant target of the Reshape at `pos` once its input's channels with `channels` False are gone."""
    layer = net.layers[pos]
    node = _reshape_node(graph, layer.shape_node)
    target, _ = _read_target(table, node, layer.computed_target)
    kept_in = np.broadcast_to(channels.reshape((-1,) + (1,) * (len(layer.in_shape) - 1)), layer.in_shape)
    kept_out = kept_in.reshape(layer.out_shape)
    out_fit, in_fit = _resized(layer.out_shape, kept_out), _resized(layer.in_shape, kept_in)
    if out_fit is None or in_fit is None:
        raise UnsupportedModelError(f"Reshape node '{node.name}': the removed units do not form whole slices of "
                                    f"its output {list(layer.out_shape)}, so no smaller shape exists")
    axis, new_out = out_fit
    new = list(target)
    if new[axis + 1] > 0:
        new[axis + 1] = new_out[axis]
    allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
    if _reshaped(new[1:], in_fit[1], allowzero) != new_out:
        raise UnsupportedModelError(f"Reshape node '{node.name}': cannot rewrite target {target} for the "
                                    f"smaller input {list(in_fit[1])}")
    return new


def _reshaped(rest: list[int], in_shape: tuple[int, ...], allowzero: bool) -> tuple[int, ...] | None:
    """Per-sample shape a Reshape target (without its batch entry) gives for a per-sample input shape."""
    dims = [in_shape[i] if v == 0 and not allowzero and i < len(in_shape) else v for i, v in enumerate(rest)]
    total = int(np.prod(in_shape))
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1]))
        if known <= 0 or total % known:
            return None
        dims[dims.index(-1)] = total // known
    return tuple(dims) if int(np.prod(dims)) == total else None


def _read_target(table: _TensorTable, node: onnx.NodeProto, computed=None) -> tuple[list[int], str | None]:
    if len(node.input) > 1 and node.input[1] and node.input[1] not in table and computed is not None:
        return list(computed), ""  # computed by the graph from the input's shape
    if len(node.input) > 1 and node.input[1]:
        return [int(v) for v in table.get(node.input[1]).reshape(-1)], node.input[1]
    attr = next(a for a in node.attribute if a.name == "shape")
    return [int(v) for v in attr.ints], None


def _set_reshape_target(graph: onnx.GraphProto, table: _TensorTable, shape_node: str, target: list[int]) -> None:
    node = _reshape_node(graph, shape_node)
    _, source = _read_target(table, node, target)
    if source == "":  # computed from the input's shape: a constant target replaces the computation
        node.input[1] = table.add_initializer(np.array(target, dtype=np.int64), f"{node.name or 'reshape'}_target")
        return
    if source is None:  # opset 1-4: the target is the `shape` attribute
        attr = next(a for a in node.attribute if a.name == "shape")
        del attr.ints[:]
        attr.ints.extend(target)
        return
    old = table.get(source)
    value = np.array(target, dtype=old.dtype).reshape(old.shape)
    users = consumers(graph).get(source, [])
    if len(users) == 1 and source not in {o.name for o in graph.output}:
        table.set(source, value)
    else:  # the shape constant is shared: give this Reshape its own
        node.input[1] = table.add_initializer(value, f"{source}_{node.name or 'reshape'}")


# ---------------------------------------------------------------------------------------------------------
# finishing

def _sync_initializer_inputs(graph: onnx.GraphProto, ir_version: int) -> None:
    """Old exports list initializers as graph inputs too; keep those declarations' shapes right.

    Before IR version 4 every initializer must be a graph input, so new ones (compensation biases) get one.
    """
    inits = {t.name: t for t in graph.initializer}
    if ir_version < 4:
        listed = {vi.name for vi in graph.input}
        for t in graph.initializer:
            if t.name not in listed:
                graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for vi in graph.input:
        if vi.name in inits and vi.type.HasField("tensor_type"):
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in inits[vi.name].dims:
                shape.dim.add().dim_value = d


def _infer_without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on the model with the bytes of its big float tensors set aside (it needs only their
    types and dims), so models near or over the 2 GB protobuf limit can be inferred too."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    stash = [(t, t.raw_data) for t in model.graph.initializer if t.data_type in floats and len(t.raw_data) > 4096]
    for tensor, _ in stash:
        tensor.ClearField("raw_data")
    try:
        return onnx.shape_inference.infer_shapes(model)  # not strict: the validator's full check is
    finally:
        for tensor, raw in stash:
            tensor.raw_data = raw


def _reinfer_value_info(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Drop stale value_info and infer it again; a model that had none keeps none (its style is kept)."""
    old = {vi.name: vi for vi in model.graph.value_info}
    del model.graph.value_info[:]
    inferred = _infer_without_weights(model)
    if not original.graph.value_info:
        return
    fresh = {vi.name: vi for vi in inferred.graph.value_info}
    for tensor in model.graph.initializer:  # exporters (torch dynamo) also declare their weights
        if tensor.name in old and tensor.name not in fresh:
            fresh[tensor.name] = helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
    order = [name for name in old if name in fresh] + [name for name in fresh if name not in old]
    for name in order:
        vi = model.graph.value_info.add()
        vi.CopyFrom(fresh[name])
        if name in old:
            _keep_symbolic_dims(vi, old[name])
            vi.doc_string = old[name].doc_string
            del vi.metadata_props[:]
            vi.metadata_props.extend(old[name].metadata_props)


def _keep_symbolic_dims(new: onnx.ValueInfoProto, old: onnx.ValueInfoProto) -> None:
    """Where inference invented a dim name (unk__N) the exporter had named (e.g. 'batch'), keep the name."""
    if not (new.type.HasField("tensor_type") and old.type.HasField("tensor_type")):
        return
    new_dims, old_dims = new.type.tensor_type.shape.dim, old.type.tensor_type.shape.dim
    if len(new_dims) != len(old_dims):
        return
    for nd, od in zip(new_dims, old_dims):
        if nd.dim_param.startswith("unk__") and od.dim_param:
            nd.dim_param = od.dim_param


def _check_units(before: Network, after: Network, keep: dict[int, np.ndarray]) -> None:
    kinds = [layer.kind for layer in before.layers]
    if [layer.kind for layer in after.layers] != kinds:
        raise RuntimeError("the rewritten graph no longer has the original layer sequence")
    for i in before.linear_indices():
        want = int(before.output_keep(i, keep).sum())
        if after.layers[i].units != want:
            raise RuntimeError(f"layer '{before.layers[i].name}' has {after.layers[i].units} units after the "
                               f"rewrite, expected {want}")
