"""Fine-tuning and retraining of a (pruned) network: train with torch, write the weights back into the ONNX graph.

The network's body (input -> logits) is converted with onnx2torch and trained on the CPU with cross-entropy on
the logits (never on a Softmax/ArgMax tail). The trained numbers are then written back into the *original*
graph's initializers, so input/output names, dtypes, opset imports, tail nodes and metadata stay exactly as they
were; an export round trip would rebuild the graph and lose some of that. onnxruntime checks the result.

torch and onnx2torch are an optional extra: they are imported inside the functions, never at module level.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np
import onnx
from onnx import numpy_helper

from .data import Dataset, load_data
from .errors import InputError, UnsupportedModelError, ValidationError
from .frontend import constant_values, load_network
from .ir import Network
from .tolerance import allowed_error, max_error
from .validate import run_batched, run_tensors, session

KEPT_UNITS_KEY = "onnxcrit.kept_units"
MISSING_EXTRA = ("fine-tuning needs the 'finetune' extra: pip install 'onnxcrit[finetune]' "
                 "(torch==2.14.1, torchvision==0.29.1, onnx2torch)")

CONVERT_OPSET = 18  # opset the network body is presented to onnx2torch at (see _body)
ModelSource = Union[onnx.ModelProto, str, os.PathLike]
Progress = Callable[[int, int, float], None]


@dataclass
class FinetuneResult:
    """A trained model and what training did to it. Accuracies are percentages computed by onnxruntime.

    "before" is the model training started from: the given model for `finetune`, the freshly initialised one for
    `retrain`. losses holds the mean training loss of each epoch.
    """

    model: onnx.ModelProto
    train_accuracy_before: float
    train_accuracy_after: float
    eval_accuracy_before: float | None
    eval_accuracy_after: float | None
    epochs: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    init: str = "trained"  # "trained" (finetune), "random" or "original" (retrain)


def finetune(model: ModelSource, train, *, eval_data=None, epochs: int = 3, lr: float = 1e-3,
             batch_size: int = 64, seed: int = 0, threads: int = 1,
             progress: Progress | None = None) -> FinetuneResult:
    """Train a model's weights a little more on `train`, keeping its graph; return the trained model.

    train / eval_data: a Dataset or anything `load_data` reads (.npz path, (x, y) pair). BatchNormalization keeps
    its running statistics and Dropout is off (eval mode): fine-tuning polishes trained weights, and frozen
    statistics keep the exported graph equal to what was trained. progress(step, steps, loss) is called after
    every batch. Raises InputError (e.g. torch missing), UnsupportedModelError, ValidationError.
    """
    torch, onnx2torch = _require_torch()
    net, proto = load_network(model)
    return _train_model(torch, onnx2torch, net, proto, train, eval_data, epochs=epochs, lr=lr,
                        batch_size=batch_size, seed=seed, threads=threads, progress=progress,
                        train_mode=False, init="trained")


def retrain(model: ModelSource, train, *, eval_data=None, init: str | ModelSource = "random",
            kept: dict[str, list[int]] | None = None, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64,
            seed: int = 0, threads: int = 1, progress: Progress | None = None) -> FinetuneResult:
    """Re-initialise a (pruned) architecture and train it from scratch on `train`.

    init="random": every Dense/Conv layer gets torch's default initialisation (uniform in +-1/sqrt(fan_in) for
    weights and biases, what nn.Linear/nn.Conv2d's kaiming-uniform gives) drawn with `seed`; BatchNormalization
    is reset to identity (scale 1, shift 0, mean 0, variance 1).
    init=ONNX model or path: the *unpruned* network with its initial weights; they are sliced to the kept units,
    read from `kept` (layer name -> kept unit indices; layers not named keep every unit) or else from the
    model's metadata key 'onnxcrit.kept_units'.
    Training runs in train mode (BatchNorm uses batch statistics and its running statistics are written back;
    Dropout is active). With epochs=0 the initialised model is returned untrained.
    """
    torch, onnx2torch = _require_torch()
    net, proto = load_network(model)
    if isinstance(init, str) and init == "original":
        raise InputError("init='original' needs the ONNX file of the unpruned network with its initial weights: "
                         "pass init=PATH (or a ModelProto)")
    if isinstance(init, str) and init == "random":
        values, label = random_weights(proto, net, seed), "random"
    elif isinstance(init, (onnx.ModelProto, str, os.PathLike)):
        full_net, full_proto = load_network(init)
        if kept is None:
            kept = read_kept_units(proto)
            if kept is None:
                raise InputError(f"the pruned model has no '{KEPT_UNITS_KEY}' metadata telling which units of the "
                                 "unpruned network it kept: prune it with onnxcrit, or pass kept= (layer name -> "
                                 "kept unit indices)")
        values, label = sliced_weights(full_proto, full_net, proto, net, kept), "original"
    else:
        raise InputError(f"init must be 'random' or an ONNX model of the unpruned network, got {init!r}")
    start = write_weights(proto, values)
    return _train_model(torch, onnx2torch, net, start, train, eval_data, epochs=epochs, lr=lr,
                        batch_size=batch_size, seed=seed, threads=threads, progress=progress,
                        train_mode=True, init=label)


# -- kept-unit metadata --------------------------------------------------------------------------------------------

def read_kept_units(model: onnx.ModelProto) -> dict[str, list[int]] | None:
    """The model's 'onnxcrit.kept_units' metadata ({layer name: kept unit indices}), or None when absent."""
    for entry in model.metadata_props:
        if entry.key == KEPT_UNITS_KEY:
            try:
                raw = json.loads(entry.value)
                return {str(k): [int(i) for i in v] for k, v in raw.items()}
            except (ValueError, TypeError, AttributeError):
                raise InputError(f"metadata '{KEPT_UNITS_KEY}' is not JSON of the form "
                                 "{layer name: [unit indices]}") from None
    return None


