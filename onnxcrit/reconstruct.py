"""Reconstruction after removal: new incoming weights (and bias) for the linear layer after each scored layer,
so that the pruned network reproduces what the unpruned one computed (METHOD.md section 8).

A reconstruction is a set of IR numbers: next linear layer position -> (its new weight, its new bias), in the
IR's terms (BatchNorm and Gemm's alpha folded in, weight [units, inputs] or [units, channels, kh, kw]). The
columns of removed inputs are zero (the rewrite cuts them) and the kept units' selection factors (their MIP
score) are folded in, so the reconstructed network, run with every kept unit at factor 1
(`Reconstruction.network`, `Reconstruction.scales`), is what `write` puts into the ONNX tensors the IR's
in_refs / out_refs name. Validation compares the written model with that network's forward pass.

Methods (bias, scale and lsq are fitted layer by layer in order on the pruned network's own activations, so each
fit sees the pruning and reconstruction upstream, with the unpruned network's pre-activation as target):
- none: the selection as it is (removed units cut, kept units at their factor);
- bias: the weights as selected, the bias refitted: the mean of what the unpruned layer computed minus what the
  pruned one computes (with nothing changed upstream and kept units at full strength this is exactly
  `rewrite.bias_compensation`: removed units' mean activation times their outgoing weights);
- scale: one least-squares factor per kept unit on its outgoing weights (Kwon et al. 2022), and the bias;
- lsq: ridge least squares of all the next layer's incoming weights on the kept inputs, and the bias (ThiNet /
  OBS-style), damped towards the selected weights by lambda = damp x the mean diagonal of the Gram matrix;
  a conv next layer is fitted on im2col rows (one per image and output position);
- merge: data-free neuron merging (Kim et al. 2020): each removed unit's outgoing weights, times the ratio of
  the norms of its and its partner's incoming weights (bias included), are added to the kept unit whose incoming
  weights are the most similar (cosine); exact when the two are proportional, as ReLU is positively homogeneous.
`auto` (in `Reconstructor`) builds every method and keeps the one most accurate on the evaluation data.
With nothing removed and every factor 1 no layer changes (each fit's optimum is then the layer itself).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import onnx

from .errors import UnsupportedModelError
from .frontend import to_network
from .ir import INPUT, KINDS, Dense, Network
from .ir.kinds import _gather_patches
from .rewrite import _check_ownership, _checked_keep, _checked_scales, _columns_of_next, _Edit, _TensorTable, \
    remove_units

METHODS = ("none", "bias", "scale", "lsq", "merge")
CHOICES = (*METHODS, "auto")
DAMP = 1e-2  # lsq and scale: lambda = DAMP x mean diagonal of the Gram matrix (docs/method.md)
MAX_IMAGES = 2048  # activation statistics: at most this many images of the data file
MAX_ELEMENTS = 1 << 24  # ... and at most this many activation values per layer for all of them (two are held)
CHUNK = 256  # images per forward / Gram step
MERGE_MIN_COSINE = 0.0  # merge a removed unit only into a kept one at least this similar
CACHE = 8  # builds the Reconstructor remembers (the search measures a candidate, then rounds and writes it)
CACHE_VALUES = 1 << 26  # the Reconstructor keeps the unpruned pre-activations when they are at most this many values


@dataclass
class Reconstruction:
    """New (weight, bias) per next linear layer, for the units `keep` leaves in the graph."""

    method: str
    keep: dict[int, np.ndarray]  # per scored layer: the units that stay in the graph
    layers: dict[int, tuple[np.ndarray, np.ndarray]]  # next linear layer position -> (IR weight, IR bias)

    def scales(self) -> dict[int, np.ndarray]:
        """The factors the reconstructed network runs with: 1 for a unit in the graph, 0 for a removed one."""
        return {k: mask.astype(np.float64) for k, mask in self.keep.items()}

    def network(self, net: Network) -> Network:
        """`net` with the reconstructed layers; `.forward(x, scales=self.scales())` is the written model."""
        layers = list(net.layers)
        for n, (weight, bias) in self.layers.items():
            layers[n] = replace(layers[n], weight=weight, bias=bias)
        return replace(net, layers=layers)


def reconstruct(net: Network, scales: dict[int, np.ndarray], x: np.ndarray | None, method: str = "lsq", *,
                keep: dict[int, np.ndarray] | None = None, damp: float = DAMP,
                unpruned: dict[int, np.ndarray] | None = None) -> Reconstruction:
    """Fit the layers after the scored layers of `scales` (a selection: 0 removes a unit, a positive factor
    scales it) on the inputs x, by `method` (one of METHODS; none and merge use no data, x may be None). keep:
    the units that stay in the graph (default scale > 0; `select.round_up` keeps some at scale 0). unpruned:
    `unpruned_activations(net, x)`, when the caller fits many selections on the same x. Layers after which
    nothing changed are left out."""
    if method not in METHODS:
        raise ValueError(f"unknown reconstruction {method!r}; expected one of {', '.join(METHODS)}")
    scales = _checked_scales(net, scales)
    keep = _checked_keep(scales, keep)
    factors = {k: np.where(keep[k], scales[k], 0.0) for k in scales}
    changed = {k for k in scales if not (keep[k].all() and np.all(factors[k] == 1.0))}
    if not net.is_chain():
        if method == "merge":
            raise UnsupportedModelError("reconstruction 'merge' pairs a removed unit with a kept one of the same "
                                        "layer; it needs a chain (no residual Add, Concat or depthwise conv)")
        return Reconstruction(method, keep, _fit_dag(net, method, keep, factors, changed, x, damp))
    if method in ("none", "merge"):
        return Reconstruction(method, keep, _data_free(net, method, keep, factors, changed))
    layers = list(net.layers)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    ref = None if unpruned is not None else np.asarray(x, dtype=np.float64).reshape(-1, *net.input_shape)
    cur = None  # the pruned network's activations, from the first change on
    previous, scored = None, set(net.scored_indices())  # previous: the last scored layer passed
    for i, layer in enumerate(net.layers):
        cached = unpruned.get(i) if unpruned is not None else None
        if cur is not None and KINDS[layer.kind].linear:  # something upstream changed: fit this layer
            n, cols = _columns_of_next(net, previous)
            assert n == i
            units = layers[previous].units
            kept_units = keep.get(previous, np.ones(units, dtype=bool))
            weight, bias, target = _fit(method, layer, ref, cur, factors.get(previous, np.ones(units)),
                                        kept_units, cols, damp, cached)
            layers[i] = replace(layer, weight=weight, bias=bias)
            out[i] = (weight, bias)
            cur = _forward_columns(layers[i], cur, np.flatnonzero(kept_units[cols]))
            ref = None if unpruned is not None else target
        else:
            ref = None if unpruned is not None else _forward(layer, ref)
            cur = None if cur is None else _forward(layer, cur)
        if i in scored:
            previous = i
        if i in scales and (cur is not None or i in changed):
            base = cur if cur is not None else (cached if cached is not None else ref)
            cur = base * keep[i].astype(np.float64).reshape((1, -1) + (1,) * (base.ndim - 2))
    return Reconstruction(method=method, keep=keep, layers=out)


def _reader_units(net: Network, n: int, keep: dict, factors: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear layer n's input columns as units of the groups they belong to: (unit index of each column, factor
    per unit, kept per unit), units numbered over every group n reads (a column of no group is its own unit)."""
    keys, units = net.input_columns(n)
    pairs = np.where(keys[:, None] >= 0, np.stack([keys, units], axis=1),
                     np.stack([np.full_like(keys, -1), np.arange(keys.size)], axis=1))
    uniq, cols = np.unique(pairs, axis=0, return_inverse=True)
    factor = np.ones(len(uniq))
    kept = np.ones(len(uniq), dtype=bool)
    for j, (k, u) in enumerate(uniq):
        if k in factors:
            factor[j], kept[j] = factors[k][u], keep[k][u]
    return np.asarray(cols).reshape(-1), factor, kept


