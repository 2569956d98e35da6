"""From importance scores to the units to keep: fixed threshold, per-layer mean, accuracy or parameter budget.

A selection is a `scales` dict in the form `Network.forward(scales=...)` and the rewrite take: per scored layer a
factor per unit, 0 for a removed unit, and for a kept one its score (what the MIP modelled, METHOD.md section 6)
or 1 when rescaling is off.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .ir import Conv, Network


@dataclass
class Selection:
    scales: dict[int, np.ndarray]
    rule: str
    threshold: float | None = None
    notes: list[str] = field(default_factory=list)
    tried: list[dict] = field(default_factory=list)
    rescaled: bool = True  # kept units deployed at their score (else at full strength)
    confirmation: dict | None = None  # an accuracy budget confirmed on other images (confirm.Confirmer)
    confirmed: "Selection | None" = None  # the confirmed selection this one led to (None: none confirmed)
    order: str | None = None  # the removal order (ORDERS) the budget walked; None: ORDER
    ties: dict[int, np.ndarray] | None = None  # that order's tie-break per group (None: `magnitude`)


def input_mask(net: Network, position: int, keep: dict[int, np.ndarray]) -> np.ndarray:
    """Which input columns (features of a dense layer, channels of a conv) of linear layer `position` survive,
    given the kept units of the groups in `keep` (the channel-dependency map says who owns each column)."""
    return net.input_keep(position, keep)


def _kept_shape(net: Network, i: int, keep: dict[int, np.ndarray]) -> tuple[int, int]:
    """(kept output units, kept input columns) of linear layer i."""
    return int(net.output_keep(i, keep).sum()), int(net.input_keep(i, keep).sum())


def params_after(net: Network, keep: dict[int, np.ndarray]) -> int:
    """Weights and biases of the linear layers left when only the `keep` units of the groups stay."""
    total = 0
    for i in net.linear_indices():
        layer = net.layers[i]
        outs, ins = _kept_shape(net, i, keep)
        if getattr(layer, "group", 1) == 1:
            total += outs * ins * layer.per_column + outs
        elif layer.depthwise:
            total += outs * layer.per_column + outs
        else:  # a grouped conv keeps every channel (its groups are frozen)
            total += layer.params
    return total


def _keep_one(scores: np.ndarray, keep: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    if not keep.any():
        keep = keep.copy()
        keep[int(np.argmax(scores))] = True
        notes.append(f"layer '{name}': every unit scored below the threshold; kept the best one "
                     f"(score {scores.max():.3g})")
    return keep


def keep_by_threshold(net: Network, scores: dict[int, np.ndarray], threshold: float | None = 0.1,
                      mean_rule: bool = False, notes: list[str] | None = None) -> dict[int, np.ndarray]:
    """Keep units with score >= threshold (or >= their layer's mean score), at least one per layer."""
    notes = notes if notes is not None else []
    keep = {}
    for i, s in scores.items():
        cut = float(np.mean(s)) if mean_rule else float(threshold)
        keep[i] = _keep_one(s, s >= cut, net.layers[i].name, notes)
    return keep


def to_scales(scores: dict[int, np.ndarray], keep: dict[int, np.ndarray], rescale: bool) -> dict[int, np.ndarray]:
    """0 for removed units; the score (rescale) or 1 for kept ones.

    When every kept unit of a layer scores 0 (the MIP silenced the whole layer), they are deployed at full
    strength: at their score the layer would lose every unit, and a layer keeps at least one.
    """
    out = {}
    for i, s in scores.items():
        kept_value = np.clip(s, 0.0, 1.0) if rescale else np.ones_like(s)
        out[i] = np.where(keep[i], kept_value, 0.0)
        if not out[i].any():
            out[i] = keep[i].astype(np.float64)
    return out


def accuracy(net: Network, x: np.ndarray, y: np.ndarray, scales: dict[int, np.ndarray] | None = None) -> float:
    """Top-1 accuracy in percent of the (masked) IR network."""
    return float(np.mean(net.forward(x, scales=scales).argmax(axis=1) == y) * 100.0)


def magnitude(net: Network) -> dict[int, np.ndarray]:
    """Per prunable group: L1 norm of each unit's incoming weights (summed over the group's producers) times the
    L1 norm of the weights that read it (summed over every layer reading the unit's columns)."""
    out = {}
    for g in net.deps.prunable():
        incoming = np.zeros(g.units)
        for p, chans in g.producers.items():
            layer = net.layers[p]
            incoming += np.abs(layer.weight).reshape(layer.units, -1).sum(axis=1)[chans]
        outgoing = np.zeros(g.units)
        for i in net.linear_indices():
            keys, units = net.input_columns(i)
            cols = keys == g.key
            if not cols.any():
                continue
            layer = net.layers[i]
            np.add.at(outgoing, units[cols], layer.column_l1()[cols])
        out[g.key] = incoming * outgoing
    return out


def unit_costs(net: Network, size: str = "params") -> dict[int, np.ndarray]:
    """Per prunable group, what removing each unit alone takes out of the full network: parameters (size
    "params": its producers' rows and bias, and the weights of every linear layer reading its columns) or MACs
    per sample (size "macs"). Exactly `count(all kept) - count(all kept but that unit)` of `params_after` /
    `macs_after` (a test checks it)."""
    costs = {g.key: np.zeros(g.units) for g in net.deps.prunable()}
    macs = size == "macs"
    for i in net.linear_indices():
        layer = net.layers[i]
        if getattr(layer, "group", 1) != 1 and not layer.depthwise:
            continue  # a grouped conv keeps every channel: removing a unit changes nothing there
        reach = layer.positions if macs else 1
        out_keys, out_units = net.deps.owners[i]
        in_keys, in_units = net.input_columns(i)
        outs, ins = out_keys.size, in_keys.size
        per_out = (layer.per_column if layer.depthwise else ins * layer.per_column) * reach + (0 if macs else 1)
        for key, cost in costs.items():
            rows = out_keys == key
            if rows.any():
                np.add.at(cost, out_units[rows], per_out)
            cols = in_keys == key
            if cols.any() and not layer.depthwise:  # a depthwise conv's input channel is its output channel
                np.add.at(cost, in_units[cols], outs * layer.per_column * reach)
    return costs


# How the budgets rank units across layers (docs/method.md, "One order across layers"). A rule is "score" (the
# raw score, ties by magnitude: today's order before the change) or HOW[/COST]: HOW makes a unit's score
# comparable with other layers' ("mean": divided by its layer's mean score; "rank": its rank within the layer,
# in (0, 1]), ties by magnitude relative to the layer's mean magnitude; COST divides both by the unit's
# parameter (or, under a MAC budget, MAC) cost relative to the mean unit's ("cost") or by its square root
# ("sqrtcost"). ORDER is the default, chosen by measurement (benchmarks/compression.py).
ORDERS = ("score", "mean", "rank", "mean/sqrtcost", "mean/cost", "rank/cost")
ORDER = "mean"


def cost_power(rule: str) -> float:
    """The power of the unit's cost a rule divides by (0: the cost plays no part)."""
    return {"": 0.0, "sqrtcost": 0.5, "cost": 1.0}[rule.partition("/")[2]] if rule != "score" else 0.0


def _relative(values: np.ndarray, how: str, tie: np.ndarray) -> np.ndarray:
    """A layer's values made comparable with other layers': divided by their mean absolute value, or as ranks in
    (0, 1] (ties by `tie`, then position)."""
    if how == "rank":
        order = np.lexsort((np.arange(len(values)), tie, np.round(values, 6)))
        ranks = np.empty(len(values))
        ranks[order] = np.arange(1, len(values) + 1)
        return ranks / len(values)
    mean = float(np.mean(np.abs(values)))
    return values / mean if mean > 0 else np.zeros_like(values, dtype=np.float64)


def removal_order(net: Network, scores: dict[int, np.ndarray], rule: str | None = None,
                  size: str = "params", ties: dict[int, np.ndarray] | None = None) -> list[tuple[int, int]]:
    """(layer, unit) pairs from least to most important, by `rule` (ORDERS; default ORDER); a rule with a cost
    counts the unit's cost in `size` ("params" or "macs", `unit_costs`).

    The default ("mean"): a unit's score divided by the mean score of its layer (a layer's average unit is 1,
    whatever the criterion's scale there), ties (e.g. the MIP's many zeros) by the unit's magnitude divided by
    its layer's mean magnitude. `ties`: another tie-break per group, used as the magnitude is (the pipeline
    passes `saliency.obs_saliency` under the lsq reconstruction)."""
    rule = ORDER if rule is None else rule
    if rule not in ORDERS:
        raise ValueError(f"unknown removal order {rule!r}; expected one of {', '.join(ORDERS)}")
    mags = magnitude(net) if ties is None else ties
    keys = sorted(scores)
    layer_ids = np.concatenate([np.full(len(scores[i]), i) for i in keys])
    units = np.concatenate([np.arange(len(scores[i])) for i in keys])
    if rule == "score":
        values = np.concatenate([np.round(scores[i], 6) for i in keys])
        ties = np.concatenate([mags[i] / max(float(mags[i].max()), 1e-300) for i in keys])
    else:
        how, power = rule.partition("/")[0], cost_power(rule)
        if power:
            costs = unit_costs(net, size)
            mean_cost = float(np.mean(np.concatenate([costs[i] for i in keys])))
            weight = {i: (np.maximum(costs[i], 1e-12) / mean_cost) ** power for i in keys}
        else:
            weight = {i: 1.0 for i in keys}
        values = np.concatenate([np.round(_relative(np.asarray(scores[i], dtype=np.float64), how, mags[i])
                                          / weight[i], 9) for i in keys])
        ties = np.concatenate([_relative(np.asarray(mags[i], dtype=np.float64), "mean", mags[i]) / weight[i]
                               for i in keys])
    order = np.lexsort((units, layer_ids, ties, values))
    return [(int(layer_ids[j]), int(units[j])) for j in order]


def keep_first_removed(scores: dict[int, np.ndarray], order: list[tuple[int, int]], count: int) -> dict[int, np.ndarray]:
    """Remove the first `count` units of `order`, skipping any that would empty its layer."""
    keep = {i: np.ones(len(s), dtype=bool) for i, s in scores.items()}
    removed = 0
    for layer, unit in order:
        if removed >= count:
            break
        if keep[layer].sum() > 1:
            keep[layer][unit] = False
            removed += 1
    return keep


def by_accuracy(net: Network, scores: dict[int, np.ndarray], x: np.ndarray, y: np.ndarray, max_drop: float,
                rescale: bool | None = None, baseline: float | None = None,
                accuracy_of: Callable[[dict[int, np.ndarray] | None], float] | None = None, ladder: int = 0,
                order: str | None = None,
                accuracy_many: Callable[[list[dict[int, np.ndarray]]], list[float]] | None = None,
                ties: dict[int, np.ndarray] | None = None) -> tuple[Selection | None, Selection]:
    """Remove as many units (lowest score first) as possible while accuracy on (x, y) drops <= max_drop points.

    A coarse grid over the number of removed units, then bisection between the last count that met the budget
    and the next that did not. rescale None tries kept units both at their score and at full strength and keeps
    the more accurate. `accuracy_of(scales)` measures a candidate (None: the unpruned network); by default the
    IR's forward pass on (x, y). `ladder` > 0 also measures that many evenly spaced counts up to the one chosen
    (the rungs `confirm.Confirmer` steps through; they cannot change the choice). `order`: the removal order
    rule (ORDERS; default ORDER). `accuracy_many(list of scales)`: measures several candidates at once (in
    parallel: the grid's and the ladder's, which do not depend on each other); it must give what accuracy_of
    gives, so the result does not depend on it. `ties`: the order's tie-break (`removal_order`). Returns (the
    selection meeting the budget with the fewest parameters, or None when no removal at all meets it; the
    closest selection).
    """
    if accuracy_of is None:
        accuracy_of = lambda scales: accuracy(net, x, y, scales)  # noqa: E731
    base = accuracy_of(None) if baseline is None else baseline
    rule = ORDER if order is None else order
    order = removal_order(net, scores, rule, ties=ties)
    modes = (True, False) if rescale is None else (bool(rescale),)
    tried: dict[int, dict] = {}
    measured: dict[tuple[int, bool], float] = {}  # (count, mode) -> accuracy, measured ahead by accuracy_many

    def ahead(counts) -> None:
        todo = [(c, mode) for c in counts if c not in tried for mode in modes]
        if accuracy_many is not None and len(todo) > 1:
            values = accuracy_many([to_scales(scores, keep_first_removed(scores, order, c), mode) for c, mode in todo])
            measured.update(zip(todo, values))

    def attempt(count: int) -> dict:
        if count not in tried:
            keep = keep_first_removed(scores, order, count)
            best = None
            for mode in modes:
                scales = to_scales(scores, keep, mode)
                acc = measured.pop((count, mode)) if (count, mode) in measured else accuracy_of(scales)
                if best is None or acc > best[0]:
                    best = (acc, mode, scales)
            acc, mode, scales = best
            last = order[min(count, len(order)) - 1] if count else None
            tried[count] = {"removed_units": count, "params_after": params_after(net, keep), "accuracy": acc,
                            "drop": base - acc, "rescaled": mode,
                            "threshold": float(scores[last[0]][last[1]]) if last else None, "_scales": scales}
        return tried[count]

    total = len(order)
    grid = sorted(set(int(round(v)) for v in np.linspace(1, total, min(16, total))))
    ahead(grid)
    ok = [c for c in grid if attempt(c)["drop"] <= max_drop + 1e-9]
    if ok:
        good = max(ok)
        above = [c for c in grid if c > good]
        bad = above[0] if above else None
        while bad is not None and bad - good > 1:  # bisection: accuracy is nearly monotone in the count
            mid = (good + bad) // 2
            if attempt(mid)["drop"] <= max_drop + 1e-9:
                good = mid
            else:
                bad = mid
        rungs = sorted(set(int(round(v)) for v in np.linspace(1, good, min(ladder, good))))
        ahead(rungs)
        for count in rungs:
            attempt(count)
    rows = [{k: v for k, v in tried[c].items() if k != "_scales"} for c in sorted(tried)]
    meeting = [c for c in tried if tried[c]["drop"] <= max_drop + 1e-9]
    best = min(meeting, key=lambda c: (tried[c]["params_after"], c)) if meeting else None
    closest = best if best is not None else min(tried, key=lambda c: (tried[c]["drop"], c))

    def as_selection(count: int) -> Selection:
        row = tried[count]
        return Selection(scales=row["_scales"], rule="accuracy budget", threshold=row["threshold"], tried=rows,
                         rescaled=row["rescaled"], order=rule, ties=ties)

    return (as_selection(best) if best is not None else None), as_selection(closest)


def macs_after(net: Network, keep: dict[int, np.ndarray]) -> int:
    """Multiply-accumulates per sample of the linear layers left when only the `keep` units stay."""
    total = 0
    for i in net.linear_indices():
        layer = net.layers[i]
        outs, ins = _kept_shape(net, i, keep)
        if getattr(layer, "group", 1) == 1:
            total += outs * ins * layer.per_column * layer.positions
        elif layer.depthwise:
            total += outs * layer.per_column * layer.positions
        else:
            total += layer.macs
    return total


# what a size budget counts: name -> (count after a selection, count of the network, rule name)
SIZES = {"params": (params_after, lambda net: net.params, "parameter budget"),
         "macs": (macs_after, lambda net: net.macs, "MAC budget")}


def by_params(net: Network, scores: dict[int, np.ndarray], fraction: float,
              rescale: bool = True, size: str = "params", order: str | None = None,
              ties: dict[int, np.ndarray] | None = None) -> tuple[Selection | None, Selection]:
    """Remove the lowest-scored units (across layers) until at most `fraction` of the parameters (size
    "params") or of the MACs per sample (size "macs") remain.

    Returns (the selection meeting the budget or None, the smallest selection reached).
    """
    count, total, rule_name = SIZES[size]
    limit = fraction * total(net)
    keep = {i: np.ones(len(s), dtype=bool) for i, s in scores.items()}
    rule = ORDER if order is None else order
    for layer, unit in removal_order(net, scores, rule, size, ties=ties):
        if count(net, keep) <= limit:
            break
        if keep[layer].sum() > 1:  # never remove the last unit of a layer
            keep[layer][unit] = False
    reached = count(net, keep)
    tried = [{"fraction": fraction, f"{size}_after": reached, f"{size}_before": total(net),
              "params_after": params_after(net, keep)}]
    sel = Selection(scales=to_scales(scores, keep, rescale), rule=rule_name, tried=tried, rescaled=bool(rescale),
                    order=rule, ties=ties)
    return (sel if reached <= limit else None), sel


def round_up(net: Network, scores: dict[int, np.ndarray], scales: dict[int, np.ndarray], multiple: int,
             rescaled: bool, kinds: tuple[type, ...] = (Conv,), order: str | None = None,
             ties: dict[int, np.ndarray] | None = None) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Round every `kinds` layer's kept units up to a multiple of `multiple` (never above its unit count).

    onnxruntime runs convolutions in a blocked channel layout (NCHWc, 8 or 16 channels a block): a layer whose
    kept count falls just off a block boundary can be slower than the unpruned one. The units added are the
    layer's removed ones that `removal_order` ranks most important (highest score, ties by weight magnitude).
    They are deployed as the selection deploys its kept units (`to_scales`): at full strength, or when
    `rescaled` at their score. A score of 0 would remove the unit again, so such a unit stays in the graph
    with scale 0 as its factor: it is computed but its outgoing weights are zero (what its score says it is
    worth), and the layer keeps its rounded width.

    Returns (scales, keep): keep says which units stay in the graph (`rewrite.remove_units(..., keep=keep)`),
    a superset of scales > 0 when some unit is kept at scale 0. multiple 1 returns the selection as it is.
    """
    keep = {i: np.asarray(s) > 0 for i, s in scales.items()}
    out = {i: np.array(s, dtype=np.float64) for i, s in scales.items()}
    if multiple <= 1:
        return out, keep
    order = removal_order(net, scores, order, ties=ties)
    for i in sorted(scales):
        layer = net.layers[i]
        if not isinstance(layer, kinds):
            continue
        count = int(keep[i].sum())
        target = min(-(-count // multiple) * multiple, layer.units)
        if target == count:
            continue
        removed = [unit for k, unit in order if k == i and not keep[i][unit]]
        for unit in removed[::-1][:target - count]:  # most important first
            keep[i][unit] = True
            out[i][unit] = float(np.clip(scores[i][unit], 0.0, 1.0)) if rescaled else 1.0
    return out, keep


def kept_counts(keep: dict[int, np.ndarray]) -> tuple[int, ...]:
    """The number of kept units per scored layer, in layer order (equal counts: equal rounding candidates)."""
    return tuple(int(np.sum(keep[i])) for i in sorted(keep))
