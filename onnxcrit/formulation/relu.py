"""ReLU with an importance score (METHOD.md section 3), built for all images and units at once.

For unit j on image n with pre-activation a in [L, U] (bounds of the unpruned network), U+ = max(U, 0):
    off      (U <= 0):       h = 0, no rows, no columns
    on       (L >= 0):       h = a - (1 - s_j) U+                   (no binary: v = 1)
                             and h >= 0 only with stable_on="nonneg" (METHOD.md as written)
    unstable (L < 0 < U):    h >= 0, h <= v U+, h >= a - (1 - s_j) U+,
                             h <= a - (1 - v) (L - U+) - (1 - s_j) U+,   v binary
The last row uses L - U+, the lower bound of a - (1 - s) U+ over s in [0, 1], rather than METHOD's L:
with L it would forbid s < 1 - (a - L) / U+ on such a unit. At s = 1 both are the exact ReLU.

Why stable-on units get no h >= 0 by default ("linear"): the bounds hold for the unpruned network only.
Once upstream units are pruned, a unit's pre-activation a drops below U and h >= 0 then forces
s >= 1 - a / U: pruning upstream forbids pruning downstream. Measured on LeNet-5 (benchmarks/scores.py):
with h >= 0 the loss never binds (lambda has no effect), 31% of the parameters go and the mask trails a
magnitude mask of the same size; without it the loss limits pruning as intended and the mask beats
magnitude. Stable units then keep the calibration images' activation pattern: on stays linear, off stays 0.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .base import INF, Context, Expr, widen


def build_relu(ctx: Context, i: int, layer, X: Expr) -> Expr:
    """The ReLU, with the score of the group its input's channels belong to when that input is where the
    group's score applies (a producer's output, a coupled conv's or a residual Add's)."""
    lo, hi = ctx.input_bounds(i)
    source = ctx.net.inputs_of(i)[0]
    scores = ctx.score_per_row(source, X.n) if source in ctx.score_points else None
    out = relu_rows(ctx, X, lo, hi, scores)
    if scores is not None:
        keys = ctx.net.deps.owners[source][0]
        for key in set(keys[keys >= 0].tolist()):
            rows = np.repeat(keys == key, int(np.prod(ctx.net.layers[source].out_shape[1:], dtype=int)))
            rows = np.tile(rows, X.n)
            stats = relu_stats(lo[rows], hi[rows])
            total = ctx.unit_stats.setdefault(key, dict.fromkeys(stats, 0))
            for name, value in stats.items():
                total[name] += value
    return out.with_shape(layer.out_shape)


def relu_stats(lo: np.ndarray, hi: np.ndarray) -> dict[str, int]:
    """How many (image, unit) pairs are off, on and unstable."""
    off = hi <= 0
    on = (lo >= 0) & ~off
    return {"off": int(off.sum()), "on": int(on.sum()), "unstable": int((~off & ~on).sum())}


def relu_rows(ctx: Context, X: Expr, lo: np.ndarray, hi: np.ndarray, scores: np.ndarray | None) -> Expr:
    """h = max(0, a - (1 - s) U+) for every row of X (s = 1 where scores is None)."""
    pb = ctx.pb
    off = hi <= 0
    on = (lo >= 0) & ~off
    unstable = ~off & ~on
    up = np.maximum(hi, 0.0)
    A = widen(X.A, pb.num_cols)
    rows = np.arange(X.rows)

    # stable on: the expression itself, shifted by the score term (h >= 0 stays pending if asked for)
    A_out = sp.diags(on.astype(float)) @ A
    c_out = np.where(on, X.c, 0.0)
    extra_r, extra_c, extra_v = [], [], []
    scored = np.zeros(X.rows, bool) if scores is None else scores >= 0
    if scores is not None:
        r = rows[on & scored]
        c_out[r] -= up[r]
        extra_r.append(r), extra_c.append(scores[r]), extra_v.append(up[r])

    # unstable: a column h and a binary v per row
    u = np.flatnonzero(unstable)
    if u.size:
        a = pb.ref_value(X, u)
        h = pb.add_cols(u.size, 0.0, INF, kind="relu", ref=np.maximum(a, 0.0))
        v = ctx.add_binaries(u.size, "relu", ref=(a > 0).astype(float))
        Au, cu, Uu, Lm = A[u], X.c[u], up[u], lo[u] - up[u]
        pb.add_rows([(h, 1.0), (v, -Uu)], np.full(u.size, -INF), 0.0)
        s_u = scored[u]
        if s_u.any():
            k = np.flatnonzero(s_u)
            su, Ak, ck, Uk, Lk = scores[u][k], Au[k], cu[k], Uu[k], Lm[k]
            pb.add_rows([(h[k], 1.0), -Ak, (su, -Uk)], ck - Uk, INF)
            pb.add_rows([(h[k], 1.0), -Ak, (v[k], -Lk), (su, -Uk)], np.full(k.size, -INF), ck - Lk - Uk)
        if not s_u.all():
            k = np.flatnonzero(~s_u)
            Ak, ck, Lk = Au[k], cu[k], Lm[k]
            pb.add_rows([(h[k], 1.0), -Ak], ck, INF)
            pb.add_rows([(h[k], 1.0), -Ak, (v[k], -Lk)], np.full(k.size, -INF), ck - Lk)
        extra_r.append(u), extra_c.append(h), extra_v.append(np.ones(u.size))

    A_out = widen(A_out, pb.num_cols)
    if extra_r:
        extra = sp.csr_matrix((np.concatenate(extra_v), (np.concatenate(extra_r), np.concatenate(extra_c))),
                              shape=A_out.shape)
        A_out = (A_out + extra).tocsr()
    nonneg = on.copy() if ctx.stable_on == "nonneg" else np.zeros_like(on)
    return Expr(A_out, c_out, nonneg, X.shape, X.n)


def score_without_relu(ctx: Context, i: int, X: Expr) -> Expr:
    """A scored layer whose output feeds a linear op directly: h = a - (1 - s) U (METHOD.md section 3)."""
    scores = ctx.score_per_row(i, X.n)
    if scores is None:
        return X
    _, hi = ctx.output_bounds(i)
    rows = np.flatnonzero(scores >= 0)
    A = widen(X.A, ctx.pb.num_cols)
    extra = sp.csr_matrix((hi[rows], (rows, scores[rows])), shape=A.shape)
    c = X.c.copy()
    c[rows] -= hi[rows]
    return Expr((A + extra).tocsr(), c, X.nonneg, X.shape, X.n)
