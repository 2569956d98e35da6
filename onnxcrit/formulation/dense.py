"""Dense layer: its weight matrix applied to the previous layer's expressions of every image."""
from __future__ import annotations

import scipy.sparse as sp

from .base import Context, Expr


def dense_matrix(layer) -> sp.csr_matrix:
    """The per-sample linear map of a Dense layer (units x inputs)."""
    return sp.csr_matrix(layer.weight)


def build_dense(ctx: Context, i: int, layer, X: Expr) -> Expr:
    """Pre-activations a = W h + b; the constant part goes through the IR's own forward pass."""
    forward = lambda c: layer.forward(c.reshape(X.n, -1))
    return ctx.pb.linear_map(X, dense_matrix(layer), forward, layer.out_shape)