def write_kept_units(model: onnx.ModelProto, kept: dict[str, list[int]]) -> None:
    """Record, in place, which units of the unpruned network each layer kept (what retrain(init=...) reads)."""
    value = json.dumps({name: [int(i) for i in idx] for name, idx in kept.items()}, separators=(",", ":"))
    for entry in model.metadata_props:
        if entry.key == KEPT_UNITS_KEY:
            entry.value = value
            return
    model.metadata_props.add(key=KEPT_UNITS_KEY, value=value)


# -- where a layer's numbers live in the graph ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Role:
    """What an ONNX tensor is to its linear layer: the op reading it and the input position."""

    layer: int  # position among the network's linear layers
    op: str
    position: int
    attrs: dict

    @property
    def is_stat(self) -> bool:
        return self.op == "BatchNormalization" and self.position in (3, 4)

    @property
    def is_bias(self) -> bool:
        return self.op == "Add" or (self.op in ("Gemm", "Conv") and self.position == 2)


def _node_attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _roles(model: onnx.ModelProto, net: Network) -> dict[str, _Role]:
    """Every tensor holding a linear layer's numbers (weights, biases, BatchNorm), in layer order."""
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for pos, name in enumerate(node.input):
            if name:
                readers.setdefault(name, []).append((node, pos))
    roles: dict[str, _Role] = {}
    for li, index in enumerate(net.linear_indices()):
        layer = net.layers[index]
        for ref in layer.in_refs + layer.out_refs:
            if ref.tensor in roles:
                continue
            found = readers.get(ref.tensor, [])
            if len(found) != 1:
                raise UnsupportedModelError(f"tensor '{ref.tensor}' of layer '{layer.name}' is read by {len(found)} "
                                            "nodes: shared weights cannot be trained separately")
            node, pos = found[0]
            roles[ref.tensor] = _Role(li, node.op_type, pos, _node_attrs(node))
    return roles


def _tensor_arrays(model: onnx.ModelProto, names) -> dict[str, np.ndarray]:
    values = constant_values(model.graph)
    return {name: values[name] for name in names}


def random_weights(model: onnx.ModelProto, net: Network, seed: int) -> dict[str, np.ndarray]:
    """Fresh values for every weight, bias and BatchNorm tensor: torch's default layer init, seeded."""
    roles = _roles(model, net)
    current = _tensor_arrays(model, roles)
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = {}
    for li, index in enumerate(net.linear_indices()):
        layer = net.layers[index]
        bound = 1.0 / np.sqrt(max(int(np.prod(layer.weight.shape[1:])), 1))
        weight = rng.uniform(-bound, bound, layer.weight.shape)  # [out, in...], the IR's layout
        bias = rng.uniform(-bound, bound, layer.units)
        bias_taken = False
        for name, role in roles.items():
            if role.layer != li:
                continue
            shape, dtype = current[name].shape, current[name].dtype
            if role.op == "BatchNormalization":
                fill = {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0}[role.position]
                new = np.full(shape, fill)
            elif role.is_bias:  # Gemm C, Conv B or an Add constant: the first one carries the bias, others 0
                new = np.zeros(shape) if bias_taken else bias.copy()
                if role.op == "Gemm" and not bias_taken:
                    new = new / float(role.attrs.get("beta", 1.0))
                bias_taken = True
            elif role.op == "Gemm":
                new = weight / float(role.attrs.get("alpha", 1.0))
                new = new if role.attrs.get("transB", 0) else new.T
            elif role.op == "MatMul":
                new = weight.T
            else:  # Conv
                new = weight
            values[name] = np.asarray(new).reshape(shape).astype(dtype)
    return values


