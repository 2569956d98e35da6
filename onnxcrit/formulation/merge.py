"""Merges of activations: a residual Add (the sum of expressions) and a Concat on the channel axis (rows
interleaved image by image). Both are linear, so the formulation stays exact."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .base import Context, Expr, widen


def build_add(ctx: Context, i: int, layer, *Xs: Expr) -> Expr:
    """The sum of the inputs' expressions; their pending value >= 0 rows are emitted first."""
    Xs = [ctx.pb.flush(X) for X in Xs]
    A = widen(Xs[0].A, ctx.pb.num_cols)
    c = Xs[0].c.copy()
    for X in Xs[1:]:
        A = A + widen(X.A, ctx.pb.num_cols)
        c = c + X.c
    return Expr(A.tocsr(), c, np.zeros(c.size, bool), tuple(layer.out_shape), Xs[0].n)


def build_concat(ctx: Context, i: int, layer, *Xs: Expr) -> Expr:
    """Row (image n, input j, element e) of the output is row (n, e) of input j: per sample, the inputs' flat
    values one after the other (channels first, so this is the channel axis)."""
    n = Xs[0].n
    sizes = [int(np.prod(X.shape, dtype=int)) for X in Xs]
    starts = np.cumsum([0] + [X.rows for X in Xs])[:-1]
    order = np.concatenate([starts[j] + img * sizes[j] + np.arange(sizes[j])
                            for img in range(n) for j in range(len(Xs))]) if n else np.zeros(0, int)
    A = sp.vstack([widen(X.A, ctx.pb.num_cols) for X in Xs], format="csr")[order]
    c = np.concatenate([X.c for X in Xs])[order]
    nonneg = np.concatenate([X.nonneg for X in Xs])[order]
    return Expr(A.tocsr(), c, nonneg, tuple(layer.out_shape), n)
