"""Joins the per-layer builders into one MILP for a network and a calibration batch."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..bounds import Bounds, interval_bounds
from ..ir import INPUT, KINDS, Add
from .base import Context, Expr, ProblemBuilder, widen
from .conv import build_conv
from .dense import build_dense
from .loss import LOSSES, add_loss, add_sparsity
from .milp import Milp
from .merge import build_add, build_concat
from .pool import build_avgpool, build_input_stage, build_maxpool, build_reshape
from .relu import build_relu, score_without_relu

# layer kind -> builder(ctx, position, layer, *input Exprs) -> output Expr
BUILDERS = {
    "dense": build_dense,
    "conv": build_conv,
    "relu": build_relu,
    "maxpool": build_maxpool,
    "avgpool": build_avgpool,
    "reshape": build_reshape,
    "affine": build_input_stage,
    "transpose": build_input_stage,
    "add": build_add,
    "concat": build_concat,
}

SPARSITY = ("mean", "paper")


class BuildTimeout(Exception):
    """The build passed its deadline (checked after every layer); `layer` is the last one built."""

    def __init__(self, layer: int, layers: int, seconds: float):
        super().__init__(f"after layer {layer + 1} of {layers} ({seconds:.1f} s)")
        self.layer, self.layers, self.seconds = layer, layers, seconds
STABLE_ON = ("linear", "nonneg")


@dataclass
class Formulation:
    """The MILP and how to read a solution of it back in terms of the network."""

    milp: Milp
    score_cols: dict[int, np.ndarray]  # layer position -> score column per unit
    logits: Expr  # the network's logits on the calibration images, as expressions
    unit_stats: dict[int, dict[str, int]]  # scored layer -> (image, unit) pairs off / on / unstable
    binaries: dict[str, int]  # origin (relu, maxpool) -> binary columns
    columns: dict[str, int]  # kind -> columns
    build_seconds: float
    reference: np.ndarray  # the unpruned network (every score 1) as a point of the problem
    deviation: dict[int, float]  # per layer: max |expression at the reference - forward pass|
    notes: list[str] = field(default_factory=list)

    def scores(self, x: np.ndarray) -> dict[int, np.ndarray]:
        """Score per unit of every scored layer, clipped to [0, 1]."""
        return {i: np.clip(x[cols], 0.0, 1.0) for i, cols in self.score_cols.items()}

    def logits_at(self, x: np.ndarray) -> np.ndarray:
        return self.logits.evaluate(x).reshape(self.logits.n, -1)

    def with_scores_fixed(self, value: float = 1.0) -> Milp:
        """The MILP with every score fixed (value 1: the unpruned network)."""
        lo, hi = self.milp.col_lower.copy(), self.milp.col_upper.copy()
        for cols in self.score_cols.values():
            lo[cols] = hi[cols] = value
        return replace(self.milp, col_lower=lo, col_upper=hi)


def score_points(net) -> set[int]:
    """Layers whose outputs carry their group's score in the MIP: the producers and coupled convs of every prunable
    group and the residual Adds of its channels. A ReLU reading one applies the score (METHOD.md section 3);
    without one, the layer's output gets h = a - (1 - s) U."""
    points = set()
    for g in net.deps.prunable():
        points.update(g.producers)
        points.update(g.coupled)
        points.update(p for p in g.values if p >= 0 and isinstance(net.layers[p], Add))
    return points


def _score_applied_later(net, i: int) -> bool:
    """A ReLU reads layer i (it applies the score), or only residual Adds do (the score applies after them)."""
    readers = net.consumers_of(i)
    return bool(readers) and (any(KINDS[net.layers[j].kind].activation for j in readers) or
                              all(isinstance(net.layers[j], Add) for j in readers))


def build_problem(net, x: np.ndarray, y: np.ndarray, *, eps: float = 1e-5, lam: float = 5.0,
                  loss: str = "hinge", margin: float = 1.0, sparsity: str = "mean", relax: bool = False,
                  stable_on: str = "linear", bounds: Bounds | None = None,
                  deadline: float | None = None) -> Formulation:
    """The OAMIP of METHOD.md for the images x [N, *input_shape] with labels y [N].

    deadline: a time.monotonic() value; past it after any layer, BuildTimeout is raised (a layer is not cut
    short, so the overshoot is at most one layer's build)."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    if sparsity not in SPARSITY:
        raise ValueError(f"unknown sparsity {sparsity!r}; expected one of {SPARSITY}")
    if stable_on not in STABLE_ON:
        raise ValueError(f"unknown stable_on {stable_on!r}; expected one of {STABLE_ON}")
    start = time.perf_counter()
    x = np.asarray(x, dtype=np.float64).reshape(-1, *net.input_shape)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if bounds is None:
        bounds = interval_bounds(net, x, eps)
    pb = ProblemBuilder()
    ctx = Context(net=net, bounds=bounds, pb=pb, relax=relax, stable_on=stable_on,
                  activations=net.activations(x), inputs=x)
    layers = net.layers
    groups = net.deps.prunable()
    ctx.score_points = score_points(net)
    last_use = {}
    for i in range(len(layers)):
        for p in net.inputs_of(i):
            last_use[p] = i

    deviation: dict[int, float] = {}
    values = {INPUT: Expr.constant(x, 0)}  # inputs are constants: with a tiny eps the box is a point
    for i, layer in enumerate(layers):
        for g in groups:  # a group's scores are created with its first producer
            if g.key == i:
                ctx.score_cols[i] = pb.add_cols(g.units, 0.0, 1.0, kind="score", ref=1.0)
        X = BUILDERS[layer.kind](ctx, i, layer, *(values[p] for p in net.inputs_of(i)))
        if i in ctx.score_points and not _score_applied_later(net, i):
            X = score_without_relu(ctx, i, X)
        values[i] = X
        for p in net.inputs_of(i):
            if last_use.get(p) == i:
                values.pop(p, None)
        # at every score 1 the expressions must reproduce the forward pass (cheap: one product)
        gap = pb.ref_value(X, np.arange(X.rows)) - ctx.activations[i].reshape(-1)
        deviation[i] = float(np.abs(gap).max(initial=0.0))
        if deadline is not None and time.monotonic() > deadline:
            raise BuildTimeout(i, len(layers), time.perf_counter() - start)
    X = values[len(layers) - 1]

    logits0 = ctx.activations[-1]
    add_loss(ctx, X, y, logits0, kind=loss, margin=margin, weight=lam)
    add_sparsity(ctx, sparsity)
    milp = pb.finish()
    worst = max(deviation, key=deviation.get)
    if deviation[worst] > 1e-6 * (1.0 + float(np.abs(ctx.activations[worst]).max())):
        milp.notes.append(f"the formulation does not reproduce the network at layer {worst} "
                          f"({layers[worst].name}): deviation {deviation[worst]:.3g}")
    X = replace(X, A=widen(X.A, pb.num_cols))
    return Formulation(milp=milp, score_cols=dict(ctx.score_cols), logits=X, unit_stats=ctx.unit_stats,
                       binaries=ctx.binaries, columns=dict(pb.kinds),
                       build_seconds=time.perf_counter() - start, reference=pb.reference(), deviation=deviation,
                       notes=list(milp.notes))