def _fit_dag(net: Network, method: str, keep, factors, changed, x, damp) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Every linear layer reading a changed value, fitted in topological order on the pruned network's own
    activations with the unpruned network's pre-activation as target (the chain's rule, on a DAG); the units of a
    group are removed from every producer and coupled conv of the group. A depthwise or grouped conv is not
    refitted (its channels go with their groups); `none` folds the selection's factors into the readers."""
    groups = {g.key: g for g in net.deps.prunable()}
    shrunk = {p for k in changed for p in [*groups[k].producers, *groups[k].coupled]}
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if method == "none":
        for n in net.linear_indices():
            cols, factor, _ = _reader_units(net, n, keep, factors)
            layer = net.layers[n]
            if np.all(factor[cols] == 1) or getattr(layer, "group", 1) != 1:
                continue
            out[n] = (layer.weight * factor[cols].reshape((1, -1) + (1,) * (layer.weight.ndim - 2)),
                      layer.bias.copy())
        return out
    ref = {INPUT: np.asarray(x, dtype=np.float64).reshape(-1, *net.input_shape)}
    cur: dict[int, np.ndarray] = {}  # the pruned network's values that differ from the unpruned ones
    last_use = {p: i for i in range(len(net.layers)) for p in net.inputs_of(i)}
    layers = list(net.layers)
    for i, layer in enumerate(net.layers):
        ins = net.inputs_of(i)
        ref[i] = _forward_many(layer, [ref[p] for p in ins])
        if any(p in cur for p in ins):
            source = ins[0]
            if KINDS[layer.kind].linear and getattr(layer, "group", 1) == 1:
                cols, factor, kept = _reader_units(net, i, keep, factors)
                weight, bias, _ = _fit(method, layer, ref[source], cur[source], factor, kept, cols, damp, ref[i])
                layers[i] = replace(layer, weight=weight, bias=bias)
                out[i] = (weight, bias)
            cur[i] = _forward_many(layers[i], [cur.get(p, ref[p]) for p in ins])
        if i in shrunk:
            base = cur.get(i, ref[i])
            mask = net.output_keep(i, keep).astype(np.float64)
            cur[i] = base * mask.reshape((1, -1) + (1,) * (base.ndim - 2))
        for p in ins:  # only what later layers read stays in memory
            if last_use.get(p) == i:
                ref.pop(p, None)
                cur.pop(p, None)
    return out


