"""Which channels must be removed together: the channel-dependency map of a network, computed once.

A unit can only go where every tensor that carries it loses it too. Every (layer output, channel) pair is a node
of a union-find and every layer adds edges with an index map (Torch-Pruning's DependencyGraph is the anchor;
METHOD.md section 7):

- a linear layer (Dense, Conv with group 1) cuts the chain: its output channels are new units (it is their
  *producer*) and its input channels are columns it reads;
- per-channel layers (ReLU, pooling) pass channel c through;
- a merge of activations (residual Add) joins its operands and its output, channel by channel: in a ResNet stage
  the stem, every block's last conv and every Add share units;
- Concat on the channel axis maps its inputs to offset ranges of its output (the inputs stay independent);
- Flatten/Reshape into a dense layer gives channel c the columns c*H*W .. (c+1)*H*W - 1 (an output channel
  that mixes input channels freezes both);
- a depthwise Conv (group == C_in == C_out) joins its input and output channels (*coupled*: its channels go with
  the group, and its `group` attribute is rewritten);
- a grouped Conv that is not depthwise, the input stage, the network's input and its output (the logits) freeze
  every channel they touch.

A *unit* is a connected component that some producer creates; units with the same producers form a `Group`
(e.g. the C channels of a ResNet stage), keyed by the position of its first producer. A group that touches a
frozen channel is kept whole and says why. Everything that removes units reads this map: the masked forward
pass, the formulation, the selection's costs and the rewrite.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .kinds import KINDS, Add, Concat, Reshape

INPUT = -1  # the position standing for the network's input


@dataclass
class Group:
    """Units that go together. `producers` / `coupled` map a layer position to that layer's output channel of each
    unit (`coupled`: depthwise convs the units pass through); `values` maps every layer output (and INPUT) that
    carries the units to its channels of each unit (several after a flatten: a channel's H*W features)."""

    key: int
    units: int
    producers: dict[int, np.ndarray]
    coupled: dict[int, np.ndarray] = field(default_factory=dict)
    values: dict[int, list[list[int]]] = field(default_factory=dict)
    frozen: str | None = None  # why the group is kept whole; None when it can be pruned
    # a kept unit's positive factor can be folded into the weights that read it: every layer the units pass
    # through between their producers and their readers is positively homogeneous (a coupled depthwise conv is
    # not: its bias does not scale); otherwise kept units are deployed at full strength
    homogeneous: bool = True


@dataclass
class Dependencies:
    """The groups of a network and, for every layer output, which group unit each of its channels is."""

    groups: list[Group]
    # position -> (group key per channel, unit per channel); key -1 where the channel belongs to no prunable group
    owners: dict[int, tuple[np.ndarray, np.ndarray]]

    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.frozen is None]

    def group(self, key: int) -> Group:
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(key)


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


def _channels(shape: tuple[int, ...]) -> int:
    return int(shape[0]) if shape else 1


