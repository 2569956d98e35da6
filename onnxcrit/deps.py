"""Which channels of an ONNX model must be removed together, named by the model's own nodes and tensors.

The map itself is the IR's (`ir/groups.py`, computed once per network and read by the formulation, the
selection and the rewrite); this module only says it in ONNX terms, for reports and for users who want to see
the groups of a file and tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from .frontend import load_network


@dataclass
class Group:
    """Units (channels) that go together: created by `producers`, read by `consumers` (node names)."""

    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    units: int
    frozen: str | None = None  # why the group is kept whole, None when it can be pruned
    tensors: dict[str, list[int]] = field(default_factory=dict)  # tensor -> its channel of each unit, in order


def dependency_groups(model: onnx.ModelProto) -> list[Group]:
    """The channel-dependency map of `model`, one Group per set of producers (a depthwise conv the units pass
    through counts as one of them), in the order of the groups' first producers."""
    net, _ = load_network(model)

    def node(p: int) -> str:
        layer = net.layers[p]
        return layer.nodes[0] or layer.name

    out = []
    for g in net.groups:
        made = sorted({node(p) for p in [*g.producers, *g.coupled]})
        readers = sorted({node(i) for i in net.linear_indices()
                          if any(net.inputs_of(i)[0] == p for p in g.values)})
        tensors = {}
        for p, chans in g.values.items():
            name = net.layers[p].output if p >= 0 else net.input_name
            tensors[name] = [c for unit in chans for c in unit]
        out.append(Group(producers=tuple(made), consumers=tuple(readers), units=g.units, frozen=g.frozen,
                         tensors=tensors))
    return out
