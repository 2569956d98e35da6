"""Interval bounds through the unpruned network, vectorised over samples (METHOD.md section 2)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .ir import INPUT, KINDS, Network


@dataclass
class Bounds:
    """lower[k], upper[k]: bounds of layer k's output, each [N, *layers[k].out_shape], float64."""

    lower: list[np.ndarray]
    upper: list[np.ndarray]
    input_lower: np.ndarray
    input_upper: np.ndarray


def _abs_linear(layer):
    """The same layer with |W| and no bias: maps an input radius to an output radius."""
    return replace(layer, weight=np.abs(layer.weight), bias=np.zeros_like(layer.bias))


def interval_bounds(net: Network, x: np.ndarray, eps: float, batch_size: int = 256) -> Bounds:
    """Bounds of every layer's output for the boxes [x - eps, x + eps], one box per sample of x."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, *net.input_shape)
    lows: list[list[np.ndarray]] = [[] for _ in net.layers]
    ups: list[list[np.ndarray]] = [[] for _ in net.layers]
    abs_layers = {i: _abs_linear(layer) for i, layer in enumerate(net.layers) if KINDS[layer.kind].linear}
    for start in range(0, len(x), batch_size):
        lo_in = x[start:start + batch_size] - eps
        hi_in = x[start:start + batch_size] + eps
        lo_of = {INPUT: lo_in}
        hi_of = {INPUT: hi_in}
        for i, layer in enumerate(net.layers):
            ins = net.inputs_of(i)
            if i in abs_layers:
                lo, hi = lo_of[ins[0]], hi_of[ins[0]]
                mid, rad = (hi + lo) / 2.0, (hi - lo) / 2.0
                centre = layer.forward(mid)
                spread = abs_layers[i].forward(rad)
                lo, hi = centre - spread, centre + spread
            elif KINDS[layer.kind].monotone:
                # ReLU, pooling, reshapes, merges (sum, concat) and input affines act on each element
                # monotonically (increasing, or decreasing for a negative scale): the images of the two ends
                # bound the interval's image
                a = layer.forward(*(lo_of[p] for p in ins))
                b = layer.forward(*(hi_of[p] for p in ins))
                lo, hi = np.minimum(a, b), np.maximum(a, b)
            else:
                raise ValueError(f"no interval bounds for layer '{layer.name}' ({layer.kind})")
            lo_of[i], hi_of[i] = lo, hi
            lows[i].append(lo)
            ups[i].append(hi)
    empty = [np.zeros((0, *layer.out_shape)) for layer in net.layers]
    lower = [np.concatenate(chunks, axis=0) if chunks else empty[i] for i, chunks in enumerate(lows)]
    upper = [np.concatenate(chunks, axis=0) if chunks else empty[i] for i, chunks in enumerate(ups)]
    return Bounds(lower=lower, upper=upper, input_lower=x - eps, input_upper=x + eps)