def _reshape_owner(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray | None:
    """The input channel of each output channel of a row-major reshape, or None when one mixes channels."""
    c_in = _channels(in_shape)
    owner = np.broadcast_to(np.arange(c_in).reshape((-1,) + (1,) * (len(in_shape) - 1)), in_shape)
    owner = np.asarray(owner).reshape(out_shape)
    flat = owner.reshape(_channels(out_shape), -1)
    if np.any(flat != flat[:, :1]):
        return None
    return flat[:, 0]


def dependencies(net) -> Dependencies:
    """The channel-dependency map of `net` (an ir.Network)."""
    layers = net.layers
    uf = _UnionFind()
    base: dict[int, int] = {INPUT: uf.add(_channels(net.input_shape))}
    count: dict[int, int] = {INPUT: _channels(net.input_shape)}
    for i, layer in enumerate(layers):
        count[i] = _channels(layer.out_shape)
        base[i] = uf.add(count[i])
    frozen: dict[int, str] = {}
    producers: dict[int, set[int]] = {}  # slot -> producer positions
    coupled: dict[int, set[int]] = {}

    def freeze(p: int, why: str) -> None:
        for c in range(count[p]):
            frozen.setdefault(base[p] + c, why)

    def join(a: int, b: int, index=None) -> None:
        """Union channel index[c] of a with channel c of b."""
        index = np.arange(count[b]) if index is None else index
        for c in range(count[b]):
            uf.union(base[a] + int(index[c]), base[b] + c)

    freeze(INPUT, f"network input '{net.input_name}'")
    for i, layer in enumerate(layers):
        kind = KINDS[layer.kind]
        ins = net.inputs_of(i)
        if kind.linear:
            group = getattr(layer, "group", 1)
            if group == 1:
                for c in range(count[i]):
                    producers.setdefault(base[i] + c, set()).add(i)
            elif layer.depthwise:
                join(ins[0], i)
                for c in range(count[i]):
                    coupled.setdefault(base[i] + c, set()).add(i)
            else:
                why = f"grouped convolution '{layer.name}' (group {group})"
                freeze(ins[0], why)
                freeze(i, why)
        elif kind.per_channel or isinstance(layer, Add):
            for p in ins:
                join(p, i)
        elif isinstance(layer, Concat):
            offset = 0
            for p in ins:
                join(i, p, np.arange(offset, offset + count[p]))
                offset += count[p]
        elif isinstance(layer, Reshape):
            owner = _reshape_owner(layer.in_shape, layer.out_shape)
            if owner is None:
                why = f"reshape '{layer.name}' {list(layer.in_shape)} -> {list(layer.out_shape)} mixes channels"
                freeze(ins[0], why)
                freeze(i, why)
            else:
                join(ins[0], i, owner)
        else:  # the input stage (normalisation, layout): it sees the network's input only
            freeze(i, f"input stage '{layer.name}'")
    freeze(len(layers) - 1, f"graph output '{net.logits_name or layers[-1].name}'")

    classes: dict[int, list[int]] = {}
    for slot in range(len(uf.parent)):
        classes.setdefault(uf.find(slot), []).append(slot)
    where = {}  # slot -> (position, channel)
    for p, start in base.items():
        for c in range(count[p]):
            where[start + c] = (p, c)

    by_producers: dict[tuple[int, ...], list[list[int]]] = {}
    for slots in classes.values():
        made = tuple(sorted(set().union(*(producers.get(s, set()) for s in slots))))
        if made:
            by_producers.setdefault(made, []).append(sorted(slots))
    seen: dict[int, int] = {}
    for made in by_producers:
        for p in made:
            seen[p] = seen.get(p, 0) + 1

    groups = []
    for made, units in by_producers.items():
        key = made[0]
        reasons = [frozen[s] for unit in units for s in unit if s in frozen]
        split = [p for p in made if seen[p] > 1]
        if split:
            reasons.append(f"the channels of '{layers[split[0]].name}' belong to several coupled groups")
        values: dict[int, list[list[int]]] = {}
        for u, unit in enumerate(units):
            for s in unit:
                p, c = where[s]
                values.setdefault(p, [[] for _ in units])[u].append(c)
        members = sorted(set().union(*(coupled.get(s, set()) for unit in units for s in unit)))
        bad = [p for p in [*made, *members] if any(len(ch) != 1 for ch in values[p])]
        if bad:
            reasons.append(f"'{layers[bad[0]].name}' feeds itself through a merge")
        # the units in the key layer's channel order
        order = sorted(range(len(units)), key=lambda u: min(values[key][u]) if values[key][u] else -1)
        units = [units[u] for u in order]
        values = {p: [chans[u] for u in order] for p, chans in values.items()}
        one = {p: np.array([ch[0] if ch else -1 for ch in values[p]], dtype=np.int64) for p in [*made, *members]}
        passes = [p for p in values if p >= 0 and p not in made]
        homogeneous = all(KINDS[layers[p].kind].positively_homogeneous for p in passes)
        groups.append(Group(key=key, units=len(units), producers={p: one[p] for p in made},
                            coupled={p: one[p] for p in members}, values=values,
                            frozen=reasons[0] if reasons else None, homogeneous=homogeneous))
    groups.sort(key=lambda g: g.key)

    owners = {p: (np.full(count[p], -1, dtype=np.int64), np.full(count[p], -1, dtype=np.int64)) for p in base}
    for g in groups:
        if g.frozen is not None:
            continue
        for p, chans in g.values.items():
            for u, ch in enumerate(chans):
                owners[p][0][ch] = g.key
                owners[p][1][ch] = u
    return Dependencies(groups=groups, owners=owners)
