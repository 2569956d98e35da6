"""The network: a DAG of layers keyed by tensor names, in topological order, with a numpy forward pass."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .groups import INPUT, Dependencies, dependencies
from .kinds import LINEAR_KINDS, Layer


@dataclass
class Network:
    """Layers from one input to the logits (the last layer's output), in topological order.

    Every layer reads the tensors named in its `inputs` and writes the one named `output`; a layer built without
    them reads the previous layer's output (a chain). A layer is identified by its position in `layers`; a
    prunable channel group (`groups`) by the position of its first producer, its *key*.
    """

    layers: list[Layer]
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    logits_name: str = ""
    output_names: tuple[str, ...] = ()
    tail_ops: tuple[str, ...] = ()
    # the batch size the model's declared input accepts when it is fixed (e.g. 1); None when it is free.
    # Everything that runs the model (evaluation, validation, latency) feeds it batches of exactly this size.
    fixed_batch: int | None = None
    canonicalised: tuple[str, ...] = ()  # the exact ONNX passes that made the graph readable (canonical.py)
    _deps: Dependencies | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        previous = self.input_name
        for i, layer in enumerate(self.layers):
            if not layer.output:
                layer.output = f"{layer.name or layer.kind}#{i}"
            if not layer.inputs:
                layer.inputs = (previous,)
            previous = layer.output
        self._position = {self.input_name: INPUT}
        for i, layer in enumerate(self.layers):
            self._position[layer.output] = i
        self._inputs = []
        for i, layer in enumerate(self.layers):
            try:
                self._inputs.append(tuple(self._position[name] for name in layer.inputs))
            except KeyError as exc:
                raise ValueError(f"layer {i} ('{layer.name}') reads '{exc.args[0]}', which no earlier layer "
                                 "writes") from None
            if any(p >= i for p in self._inputs[-1]):
                raise ValueError(f"layer {i} ('{layer.name}') is not in topological order")

    # --- structure -------------------------------------------------------------------------------------

    def inputs_of(self, i: int) -> tuple[int, ...]:
        """Positions of the layers whose outputs layer i reads (INPUT = -1: the network's input)."""
        return self._inputs[i]

    def consumers_of(self, i: int) -> list[int]:
        """Positions of the layers that read layer i's output (i = INPUT: the network's input)."""
        return [j for j, ins in enumerate(self._inputs) if i in ins]

    def is_chain(self) -> bool:
        """Every layer reads the one before it and nothing else, and every prunable unit belongs to one layer (no
        depthwise conv carries it on): what the passes that refit "the next layer" need."""
        return all(ins == (i - 1,) for i, ins in enumerate(self._inputs)) and \
            all(len(g.producers) == 1 and not g.coupled for g in self.deps.prunable())

    @property
    def deps(self) -> Dependencies:
        """The channel-dependency map (groups.py), computed once."""
        if self._deps is None:
            self._deps = dependencies(self)
        return self._deps

    @property
    def groups(self):
        """Every channel group, frozen ones too, by key."""
        return self.deps.groups

    def group(self, key: int):
        return self.deps.group(key)

    def linear_indices(self) -> list[int]:
        """Positions of the Dense/Conv layers in `layers`."""
        return [i for i, layer in enumerate(self.layers) if layer.kind in LINEAR_KINDS]

    def scored_indices(self) -> list[int]:
        """Keys of the prunable channel groups (on a chain: every linear layer but the output layer)."""
        return [g.key for g in self.deps.prunable()]

    def input_columns(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """For linear layer i, the (group key, unit) of each input column (a channel for a conv, a feature for a
        dense layer); key -1 where the column belongs to no prunable group."""
        return self.deps.owners[self._inputs[i][0]]

    def input_keep(self, i: int, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Which input columns of linear layer i survive when only the `keep` units (group key -> mask) stay."""
        return self.channel_keep(self._inputs[i][0], keep)

    def channel_keep(self, p: int, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Which channels of layer p's output (p = INPUT: the network's input) survive under `keep`."""
        keys, units = self.deps.owners[p]
        mask = np.ones(keys.size, dtype=bool)
        for k in set(keys[keys >= 0].tolist()) & set(keep):
            cols = keys == k
            mask[cols] = np.asarray(keep[k], dtype=bool)[units[cols]]
        return mask

    def output_keep(self, i: int, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Which output units of linear layer i survive under `keep` (its own group's, or a coupled conv's)."""
        return self.channel_keep(i, keep)

    @property
    def num_classes(self) -> int:
        return int(np.prod(self.layers[-1].out_shape))

    @property
    def params(self) -> int:
        return sum(self.layers[i].params for i in self.linear_indices())

    @property
    def macs(self) -> int:
        return sum(self.layers[i].macs for i in self.linear_indices())

    # --- forward pass ----------------------------------------------------------------------------------

    def output_factors(self, scales: dict[int, np.ndarray] | None) -> dict[int, np.ndarray]:
        """What `scales` does to every layer: position -> per-channel factor applied to that layer's output.

        scales maps a group key to a per-unit factor (0 removes the unit; a positive factor is what folding it
        into the weights that read the unit gives). Every producer of the group gets the factor; a coupled
        (depthwise) layer gets 0 where the unit is removed; a group whose factor cannot be folded (not
        homogeneous) is deployed at full strength (factor > 0 counts as 1). A key that is a linear layer but no
        prunable group scales that layer's output."""
        out: dict[int, np.ndarray] = {}
        keys = {g.key: g for g in self.deps.prunable()}
        for k, factor in (scales or {}).items():
            factor = np.asarray(factor, dtype=np.float64).reshape(-1)
            g = keys.get(k)
            if g is None:
                out[k] = out.get(k, 1.0) * factor
                continue
            if not g.homogeneous:
                factor = (factor > 0).astype(np.float64)
            for p, chans in g.producers.items():
                full = np.ones(self.layers[p].units)
                full[chans] = factor
                out[p] = out.get(p, 1.0) * full
            for p, chans in g.coupled.items():
                full = np.ones(self.layers[p].units)
                full[chans] = (factor > 0).astype(np.float64)
                out[p] = out.get(p, 1.0) * full
        return out

    def activations(self, x: np.ndarray, scales: dict[int, np.ndarray] | None = None,
                    batch_size: int = 256) -> list[np.ndarray]:
        """Output of every layer for inputs x [N, *input_shape], in float64 (scales: see `output_factors`)."""
        return self._run(x, scales, batch_size, keep_all=True)

    def forward(self, x: np.ndarray, scales: dict[int, np.ndarray] | None = None,
                batch_size: int = 256) -> np.ndarray:
        """Logits [N, classes] in float64 (scales: see `output_factors`)."""
        return self._run(x, scales, batch_size, keep_all=False)[-1]

    def _run(self, x, scales, batch_size, keep_all):
        x = np.asarray(x, dtype=np.float64).reshape(-1, *self.input_shape)
        factors = self.output_factors(scales)
        last_use = {}
        for j, ins in enumerate(self._inputs):
            for p in ins:
                last_use[p] = j
        chunks = []
        for start in range(0, max(len(x), 1), batch_size):
            values = {INPUT: x[start:start + batch_size]}
            outs = []
            for i, layer in enumerate(self.layers):
                h = layer.forward(*(values[p] for p in self._inputs[i]))
                if i in factors:
                    h = h * factors[i].reshape((1, -1) + (1,) * (h.ndim - 2))
                values[i] = h
                if not keep_all:  # free what no later layer reads
                    for p in self._inputs[i]:
                        if last_use.get(p) == i:
                            values.pop(p, None)
                if keep_all:
                    outs.append(h)
            chunks.append(outs if keep_all else [values[len(self.layers) - 1]])
        return [np.concatenate([c[k] for c in chunks], axis=0) for k in range(len(chunks[0]))]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x).argmax(axis=1)
