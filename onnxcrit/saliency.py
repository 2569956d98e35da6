"""What removing one unit costs once the next layer is refitted: the tie-break of the removal order under `lsq`.

The MIP's scores are mostly 0 or 1, so the budget search's order beyond its zeros is decided by the tie-break
(`select.removal_order`). Without reconstruction that is the unit's weight magnitude. With the least-squares
reconstruction (`--reconstruct lsq`, the default) a unit whose activations the other units can stand in for is
cheap to remove whatever its weights; the tie-break then is the Optimal Brain Surgeon saliency of the unit in
every linear layer that reads it (Hassibi & Stork 1993, on the reader's input as in ThiNet / OBC):

    s_u = sum over readers r of  tr(W_B [(G^-1)_BB]^-1 W_B^T)

with B the reader's input features that carry unit u (a dense reader's columns of u, a conv reader's channel u
times its kernel taps), W the reader's weight, G the centred Gram matrix of the reader's inputs over the
statistics images (im2col rows for a conv), damped as `lsq` is (lambda = DAMP x its mean diagonal). It is the
increase of the reader's squared output error, per row, when u alone is removed and the reader's other weights
are refitted. A group none of whose readers is an ordinary linear layer (only depthwise or grouped convs read
it) keeps the magnitude tie-break. Measured against the magnitude tie-break: docs/method.md ("One order across
layers"), `python -m benchmarks.saliency`.
"""
from __future__ import annotations

import numpy as np

from .ir import INPUT, KINDS, Network
from .reconstruct import CHUNK, DAMP, _design, _forward_many
from .select import magnitude


def obs_saliency(net: Network, x: np.ndarray, damp: float = DAMP) -> dict[int, np.ndarray]:
    """Per prunable group key: each unit's OBS saliency summed over its readers (module docstring); the
    magnitude (`select.magnitude`) for a group no ordinary linear layer reads."""
    groups = {g.key: g for g in net.deps.prunable()}
    out = {key: np.zeros(g.units) for key, g in groups.items()}
    read = set()
    values = {INPUT: np.asarray(x, dtype=np.float64).reshape(-1, *net.input_shape)}
    last_use = {p: i for i in range(len(net.layers)) for p in net.inputs_of(i)}
    for i, layer in enumerate(net.layers):
        ins = net.inputs_of(i)
        if KINDS[layer.kind].linear and getattr(layer, "group", 1) == 1:
            keys, units = net.input_columns(i)
            if np.any(np.isin(keys, list(groups))):
                _add_reader(layer, values[ins[0]], keys, units, groups, out, damp)
                read.update(int(k) for k in np.unique(keys) if k in groups)
        values[i] = _forward_many(layer, [values[p] for p in ins])
        for p in ins:
            if last_use.get(p) == i:
                values.pop(p, None)
    if read != set(groups):
        mags = magnitude(net)
        for key in set(groups) - read:
            out[key] = mags[key]
    return out


def _add_reader(layer, h: np.ndarray, keys: np.ndarray, units: np.ndarray, groups, out, damp: float) -> None:
    """Add reader `layer`'s saliency of every unit of a prunable group it reads (inputs h) to `out`."""
    features = int(np.prod(layer.weight.shape[1:]))
    rows, total, gram = 0, np.zeros(features), np.zeros((features, features))
    for start in range(0, len(h), CHUNK):
        d = _design(layer, h[start:start + CHUNK])
        rows += len(d)
        total += d.sum(axis=0)
        gram += d.T @ d
    mean = total / rows
    gram = (gram - rows * np.outer(mean, mean)) / rows
    lam = damp * float(np.mean(np.diag(gram)))
    inverse = np.linalg.inv(gram + (lam if lam > 0 else 1.0) * np.eye(features))
    per = layer.per_column
    feature_key, feature_unit = np.repeat(keys, per), np.repeat(units, per)
    w = layer.weight.reshape(layer.units, features)
    for key in np.unique(keys):
        if key not in groups:
            continue
        mine = np.flatnonzero(feature_key == key)
        order = np.argsort(feature_unit[mine], kind="stable")
        mine = mine[order]
        bounds = np.flatnonzero(np.diff(feature_unit[mine])) + 1
        for block in np.split(mine, bounds):
            wb = w[:, block]
            solved = np.linalg.solve(inverse[np.ix_(block, block)], wb.T)  # [|B|, outputs]
            out[int(key)][int(feature_unit[block[0]])] += float(np.sum(wb.T * solved))