def _forward_many(layer, inputs: list[np.ndarray]) -> np.ndarray:
    if len(inputs[0]) <= CHUNK:
        return layer.forward(*inputs)
    return np.concatenate([layer.forward(*(h[s:s + CHUNK] for h in inputs))
                           for s in range(0, len(inputs[0]), CHUNK)])


def unpruned_activations(net: Network, x: np.ndarray) -> dict[int, np.ndarray]:
    """Per linear layer: its output (the pre-activation a fit targets) in the unpruned network on x, float64."""
    h = np.asarray(x, dtype=np.float64).reshape(-1, *net.input_shape)
    out = {}
    for i, layer in enumerate(net.layers):
        h = _forward(layer, h)
        if KINDS[layer.kind].linear:
            out[i] = h
    return out


def _data_free(net: Network, method: str, keep, factors, changed) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """none and merge: the next layer of every changed scored layer, its selection folded in (and merged)."""
    layers = list(net.layers)
    out = {}
    for k in sorted(changed):
        n, cols = _columns_of_next(net, k)
        layer = net.layers[n]
        weight = layer.weight * factors[k][cols].reshape((1, -1) + (1,) * (layer.weight.ndim - 2))
        if method == "merge":
            weight = _merge(layer, layers[k], weight, keep[k], cols)
        layers[n] = replace(layer, weight=weight)
        out[n] = (weight, layer.bias.copy())
    return out