def _kept_inputs(full_layer, full_prev, kept_prev: np.ndarray | None) -> np.ndarray | None:
    """Input indices of `full_layer` that the previous layer's kept units feed (flattened channels expand)."""
    if kept_prev is None:
        return None
    n_in = full_layer.weight.shape[1]
    block, rest = divmod(n_in, full_prev.units)
    if rest:
        raise InputError(f"layer '{full_layer.name}' has {n_in} inputs, not a multiple of the {full_prev.units} "
                         f"units of '{full_prev.name}'")
    return (kept_prev[:, None] * block + np.arange(block)[None, :]).reshape(-1)


def sliced_weights(full_model: onnx.ModelProto, full_net: Network, model: onnx.ModelProto, net: Network,
                   kept: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """The unpruned network's numbers cut down to the kept units, keyed by the pruned model's tensor names.

    Layers are matched by position, their tensors by what they are (op and input position); a bias the pruned
    model gained (e.g. a compensation Add) starts at 0. kept is looked up by the pruned layer's name, then by
    the unpruned one's; a layer not named keeps every unit.
    """
    if not full_net.is_chain():
        raise InputError("starting from the unpruned network's initial weights maps kept units layer by layer "
                         "along a chain; this network branches (use --init random)")
    lin, full_lin = net.linear_indices(), full_net.linear_indices()
    if len(lin) != len(full_lin):
        raise InputError(f"the initial-weights model has {len(full_lin)} linear layers, the pruned model "
                         f"{len(lin)}: it must be the unpruned network")
    names = {net.layers[i].name for i in lin} | {full_net.layers[i].name for i in full_lin}
    unknown = sorted(set(kept) - names)
    if unknown:
        raise InputError(f"kept units name unknown layers: {', '.join(unknown)}")
    roles, full_roles = _roles(model, net), _roles(full_model, full_net)
    full_values = _tensor_arrays(full_model, full_roles)
    pruned_values = _tensor_arrays(model, roles)
    values: dict[str, np.ndarray] = {}
    kept_prev = None
    for li, (i, fi) in enumerate(zip(lin, full_lin)):
        layer, full = net.layers[i], full_net.layers[fi]
        if layer.kind != full.kind:
            raise InputError(f"layer {li + 1} is {layer.kind} in the pruned model but {full.kind} in the "
                             "initial-weights model")
        idx = kept.get(layer.name, kept.get(full.name))
        kept_out = np.arange(full.units) if idx is None else np.asarray(list(idx), dtype=np.int64)
        if len(kept_out) != layer.units:
            raise InputError(f"layer '{layer.name}' has {layer.units} units but {len(kept_out)} kept indices")
        if len(kept_out) and (kept_out.min() < 0 or kept_out.max() >= full.units
                              or len(np.unique(kept_out)) != len(kept_out)):
            raise InputError(f"layer '{layer.name}': kept indices must be distinct units of the unpruned layer "
                             f"(0..{full.units - 1})")
        kept_in = _kept_inputs(full, full_net.layers[full_lin[li - 1]], kept_prev) if li else None
        mine, theirs = _by_kind(roles, li), _by_kind(full_roles, li)
        if set(theirs) - set(mine):
            missing = ", ".join(theirs[k] for k in sorted(set(theirs) - set(mine)))
            raise InputError(f"layer '{layer.name}' of the pruned model has no counterpart of the initial-weights "
                             f"model's tensors {missing}")
        for kind, name in mine.items():
            if kind not in theirs:  # a bias the pruning added (e.g. a compensation Add): the unpruned net had 0
                if not roles[name].is_bias:
                    raise InputError(f"tensor '{name}' of layer '{layer.name}' has no counterpart in the "
                                     "initial-weights model")
                values[name] = np.zeros_like(pruned_values[name])
                continue
            full_name = theirs[kind]
            array = full_values[full_name]
            for ref in full.out_refs:
                if ref.tensor == full_name:
                    array = np.take(array, kept_out, axis=ref.axis)
            for ref in full.in_refs:
                if ref.tensor == full_name and kept_in is not None:
                    array = np.take(array, kept_in, axis=ref.axis)
            want = pruned_values[name]
            if array.shape != want.shape:
                raise InputError(f"tensor '{full_name}' of the initial-weights model, cut to the kept units, has "
                                 f"shape {list(array.shape)}; the pruned model's '{name}' has {list(want.shape)}")
            values[name] = array.astype(want.dtype)
        kept_prev = kept_out
    return values


def _by_kind(roles: dict[str, _Role], layer: int) -> dict[tuple, str]:
    """A layer's tensors keyed by what they are: (op, input position, occurrence); an Add is a bias either side."""
    out: dict[tuple, str] = {}
    for name, role in roles.items():
        if role.layer != layer:
            continue
        what = ("Add", None) if role.op == "Add" else (role.op, role.position)
        count = sum(1 for key in out if key[:2] == what)
        out[(*what, count)] = name
    return out


def write_weights(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of the model with the named initializers (or Constant outputs) replaced; nothing else changes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    todo = dict(values)
    for init in out.graph.initializer:
        if init.name in todo:
            array = np.asarray(todo.pop(init.name))
            old = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(array.astype(old.dtype).reshape(old.shape), init.name))
    for node in out.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in todo:
            array = np.asarray(todo.pop(node.output[0]))
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(array, node.output[0])))
    if todo:
        raise UnsupportedModelError(f"tensors {', '.join(sorted(todo))} are neither initializers nor Constants")
    return out


