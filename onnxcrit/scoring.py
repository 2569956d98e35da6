"""The scoring stage: calibration images -> OAMIP -> solver -> a score per prunable unit."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .calibration import choose_calibration
from .errors import InputError, SolveError
from .formulation import build_problem
from .formulation.model import STABLE_ON, BuildTimeout
from .options import Options
from .solve import solve


@dataclass
class ScoreResult:
    """Scores and the record of how they were obtained."""

    scores: dict[int, np.ndarray]  # layer position in net.layers -> score per unit (empty without solution)
    status: str  # optimal | feasible_at_deadline | infeasible | no_solution
    objective: float | None
    bound: float | None
    gap: float | None
    variables: int
    binaries: int
    constraints: int
    nonzeros: int
    build_seconds: float
    solve_seconds: float
    calibration_indices: np.ndarray
    skipped: list[str]
    solver: str
    relaxed: bool
    message: str = ""
    unit_stats: dict[int, dict[str, int]] = field(default_factory=dict)  # layer -> off / on / unstable
    binaries_by_origin: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("optimal", "feasible_at_deadline")


def compute_scores(net, x: np.ndarray, y: np.ndarray, *, eps: float = 1e-5, lam: float = 5.0,
                   loss: str = "hinge", margin: float = 1.0, sparsity: str = "mean", relax: bool = True,
                   num_samples: int = 10, seed: int = 0, solver: str = "auto", time_limit: float = 300.0,
                   threads: int = 1, stable_on: str = "linear", calibration: np.ndarray | None = None,
                   require_all_classes: bool = False, raise_on_failure: bool = True) -> ScoreResult:
    """Score every prunable unit of `net` with the OAMIP on calibration images drawn from (x, y).

    relax=True (default) solves the LP relaxation (binaries in [0, 1]) by interior point: on every model
    measured it gave the same scores as the MIP, in a fraction of the time (README, benchmarks/scores.py).
    The calibration images are chosen by `choose_calibration` unless `calibration` gives their indices.
    `time_limit` (seconds, wall clock) covers the whole call: choosing the images, building the problem (checked
    after every layer) and the solve, which gets what the build left and is enforced by killing the solver
    process; the best solution found by then is used and the status says so. Without a usable solution (infeasible,
    nothing found in time) a SolveError is raised whose `result` attribute holds the record, unless
    `raise_on_failure` is False.
    """
    start = time.monotonic()
    _check_options(eps, lam, loss, margin, sparsity, solver, time_limit, threads, stable_on)
    if calibration is None:
        indices, skipped = choose_calibration(net, x, y, num_samples, seed, require_all_classes)
    else:
        indices, skipped = np.asarray(calibration, dtype=np.int64), []
    xs = np.asarray(x, dtype=np.float64).reshape(len(x), *net.input_shape)[indices]
    ys = np.asarray(y).astype(np.int64)[indices]

    try:
        form = build_problem(net, xs, ys, eps=eps, lam=lam, loss=loss, margin=margin, sparsity=sparsity,
                             relax=relax, stable_on=stable_on, deadline=start + time_limit)
    except BuildTimeout as late:
        return _out_of_time(f"building the problem passed it after layer {late.layer + 1} of {late.layers} "
                            f"({late.seconds:.1f} s)", time_limit, late.seconds, time.monotonic() - start, indices,
                            skipped, solver, relax, raise_on_failure)
    milp = form.milp
    left = time_limit - (time.monotonic() - start)
    if left <= 0:
        return _out_of_time(f"building the problem took {form.build_seconds:.1f} s of it, none was left to solve",
                            time_limit, form.build_seconds, time.monotonic() - start, indices, skipped, solver, relax,
                            raise_on_failure, milp)
    answer = solve(milp, solver=solver, time_limit=left, threads=threads, seed=seed)
    message = answer.message
    if answer.status == "infeasible":
        message = ("the MIP is infeasible, although the unpruned network (every score 1) should satisfy it; "
                   "this points at numerical trouble with the bounds"
                   + (f" ({'; '.join(form.notes)})" if form.notes else "")
                   + f"; try a larger eps than {eps:g}" + ("" if relax else " or relax=True"))
    elif answer.status == "no_solution":
        message = (f"no solution within time_limit={time_limit:g} s (building the problem took "
                   f"{form.build_seconds:.1f} s, the solve the rest: {answer.message}); raise time_limit"
                   + (", or use fewer calibration images" if relax else ", or use relax=True"))
    result = ScoreResult(
        scores=form.scores(answer.x) if answer.x is not None else {},
        status=answer.status, objective=answer.objective, bound=answer.bound, gap=answer.gap,
        variables=milp.num_cols, binaries=milp.num_integer if not relax else 0, constraints=milp.num_rows,
        nonzeros=int(milp.A.nnz), build_seconds=form.build_seconds, solve_seconds=answer.seconds,
        calibration_indices=indices, skipped=skipped, solver=answer.solver, relaxed=relax, message=message,
        unit_stats=form.unit_stats, binaries_by_origin=dict(form.binaries))
    if raise_on_failure and not result.ok:
        err = SolveError(message)
        err.result = result
        raise err
    return result


def _out_of_time(what: str, time_limit: float, build_seconds: float, seconds: float, indices, skipped, solver: str,
                 relax: bool, raise_on_failure: bool, milp=None) -> ScoreResult:
    """The record (and, by default, the SolveError) of a call whose time ran out before the solve."""
    message = (f"no solution within time_limit={time_limit:g} s: {what}; raise the time limit, or use fewer "
               f"calibration images or --mode decoupled")
    sizes = (dict(variables=milp.num_cols, binaries=milp.num_integer if not relax else 0, constraints=milp.num_rows,
                  nonzeros=int(milp.A.nnz)) if milp is not None else
             dict(variables=0, binaries=0, constraints=0, nonzeros=0))
    result = ScoreResult(scores={}, status="no_solution", objective=None, bound=None, gap=None, **sizes,
                         build_seconds=build_seconds, solve_seconds=max(seconds - build_seconds, 0.0),
                         calibration_indices=indices, skipped=skipped, solver=solver, relaxed=relax, message=message)
    if raise_on_failure:
        err = SolveError(message)
        err.result = result
        raise err
    return result


def _check_options(eps, lam, loss, margin, sparsity, solver, time_limit, threads, stable_on):
    """The user-facing values through `Options` (one set of checks); the internal knobs here."""
    Options(eps=eps, lam=lam, loss=loss, margin=margin, sparsity=sparsity, solver=solver, time_limit=time_limit)
    if int(threads) != threads or threads < 1:
        raise InputError(f"threads must be a positive integer, got {threads}")
    if stable_on not in STABLE_ON:
        raise InputError(f"unknown stable_on {stable_on!r}; expected one of {STABLE_ON}")