def write(model: onnx.ModelProto, net: Network, recon: Reconstruction,
          gains: dict[int, np.ndarray] | None = None) -> tuple[onnx.ModelProto, Network]:
    """The smaller model with the reconstruction written in: each reconstructed layer's weight tensor (its
    in_refs) set, its bias shifted where it lives (as bias compensation is), then the removed units cut by
    `rewrite.remove_units`. Returns (model, its Network); `model` is not changed. gains: `weight_gains`."""
    gains = weight_gains(model, net) if gains is None else gains
    out = onnx.ModelProto()
    out.CopyFrom(model)
    table = _TensorTable(out.graph)
    edits, shifts = {}, {}
    for n, (weight, bias) in sorted(recon.layers.items()):
        layer = net.layers[n]
        ref = layer.in_refs[0]
        old = table.get(ref.tensor)
        gain = gains[n].reshape((-1,) + (1,) * (weight.ndim - 1))
        # a unit whose gain is 0 (BatchNorm scale 0) outputs its bias whatever its weights: keep them
        value = np.where(gain != 0, weight / np.where(gain != 0, gain, 1.0), _ir_layout(old, ref.axis))
        table.set(ref.tensor, _tensor_layout(value, ref.axis).astype(old.dtype))
        edits[ref.tensor] = _Edit(layer=n)
        shifts[n] = np.asarray(bias, dtype=np.float64) - layer.bias
    _check_ownership(out.graph, net, edits, {})
    return remove_units(out, net, recon.scales(), compensation=shifts, keep=recon.keep)


def weight_gains(model: onnx.ModelProto, net: Network) -> dict[int, np.ndarray]:
    """Per linear layer after the first: the factor per output unit between its weight tensor and its IR weight
    (Gemm's alpha times the folded BatchNorm scale), read by the front end itself from a copy of the model whose
    weight tensors are all ones. Raises UnsupportedModelError when the IR weight is not that factor times the
    tensor (then writing new weights could not be exact)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    table = _TensorTable(probe.graph)
    first = min(net.scored_indices(), default=len(net.layers))
    targets = [n for n in net.linear_indices() if n > first]  # every layer a pruning upstream can change
    for n in targets:
        layer = net.layers[n]
        if len(layer.in_refs) != 1:
            raise UnsupportedModelError(f"layer '{layer.name}' does not name its weight tensor; cannot reconstruct")
        table.set(layer.in_refs[0].tensor, np.ones_like(table.get(layer.in_refs[0].tensor)))
    probed = to_network(probe)
    gains = {}
    for n in targets:
        layer, ref = net.layers[n], net.layers[n].in_refs[0]
        rows = probed.layers[n].weight.reshape(layer.units, -1)
        gain = rows[:, 0].copy()
        arranged = _ir_layout(table_value(model, ref.tensor).astype(np.float64), ref.axis)
        expected = gain.reshape((-1,) + (1,) * (arranged.ndim - 1)) * arranged
        scale = max(1.0, float(np.abs(layer.weight).max(initial=0.0)))
        if (np.any(np.abs(rows - gain[:, None]) > 1e-9 * np.abs(gain[:, None]).clip(1.0))
                or np.abs(expected - layer.weight).max(initial=0.0) > 1e-9 * scale):
            raise UnsupportedModelError(f"layer '{layer.name}': its weight is not a per-unit multiple of tensor "
                                        f"'{ref.tensor}'; cannot write a reconstruction into it")
        gains[n] = gain
    return gains


def table_value(model: onnx.ModelProto, name: str) -> np.ndarray:
    """A constant tensor's value (initializer or Constant node) by name."""
    return _TensorTable(model.graph).get(name)