# -- torch ---------------------------------------------------------------------------------------------------------

def _require_torch():
    try:
        import torch
        import onnx2torch
    except ImportError:
        raise InputError(MISSING_EXTRA) from None
    return torch, onnx2torch


def _body(model: onnx.ModelProto, net: Network, names) -> onnx.ModelProto:
    """The input -> logits part of the graph, with the given Constant outputs turned into initializers."""
    body = onnx.ModelProto()
    body.CopyFrom(model)
    graph = body.graph
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    needed, todo = set(), [net.logits_name]
    while todo:
        i = producer.get(todo.pop())
        if i is None or i in needed:
            continue
        needed.add(i)
        todo.extend(n for n in graph.node[i].input if n)
    consts = constant_values(graph)
    nodes = []
    for i, node in enumerate(graph.node):
        if i not in needed:
            continue
        if node.op_type == "Constant" and node.output[0] in names:
            graph.initializer.append(numpy_helper.from_array(consts[node.output[0]], node.output[0]))
            continue
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in consts:
            # allowzero only matters for a 0 in the target shape, and onnx2torch refuses allowzero=1 (dynamo
            # exports it everywhere)
            if not np.any(consts[node.input[1]] == 0):
                for attr in node.attribute:
                    if attr.name == "allowzero":
                        attr.i = 0
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {n for node in nodes for n in node.input}
    kept_inits = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.output[:]
    graph.output.append(onnx.helper.make_empty_tensor_value_info(net.logits_name))
    # onnx2torch 1.5 lacks converters for the newest versions of ops whose float semantics did not change
    # (Reshape-19/21, Flatten-21, ...); the body's ops all have an onnx2torch converter at opset 18
    for entry in body.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = min(entry.version, CONVERT_OPSET)
    return body


@dataclass
class _Slot:
    """An ONNX tensor held by a torch module attribute, and how to turn the torch value into the ONNX one."""

    module: object
    attr: str
    to_onnx: Callable[[np.ndarray], np.ndarray]

    def value(self) -> np.ndarray:
        return getattr(self.module, self.attr).detach().cpu().numpy()


