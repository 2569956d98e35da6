"""Convolution: the kernel unrolled into a sparse (out channel x position, in channel x pixel) matrix."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .base import Context, Expr


def conv_matrix(layer) -> sp.csr_matrix:
    """Per-sample linear map of a Conv: row o * P + p, column c * H * W + pixel; padding dropped. In a grouped
    conv, output o reads the input channels of its group (weight column c is channel group(o) * C/G + c)."""
    out_ch, in_ch = layer.weight.shape[:2]
    all_in, height, width = layer.in_shape
    idx = layer.patches()  # [P, K]
    positions, taps = idx.shape
    w = layer.weight.reshape(out_ch, in_ch, taps)
    shape = (out_ch, positions, in_ch, taps)
    o = np.arange(out_ch)[:, None, None, None]
    p = np.arange(positions)[None, :, None, None]
    c = np.arange(in_ch)[None, None, :, None] + (np.arange(out_ch) // (out_ch // layer.group) * in_ch)[:, None, None, None]
    pix = idx[None, :, None, :]
    rows = np.broadcast_to(o * positions + p, shape)
    cols = np.broadcast_to(c * height * width + pix, shape)
    vals = np.broadcast_to(w[:, None, :, :], shape)
    keep = np.broadcast_to(pix >= 0, shape) & (vals != 0)
    return sp.csr_matrix((vals[keep], (rows[keep], cols[keep])),
                         shape=(out_ch * positions, all_in * height * width))


def build_conv(ctx: Context, i: int, layer, X: Expr) -> Expr:
    forward = lambda c: layer.forward(c.reshape(X.n, *layer.in_shape))
    return ctx.pb.linear_map(X, conv_matrix(layer), forward, layer.out_shape)