def stats_images(net: Network, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The images reconstruction statistics are taken on: all of x, or an even random subset of at most
    MAX_IMAGES, fewer when a layer's activations for all of them would exceed MAX_ELEMENTS values."""
    x = np.asarray(x).reshape(-1, *net.input_shape)
    widest = max([int(np.prod(net.input_shape))] + [int(np.prod(layer.out_shape)) for layer in net.layers])
    cap = max(1, min(MAX_IMAGES, MAX_ELEMENTS // widest))
    if len(x) <= cap:
        return x
    pick = np.sort(np.random.default_rng(seed).choice(len(x), size=cap, replace=False))
    return x[pick]


@dataclass
class Built:
    """A selection rewritten with a reconstruction: the model, its Network, and the IR reference it must equal."""

    method: str
    model: onnx.ModelProto
    network: Network
    reference: Network  # reference.forward(x, scales=reference_scales) == the model's logits
    reference_scales: dict[int, np.ndarray]
    accuracy: float | None = None  # measured when `auto` compared methods
    candidates: dict[str, float] | None = None  # auto: accuracy of every method


class Reconstructor:
    """What the pipeline calls instead of `rewrite.remove_units` when a reconstruction is asked for: builds each
    selection (`rewrite`, same signature) with the reconstruction, remembers the last few builds so the search's
    measurement, the rounding and the final write do not fit the same selection twice, and gives validation the
    reconstructed network (`reference`). method "auto" builds every method of METHODS and keeps the one that
    `measure(model, network)` (accuracy in percent) finds best, ties to the earlier (simpler) method."""

    DEFAULT_DAMP = DAMP

    def __init__(self, model: onnx.ModelProto, net: Network, method: str, x: np.ndarray,
                 measure: Callable[[onnx.ModelProto, Network], float] | None = None, damp: float = DAMP,
                 seed: int = 0):
        if method not in CHOICES:
            raise ValueError(f"unknown reconstruction {method!r}; expected one of {', '.join(CHOICES)}")
        if method == "auto" and measure is None:
            raise ValueError("reconstruction 'auto' needs a measure to compare the methods with")
        self.model, self.net, self.method, self.damp, self.measure = model, net, method, damp, measure
        self.x = stats_images(net, x, seed)
        self.gains = weight_gains(model, net) if method != "none" else {}
        # the unpruned network's activations are the same for every selection: kept when they are small enough
        linear = [net.layers[i] for i in net.linear_indices()]
        size = len(self.x) * sum(int(np.prod(layer.out_shape)) for layer in linear)
        self.unpruned = unpruned_activations(net, self.x) if method in ("auto", "bias", "scale", "lsq") \
            and size <= CACHE_VALUES and net.is_chain() else None
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # the budget search may build candidates in parallel threads

    def build(self, scales: dict[int, np.ndarray], keep: dict[int, np.ndarray] | None = None) -> Built:
        key = _key(scales, keep)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        methods = METHODS if self.method == "auto" else (self.method,)
        if self.method == "auto" and not self.net.is_chain():
            methods = tuple(m for m in methods if m != "merge")  # merge pairs units within one layer
        best, seen = None, {}
        for method in methods:
            built = self._build(method, scales, keep)
            if len(methods) > 1:
                built.accuracy = seen[method] = float(self.measure(built.model, built.network))
            if best is None or (built.accuracy is not None and built.accuracy > best.accuracy):
                best = built
        if len(methods) > 1:
            best.candidates = seen
        with self._lock:
            self._cache[key] = best
            while len(self._cache) > CACHE:
                self._cache.popitem(last=False)
        return best

    def __getstate__(self) -> dict:
        """Pickled for Ray: without the lock (a worker makes its own) and the remembered builds (whole models; a
        worker builds what it measures)."""
        state = dict(self.__dict__)
        del state["_lock"], state["_cache"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._cache = OrderedDict()

    def rewrite(self, model: onnx.ModelProto, net: Network, scales: dict[int, np.ndarray], *,
                keep: dict[int, np.ndarray] | None = None, compensation=None) -> tuple[onnx.ModelProto, Network]:
        """`remove_units` with the reconstruction (for this Reconstructor's model and network)."""
        if model is not self.model or net is not self.net or compensation:
            raise ValueError("a Reconstructor rewrites its own model, without bias compensation")
        built = self.build(scales, keep)
        return built.model, built.network

    def reference(self, scales, keep=None) -> tuple[Network, dict[int, np.ndarray]]:
        """(network, scales) whose forward pass the model built for this selection computes."""
        built = self.build(scales, keep)
        return built.reference, built.reference_scales

    def summary(self, scales, keep=None) -> dict:
        """report["selection"]["reconstruct"] for the written selection."""
        built = self.build(scales, keep)
        out = {"method": self.method, "applied": built.method, "images": int(len(self.x)), "damping": self.damp}
        if built.candidates is not None:
            out["accuracy_by_method"] = {m: round(a, 4) for m, a in built.candidates.items()}
        return out

    def _build(self, method: str, scales, keep) -> Built:
        if method == "none":
            model, network = remove_units(self.model, self.net, scales, keep=keep)
            return Built(method, model, network, self.net, {k: np.asarray(v, dtype=np.float64)
                                                             for k, v in scales.items()})
        recon = reconstruct(self.net, scales, self.x, method, keep=keep, damp=self.damp, unpruned=self.unpruned)
        model, network = write(self.model, self.net, recon, self.gains)
        return Built(method, model, network, recon.network(self.net), recon.scales())


# ---------------------------------------------------------------------------------------------------------
# the fits

def _fit(method: str, layer, ref: np.ndarray, cur: np.ndarray, factor: np.ndarray, keep: np.ndarray,
         cols: np.ndarray, damp: float, target: np.ndarray | None = None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """New (weight, bias) of linear `layer` (whose input columns the units of the scored layer before it own as
    `cols`) from its unpruned inputs `ref` and pruned inputs `cur`; also returns the unpruned pre-activation
    (`target`, when the caller has it)."""
    units = layer.units
    start = layer.weight * factor[cols].reshape((1, -1) + (1,) * (layer.weight.ndim - 2))  # the selection's
    owner = np.repeat(cols, layer.per_column)  # the unit of `source` each feature (column or channel x window) belongs to
    kept = np.flatnonzero(keep[owner])
    # every statistic over the kept features only: a removed feature's weights are 0 whatever the method
    rows, sum_x, sum_z, gram, cross, target = _statistics(layer, ref, cur, target, np.flatnonzero(keep[cols]))
    mean_x, mean_z = sum_x / rows, sum_z / rows
    gram = gram - rows * np.outer(mean_x, mean_x)  # centred: the bias absorbs the means
    cross = cross - rows * np.outer(mean_z, mean_x)
    w0 = start.reshape(units, -1)
    if method == "bias":
        w = w0
    elif method == "lsq":
        lam = _damping(gram, damp)
        w = np.zeros_like(w0)
        w[:, kept] = np.linalg.solve(gram + lam * np.eye(len(kept)), (cross + lam * w0[:, kept]).T).T
    elif method == "scale":
        members = np.flatnonzero(keep)
        where = np.searchsorted(members, owner[kept])  # position of each kept feature's unit among the kept units
        onehot = np.zeros((len(kept), len(members)))
        onehot[np.arange(len(kept)), where] = 1.0
        wk = w0[:, kept]
        # unit j's contribution to output o is sum over its features c of w0[o, c] x[c]: the normal equations
        # of the per-unit factors are the block sums of (X'X) * (W'W) and of w0 * (Z'X)
        a_mat = onehot.T @ ((gram * (wk.T @ wk)) @ onehot)
        rhs = onehot.T @ np.sum(wk * cross, axis=0)
        lam = _damping(a_mat, damp)
        a = np.linalg.solve(a_mat + lam * np.eye(len(members)), rhs + lam)
        w = w0.copy()
        w[:, kept] = wk * a[where][None, :]
    else:
        raise ValueError(f"unknown reconstruction {method!r}")
    bias = mean_z - w[:, kept] @ mean_x
    return w.reshape(layer.weight.shape), bias, target


def _damping(gram: np.ndarray, damp: float) -> float:
    lam = damp * float(np.mean(np.diag(gram))) if gram.size else 0.0
    return lam if lam > 0 else 1.0  # inputs that never vary: any positive damping keeps the start weights


def _statistics(layer, ref: np.ndarray, cur: np.ndarray, target: np.ndarray | None, columns: np.ndarray):
    """Over the rows of the linear map (images, and output positions of a conv), on the features of the input
    `columns` (channels of a conv) only: the count, the sums of the pruned inputs x and of the unpruned
    pre-activation z, X'X, Z'X; and z itself (`target` when given, else computed from the unpruned inputs
    `ref`), as the layer's output."""
    sliced = _sliced(layer, columns)
    features = int(np.prod(sliced.weight.shape[1:]))
    w = layer.weight.reshape(layer.units, -1)
    rows, sum_x, sum_z = 0, np.zeros(features), np.zeros(layer.units)
    gram, cross = np.zeros((features, features)), np.zeros((layer.units, features))
    outputs = []
    for start in range(0, len(cur), CHUNK):
        d_cur = _design(sliced, cur[start:start + CHUNK], columns)
        if target is None:
            z = _design(layer, ref[start:start + CHUNK]) @ w.T + layer.bias
            outputs.append(_unrows(layer, z, min(CHUNK, len(cur) - start)))
        else:
            z = _rows(layer, target[start:start + CHUNK])
        rows += len(d_cur)
        sum_x += d_cur.sum(axis=0)
        sum_z += z.sum(axis=0)
        gram += d_cur.T @ d_cur
        cross += z.T @ d_cur
    return rows, sum_x, sum_z, gram, cross, (target if target is not None else np.concatenate(outputs))


def _sliced(layer, columns: np.ndarray):
    """The linear layer reading only its input `columns` (channels of a conv): what it computes on an input
    whose other columns are 0."""
    if isinstance(layer, Dense):
        return replace(layer, weight=layer.weight[:, columns], in_shape=(len(columns),))
    return replace(layer, weight=layer.weight[:, columns], in_shape=(len(columns), *layer.in_shape[1:]))


def _design(layer, h: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """The rows the layer multiplies by its weight: flat inputs, or a conv's im2col windows [N*P, C*K]; of the
    input `columns` only when given (`layer` then the `_sliced` one)."""
    if isinstance(layer, Dense):
        h = h.reshape(len(h), -1)
        return h if columns is None else h[:, columns]
    if columns is not None:
        h = h[:, columns]
    cols = _gather_patches(h, layer.patches(), 0.0)  # [N, C, P, K]
    n, c, p, k = cols.shape
    return cols.transpose(0, 2, 1, 3).reshape(n * p, c * k)


def _rows(layer, z: np.ndarray) -> np.ndarray:
    """A layer's output [N, units(, oh, ow)] as rows [N(*P), units], the order of `_design`."""
    if isinstance(layer, Dense):
        return z
    return z.reshape(len(z), layer.units, -1).transpose(0, 2, 1).reshape(-1, layer.units)


def _unrows(layer, z: np.ndarray, n: int) -> np.ndarray:
    if isinstance(layer, Dense):
        return z
    return z.reshape(n, -1, layer.units).transpose(0, 2, 1).reshape(n, *layer.out_shape)


def _merge(layer, source, start: np.ndarray, keep: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Each removed unit of `source` into its most similar kept one (cosine of incoming weights and bias)."""
    vectors = np.concatenate([source.weight.reshape(source.units, -1), source.bias[:, None]], axis=1)
    norms = np.linalg.norm(vectors, axis=1)
    unit = vectors / np.where(norms > 0, norms, 1.0)[:, None]
    members = np.flatnonzero(keep)
    weight = start.copy()
    for r in np.flatnonzero(~keep):
        if norms[r] == 0:
            continue  # a unit with no incoming weights and no bias outputs 0: nothing to carry over
        cosine = unit[members] @ unit[r]
        j = members[int(np.argmax(cosine))]
        if cosine.max() < MERGE_MIN_COSINE or norms[j] == 0:
            continue
        weight[:, cols == j] += (norms[r] / norms[j]) * layer.weight[:, cols == r]
    return weight


def _forward(layer, h: np.ndarray) -> np.ndarray:
    if len(h) <= CHUNK:
        return layer.forward(h)
    return np.concatenate([layer.forward(h[s:s + CHUNK]) for s in range(0, len(h), CHUNK)])


def _forward_columns(layer, h: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The linear layer's output on h, reading only the input `columns` (the others are 0 in h)."""
    h = h.reshape(len(h), -1)[:, columns] if isinstance(layer, Dense) else h[:, columns]
    return _forward(_sliced(layer, columns), h)


def _ir_layout(tensor: np.ndarray, in_axis: int) -> np.ndarray:
    """A weight tensor arranged as the IR's weight (outputs first): a 2-D tensor with inputs on axis 0 transposed."""
    return tensor.T if tensor.ndim == 2 and in_axis == 0 else tensor


def _tensor_layout(weight: np.ndarray, in_axis: int) -> np.ndarray:
    return weight.T if weight.ndim == 2 and in_axis == 0 else weight


def _key(scales, keep) -> bytes:
    parts = []
    for k in sorted(scales):
        parts.append(np.int64(k).tobytes() + np.asarray(scales[k], dtype=np.float64).tobytes())
        if keep is not None and k in keep:
            parts.append(np.asarray(keep[k], dtype=bool).tobytes())
    return b"|".join(parts)