def _slots(torch, gm, body: onnx.ModelProto) -> dict[str, _Slot]:
    """Where each initializer of the body lives in onnx2torch's module (converted with attach_onnx_mapping)."""
    nn = torch.nn
    by_output = {node.output[0]: node for node in body.graph.node if node.output}
    slots: dict[str, _Slot] = {}
    for fx_node in gm.graph.nodes:
        if fx_node.op != "call_module":
            continue
        module = gm.get_submodule(fx_node.target)
        mapping = getattr(module, "onnx_mapping", None)
        if mapping is None or not mapping.outputs:
            continue
        node = by_output.get(mapping.outputs[0])
        if node is None:
            continue
        inner = module[-1] if isinstance(module, nn.Sequential) else module  # Conv with asymmetric padding
        if node.op_type == "Gemm" and isinstance(inner, nn.Linear):
            attrs = _node_attrs(node)
            alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
            trans = bool(attrs.get("transB", 0))
            slots[node.input[1]] = _Slot(inner, "weight", lambda w, a=alpha, t=trans: (w / a) if t else (w / a).T)
            if len(node.input) > 2 and node.input[2]:
                slots[node.input[2]] = _Slot(inner, "bias", lambda b, s=beta: b / s)
        elif node.op_type == "Conv" and isinstance(inner, nn.modules.conv._ConvNd):
            slots[node.input[1]] = _Slot(inner, "weight", lambda w: w)
            if len(node.input) > 2 and node.input[2]:
                slots[node.input[2]] = _Slot(inner, "bias", lambda b: b)
        elif node.op_type == "BatchNormalization" and isinstance(inner, nn.modules.batchnorm._BatchNorm):
            for pos, attr in zip(range(1, 5), ("weight", "bias", "running_mean", "running_var")):
                slots[node.input[pos]] = _Slot(inner, attr, lambda v: v)
        else:  # initializers passed as inputs: buffers of gm.initializers, in the order of the ONNX inputs
            for arg, name in zip(fx_node.args, mapping.inputs):
                if getattr(arg, "op", None) == "get_attr":
                    owner, _, attr = arg.target.rpartition(".")
                    slots[name] = _Slot(gm.get_submodule(owner), attr, lambda v: v)
    return slots


def _make_trainable(torch, slot: _Slot) -> None:
    module = slot.module
    if slot.attr in module._buffers:  # onnx2torch keeps bare initializers as buffers
        tensor = module._buffers.pop(slot.attr)
        module.register_parameter(slot.attr, torch.nn.Parameter(tensor.detach().clone()))
    getattr(module, slot.attr).requires_grad_(True)


def _onnx_values(slots: dict[str, _Slot], shapes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: slot.to_onnx(slot.value()).reshape(shapes[name].shape).astype(shapes[name].dtype)
            for name, slot in slots.items()}


def accuracy(model: onnx.ModelProto, net: Network, data: Dataset) -> float:
    """Percent of samples whose logits (computed by onnxruntime) have the label as their largest entry."""
    return 100.0 * float(np.mean(_ort_logits(model, net, data.x).argmax(axis=1) == data.y))


def _ort_logits(model: onnx.ModelProto, net: Network, x: np.ndarray) -> np.ndarray:
    return run_tensors(model, net.input_name, x, [net.logits_name], dtype=net.input_dtype)[0].reshape(len(x), -1)


def _train_model(torch, onnx2torch, net: Network, proto: onnx.ModelProto, train, eval_data, *, epochs, lr,
                 batch_size, seed, threads, progress, train_mode: bool, init: str) -> FinetuneResult:
    if int(epochs) != epochs or epochs < 0:
        raise InputError(f"epochs must be a whole number >= 0, got {epochs}")
    if not lr > 0:
        raise InputError(f"learning rate must be > 0, got {lr}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise InputError(f"batch size must be a whole number >= 1, got {batch_size}")
    train = load_data(train, net, what="training data")
    eval_data = None if eval_data is None else load_data(eval_data, net, what="evaluation data")

    roles = _roles(proto, net)
    current = _tensor_arrays(proto, roles)
    if any(a.dtype.kind != "f" or a.dtype == np.float16 for a in current.values()):
        raise UnsupportedModelError("training needs float32 or float64 weights (float16 is not supported)")
    body = _body(proto, net, set(roles))

    started = time.perf_counter()
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):  # seed Dropout without touching the caller's generator
            torch.manual_seed(seed)
            gm, slots = _convert(torch, onnx2torch, body, roles, current)
            params = [getattr(s.module, s.attr) for n, s in slots.items() if not roles[n].is_stat]
            losses = _fit(torch, gm, params, train, epochs, lr, batch_size, seed, progress, train_mode)
            gm.eval()
            result = write_weights(proto, _onnx_values(slots, current))
            sample = train.x[:512]
            with torch.no_grad():
                torch_logits = gm(torch.from_numpy(np.ascontiguousarray(sample))).numpy()
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
    seconds = time.perf_counter() - started
    check_trained(proto, result, net, sample, torch_logits)
    return FinetuneResult(
        model=result,
        train_accuracy_before=accuracy(proto, net, train),
        train_accuracy_after=accuracy(result, net, train),
        eval_accuracy_before=None if eval_data is None else accuracy(proto, net, eval_data),
        eval_accuracy_after=None if eval_data is None else accuracy(result, net, eval_data),
        epochs=int(epochs), seconds=seconds, losses=losses, init=init)


