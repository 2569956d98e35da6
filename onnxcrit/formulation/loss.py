"""The objective: per-layer normalised sparsity plus lambda times a linear surrogate of the loss.

Both losses are a per-image variable t_n >= 0 above a set of planes t_n >= g . z_n + b in the logits z_n:
  hinge  g = e_c - e_y, b = margin for every wrong class c (multiclass hinge with margin);
  lse    tangent planes of log-sum-exp(z) - z_y (the cross-entropy, convex) at the original logits and at
         points where one wrong class ties with / trails the true class by 2, plus its asymptotes
         z_c - z_y: an outer approximation that is exact at the original logits.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp, softmax

from .base import INF, Context, Expr, widen

LOSSES = ("hinge", "lse")


def hinge_planes(z0: np.ndarray, y: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Planes [n, P, C] and offsets [n, P]."""
    n, classes = z0.shape
    eye = np.eye(classes)
    g = eye[None, :, :] - eye[y][:, None, :]  # [n, C, C]: plane c is e_c - e_y
    b = np.full((n, classes), float(margin))
    wrong = np.arange(classes)[None, :] != y[:, None]
    g = g[wrong].reshape(n, classes - 1, classes)
    return g, b[wrong].reshape(n, classes - 1)


def lse_planes(z0: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tangent planes of f(z) = logsumexp(z) - z_y at the original logits and at shifted points."""
    n, classes = z0.shape
    points = [z0]
    for gap in (0.0, -2.0):  # wrong class c tied with the true class, and 2 below it
        for c in range(classes):
            p = z0.copy()
            p[:, c] = z0[np.arange(n), y] + gap
            points.append(p)
    pts = np.stack(points, axis=1)  # [n, P, C]
    prob = softmax(pts, axis=2)
    g = prob - np.eye(classes)[y][:, None, :]
    b = logsumexp(pts, axis=2) - np.einsum("npc,npc->np", prob, pts)
    keep = ~np.tile(np.arange(classes)[None, :] == y[:, None], (1, 2))  # drop the no-op points c == y
    keep = np.concatenate([np.ones((n, 1), bool), keep], axis=1)
    g = g[keep].reshape(n, -1, classes)
    b = b[keep].reshape(n, -1)
    hg, hb = hinge_planes(z0, y, 0.0)  # asymptotes
    return np.concatenate([g, hg], axis=1), np.concatenate([b, hb], axis=1)


def add_loss(ctx: Context, Z: Expr, y: np.ndarray, z0: np.ndarray, *, kind: str, margin: float,
             weight: float) -> np.ndarray:
    """Columns t_n (cost weight / n each) with t_n >= every plane of the chosen loss; returns t."""
    pb = ctx.pb
    n, classes = Z.n, int(np.prod(Z.shape))
    if kind == "hinge":
        g, b = hinge_planes(z0, y, margin)
    elif kind == "lse":
        g, b = lse_planes(z0, y)
    else:
        raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")
    planes = g.shape[1]
    at_ref = np.maximum(np.einsum("npc,nc->np", g, z0) + b, 0.0).max(axis=1, initial=0.0)
    t = pb.add_cols(n, 0.0, INF, cost=weight / n, kind="loss", ref=at_ref)
    # G maps the n * C logit rows to the n * planes plane rows
    r = np.repeat(np.arange(n * planes), classes)
    c = (np.arange(n)[:, None, None] * classes + np.arange(classes)[None, None, :]).repeat(planes, axis=1).reshape(-1)
    G = sp.csr_matrix((g.reshape(-1), (r, c)), shape=(n * planes, n * classes))
    A = widen(Z.A, pb.num_cols)
    pb.add_rows([(np.repeat(t, planes), 1.0), -(G @ A)], G @ Z.c + b.reshape(-1), INF)
    return t


def add_sparsity(ctx: Context, kind: str = "mean") -> None:
    """mean: sum over scored layers of the layer's mean score.
    paper: the sum of the K-1 largest layer terms (mean - 2) (the authors' code), as an LP:
           min (K-1) theta + sum_l u_l, u_l >= term_l - theta, u_l >= 0."""
    pb = ctx.pb
    layers = sorted(ctx.score_cols)
    if kind == "mean" or len(layers) < 2:
        for i in layers:
            cols = ctx.score_cols[i]
            pb.add_cost(cols, 1.0 / cols.size)
        if kind == "paper":
            pb.offset -= 2.0 * len(layers)
        return
    if kind != "paper":
        raise ValueError(f"unknown sparsity {kind!r}; expected 'mean' or 'paper'")
    k = len(layers)
    # at the reference every layer term is 1 - 2: theta = -1, u = 0
    theta = pb.add_cols(1, -INF, INF, cost=k - 1, kind="sparsity", ref=-1.0)
    u = pb.add_cols(k, 0.0, INF, cost=1.0, kind="sparsity", ref=0.0)
    for j, i in enumerate(layers):
        cols = ctx.score_cols[i]
        # u_j + theta - mean(s) >= -2
        pb.add_rows([sp.csr_matrix((np.concatenate([[1.0, 1.0], -np.full(cols.size, 1.0 / cols.size)]),
                                    (np.zeros(cols.size + 2, int), np.concatenate([[u[j], theta[0]], cols]))),
                                   shape=(1, pb.num_cols))], [-2.0], INF)

