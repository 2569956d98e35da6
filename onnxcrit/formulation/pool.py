"""Pooling and reshapes. Average pooling and reshapes are linear; max pooling needs a binary per window
element only where the bounds leave the winner of the window open."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .base import INF, Context, Expr, widen


def avgpool_matrix(layer) -> sp.csr_matrix:
    """Per-sample linear map of an AvgPool: row c * P + p, column c * H * W + pixel."""
    channels, height, width = layer.in_shape
    idx = layer.patches()
    weights = layer.window_weights()
    positions, taps = idx.shape
    shape = (channels, positions, taps)
    c = np.arange(channels)[:, None, None]
    rows = np.broadcast_to(c * positions + np.arange(positions)[None, :, None], shape)
    cols = np.broadcast_to(c * height * width + idx[None], shape)
    vals = np.broadcast_to(weights[None], shape)
    keep = np.broadcast_to(idx[None] >= 0, shape) & (vals != 0)
    return sp.csr_matrix((vals[keep], (rows[keep], cols[keep])),
                         shape=(channels * positions, channels * height * width))


def build_avgpool(ctx: Context, i: int, layer, X: Expr) -> Expr:
    forward = lambda c: layer.forward(c.reshape(X.n, *layer.in_shape))
    return ctx.pb.linear_map(X, avgpool_matrix(layer), forward, layer.out_shape)


def build_reshape(ctx: Context, i: int, layer, X: Expr) -> Expr:
    """Row-major reshapes keep the flat element order, so the rows do not move."""
    return X.with_shape(layer.out_shape)


def build_input_stage(ctx: Context, i: int, layer, X: Expr) -> Expr:
    """Input affines and transposes stand before the first linear layer, where expressions are constants."""
    if X.A.nnz:
        raise ValueError(f"layer '{layer.name}' ({layer.kind}) must come before the first linear layer")
    return Expr.constant(layer.forward(X.c.reshape(X.n, *X.shape)), X.A.shape[1])


def window_rows(layer, n: int) -> np.ndarray:
    """Input row of every (image, channel, window, tap), -1 on padding: [n, C, P, K]."""
    channels, height, width = layer.in_shape
    idx = layer.patches()
    base = (np.arange(n)[:, None] * channels + np.arange(channels)[None, :]) * height * width  # [n, C]
    rows = base[:, :, None, None] + idx[None, None]
    return np.where(idx[None, None] >= 0, rows, -1)


def build_maxpool(ctx: Context, i: int, layer, X: Expr) -> Expr:
    """y = max over the window.

    Known winner (its lower bound >= every other upper bound, or its expression >= every other over the
    columns' bounds): y is the winner's expression, no binary. Otherwise y >= x_k,
    y <= x_k + (1 - z_k)(max U - L_k), sum z_k = 1, z binary, over the elements that can still win.
    """
    pb = ctx.pb
    lo, hi = ctx.input_bounds(i)
    win = window_rows(layer, X.n)  # [n, C, P, K]
    rows = win.reshape(-1, win.shape[-1])  # one line per output row
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    lo_w = np.where(valid, lo[safe], -INF)
    hi_w = np.where(valid, hi[safe], -INF)
    value = np.where(valid, ctx.input_values(i)[safe], -INF)
    line = np.arange(len(rows))
    # the winner at s = 1; among equal values the one with the largest lower bound (smallest spread),
    # which then stays the winner for every score
    top = value.max(axis=1, keepdims=True)
    tied = value >= top - 1e-12 * (1.0 + np.abs(top))
    best = np.where(tied, lo_w, -INF).argmax(axis=1)
    best_lo = lo_w[line, best]
    winner = rows[line, best]
    cand = valid & (hi_w >= best_lo[:, None])  # elements the bounds cannot rule out
    cand[line, best] = False

    # a candidate whose expression never exceeds the best one's over the columns' bounds (scores in
    # [0, 1]) cannot win either: this settles ties such as identical zero-padded patches
    w_idx, k_idx = np.nonzero(cand)
    if w_idx.size:
        A = widen(X.A, pb.num_cols)
        src, ref = rows[w_idx, k_idx], winner[w_idx]
        margin = pb.box_minimum(A[ref] - A[src], X.c[ref] - X.c[src])
        beaten = margin >= -1e-9 * (1.0 + np.abs(X.c[ref]))
        cand[w_idx[beaten], k_idx[beaten]] = False
    decided = ~cand.any(axis=1)
    cand[line, best] = True

    # rows of X that are never the output (losers, or inputs of open windows) owe their pending h >= 0 now
    used = np.zeros(X.rows, bool)
    used[winner[decided]] = True
    X = pb.flush(X, ~used)

    A = widen(X.A, pb.num_cols)
    out_rows = np.arange(len(rows))
    select = sp.csr_matrix((np.ones(decided.sum()), (out_rows[decided], winner[decided])),
                           shape=(len(rows), X.rows))
    A_out = select @ A
    c_out = select @ X.c
    nonneg = np.zeros(len(rows), bool)
    nonneg[decided] = X.nonneg[winner[decided]]

    open_ = np.flatnonzero(~decided)
    if open_.size:
        w_idx, k_idx = np.nonzero(cand[open_])
        src = rows[open_][w_idx, k_idx]
        y = pb.add_cols(open_.size, -INF, INF, kind="maxpool", ref=value[open_, best[open_]])
        z = ctx.add_binaries(src.size, "maxpool", ref=(k_idx == best[open_][w_idx]).astype(float))
        y_of = y[w_idx]
        big_m = hi_w[open_].max(axis=1)[w_idx] - lo[src]
        As, cs = A[src], X.c[src]
        pb.add_rows([(y_of, 1.0), -As], cs, INF)  # y >= x_k
        pb.add_rows([(y_of, 1.0), -As, (z, big_m)], np.full(src.size, -INF), cs + big_m)
        pick = sp.csr_matrix((np.ones(src.size), (w_idx, z)), shape=(open_.size, pb.num_cols))
        pb.add_rows([pick], np.ones(open_.size), 1.0)  # sum z_k = 1
        A_out = widen(A_out, pb.num_cols) + sp.csr_matrix((np.ones(open_.size), (open_, y)),
                                                          shape=(len(rows), pb.num_cols))
    return Expr(widen(A_out, pb.num_cols).tocsr(), np.asarray(c_out).reshape(-1), nonneg,
                layer.out_shape, X.n)