def _convert(torch, onnx2torch, body: onnx.ModelProto, roles: dict[str, _Role], current: dict[str, np.ndarray]):
    """onnx2torch's module for the body, and the slot of every layer tensor (made trainable, stats excepted)."""
    try:
        gm = onnx2torch.convert(body, attach_onnx_mapping=True)
    except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, ... for what it lacks
        raise UnsupportedModelError(f"onnx2torch cannot convert the network ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    slots = _slots(torch, gm, body)
    missing = sorted(set(roles) - set(slots))
    if missing:
        raise UnsupportedModelError(f"cannot find tensors {', '.join(missing)} in the converted network")
    slots = {name: slots[name] for name in roles}
    _check_mapping(_onnx_values(slots, current), current)
    for p in gm.parameters():
        p.requires_grad_(False)
    for name, slot in slots.items():
        if not roles[name].is_stat:
            _make_trainable(torch, slot)
    return gm, slots


def _check_mapping(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Before training: reading the converted module back must give the graph's own numbers."""
    for name, want in expected.items():
        if not np.allclose(found[name], want, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(want).max(initial=0)))):
            raise UnsupportedModelError(f"tensor '{name}' does not read back from the converted network unchanged "
                                        "(unexpected onnx2torch conversion)")


def _fit(torch, gm, params, train: Dataset, epochs, lr, batch_size, seed, progress, train_mode) -> list[float]:
    """Adam on the cross-entropy of the logits; mini-batches shuffled by a generator seeded with `seed`."""
    functional = torch.nn.functional
    x = torch.from_numpy(np.ascontiguousarray(train.x))
    y = torch.from_numpy(train.y.astype(np.int64))
    n = len(x)
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(params, lr=lr)
    # a trailing batch of one sample would break BatchNorm's batch statistics in train mode
    cuts = [s for s in range(0, n, batch_size) if not (train_mode and n - s == 1 and s > 0)]
    steps, step = epochs * len(cuts), 0
    gm.train(train_mode)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order)
        total = 0.0
        seen = 0
        for start in cuts:
            idx = perm[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            logits = gm(x[idx])
            loss = functional.cross_entropy(logits.reshape(len(idx), -1), y[idx])
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            if not np.isfinite(value):
                raise InputError(f"training diverged (loss {value}); try a smaller learning rate than {lr}")
            total += value * len(idx)
            seen += len(idx)
            step += 1
            if progress is not None:
                progress(step, steps, value)
        losses.append(total / max(seen, 1))
    return losses


def check_trained(original: onnx.ModelProto, trained: onnx.ModelProto, net: Network, x: np.ndarray,
                  torch_logits: np.ndarray | None = None) -> None:
    """The trained model must be valid, keep the interface, run in onnxruntime, and match torch's logits."""
    try:
        onnx.checker.check_model(trained)
    except onnx.checker.ValidationError as exc:
        raise ValidationError(f"trained model fails onnx.checker: {str(exc).strip().splitlines()[0]}") from None

    def interface(m):
        io = [(v.name, v.type.tensor_type.elem_type, len(v.type.tensor_type.shape.dim))
              for v in list(m.graph.input) + list(m.graph.output)]
        return io, sorted((o.domain, o.version) for o in m.opset_import)
    if interface(original) != interface(trained):
        raise ValidationError("trained model changed the inputs, outputs or opset imports")
    try:
        run_batched(session(trained), net.input_name, x[:8].astype(net.input_dtype))
        logits = run_tensors(trained, net.input_name, x, [net.logits_name], dtype=net.input_dtype)[0]
    except Exception as exc:
        raise ValidationError(f"onnxruntime cannot run the trained model ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if torch_logits is not None:
        logits = logits.reshape(torch_logits.shape)
        tol = allowed_error(torch_logits, logits.dtype)
        gap = max_error(logits, torch_logits)
        if gap > tol:
            raise ValidationError(f"onnxruntime's logits differ from torch's by {gap:.3g} (tolerance {tol:.3g})")
