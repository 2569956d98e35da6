"""From importance scores to the units to keep: fixed threshold, per-layer mean, accuracy or parameter budget.

A selection is a `scales` dict in the form `Network.forward(scales=...)` and the rewrite take: per scored layer a
factor per unit, 0 for a removed unit, and for a kept one its score (what the MIP modelled, METHOD.md section 6)
or 1 when rescaling is off.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .ir import Network


@dataclass
class Selection:
    scales: dict[int, np.ndarray]
    rule: str
    threshold: float | None = None
    notes: list[str] = field(default_factory=list)
    tried: list[dict] = field(default_factory=list)


def input_mask(net: Network, position: int, keep: dict[int, np.ndarray]) -> np.ndarray:
    """Which inputs (features or channels) of linear layer `position` survive, given the kept units upstream."""
    layer = net.layers[position]
    width = layer.in_shape[0] if layer.kind == "conv" else int(np.prod(layer.in_shape))
    previous = [i for i in net.linear_indices() if i < position]
    if not previous or previous[-1] not in keep:
        return np.ones(width, dtype=bool)
    units = keep[previous[-1]]
    if layer.kind == "conv":
        return units.copy()
    # a dense layer after a conv: channel c owns a contiguous block of the flattened NCHW features
    return np.repeat(units, width // len(units))


def params_after(net: Network, keep: dict[int, np.ndarray]) -> int:
    """Weights and biases of the linear layers left when only the `keep` units of the scored layers stay."""
    total = 0
    for i in net.linear_indices():
        layer = net.layers[i]
        outs = int(keep[i].sum()) if i in keep else layer.units
        ins = int(input_mask(net, i, keep).sum())
        per_in = int(np.prod(layer.weight.shape[2:])) if layer.kind == "conv" else 1
        total += outs * ins * per_in + outs
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
    """0 for removed units; the score (rescale) or 1 for kept ones."""
    out = {}
    for i, s in scores.items():
        kept_value = np.clip(s, 0.0, 1.0) if rescale else np.ones_like(s)
        out[i] = np.where(keep[i], kept_value, 0.0)
    return out


def accuracy(net: Network, x: np.ndarray, y: np.ndarray, scales: dict[int, np.ndarray] | None = None) -> float:
    """Top-1 accuracy in percent of the (masked) IR network."""
    return float(np.mean(net.forward(x, scales=scales).argmax(axis=1) == y) * 100.0)


def candidate_thresholds(scores: dict[int, np.ndarray], most: int = 48) -> list[float]:
    """Cut points between distinct score values, from pruning nothing to pruning all but the best."""
    values = np.unique(np.concatenate([s.ravel() for s in scores.values()]))
    cuts = np.concatenate([[values[0]], (values[1:] + values[:-1]) / 2.0]) if len(values) > 1 else values
    if len(cuts) > most:
        cuts = np.unique(np.quantile(cuts, np.linspace(0.0, 1.0, most), method="nearest"))
    return [float(c) for c in cuts]


def by_accuracy(net: Network, scores: dict[int, np.ndarray], x: np.ndarray, y: np.ndarray, max_drop: float,
                rescale: bool = True, baseline: float | None = None) -> tuple[Selection | None, Selection]:
    """The threshold that removes the most parameters while accuracy on (x, y) drops by at most max_drop points.

    Returns (the best selection meeting the budget or None, the closest selection overall).
    """
    base = accuracy(net, x, y) if baseline is None else baseline
    tried, best, closest = [], None, None
    for t in candidate_thresholds(scores):
        notes: list[str] = []
        keep = keep_by_threshold(net, scores, t, notes=notes)
        scales = to_scales(scores, keep, rescale)
        acc = accuracy(net, x, y, scales)
        params = params_after(net, keep)
        row = {"threshold": t, "params_after": params, "accuracy": acc, "drop": base - acc}
        tried.append(row)
        sel = Selection(scales=scales, rule="accuracy budget", threshold=t, notes=notes)
        if base - acc <= max_drop + 1e-9:
            if best is None or params < best[0]:
                best = (params, sel)
        if closest is None or base - acc < closest[0]:
            closest = (base - acc, sel)
    for chosen in (best, closest):
        if chosen is not None:
            chosen[1].tried = tried
    return (best[1] if best else None), closest[1]


def by_params(net: Network, scores: dict[int, np.ndarray], fraction: float,
              rescale: bool = True) -> tuple[Selection | None, Selection]:
    """Remove the lowest-scored units (across layers) until at most `fraction` of the parameters remain.

    Returns (the selection meeting the budget or None, the smallest selection reached).
    """
    limit = fraction * net.params
    order = sorted(((float(s[u]), i, u) for i, s in scores.items() for u in range(len(s))))
    keep = {i: np.ones(len(s), dtype=bool) for i, s in scores.items()}
    tried = []
    for score, i, u in order:
        if params_after(net, keep) <= limit:
            break
        if keep[i].sum() <= 1:
            continue  # never remove the last unit of a layer
        keep[i][u] = False
    params = params_after(net, keep)
    tried.append({"fraction": fraction, "params_after": params, "params_before": net.params})
    sel = Selection(scales=to_scales(scores, keep, rescale), rule="parameter budget", tried=tried)
    return (sel if params <= limit else None), sel
