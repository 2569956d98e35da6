"""Solver backends and the hard wall-clock deadline.

The solve runs in a child process of its own session (process group). The child gives the solver a time
limit slightly below the deadline and writes every improved incumbent to a file as it is found; the parent
kills the whole process group at the deadline if the child has not finished, and then uses the best
incumbent the child wrote. So a solver that ignores its own limit cannot hold onnxcrit past the deadline.

Backends: HiGHS through `highspy` (dual simplex / branch-and-cut, or interior point for LPs) and CBC
through python-mip (the problem is handed over as an MPS file written by HiGHS).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .formulation.milp import Milp

STATUSES = ("optimal", "feasible_at_deadline", "infeasible", "no_solution")
SOLVERS = ("auto", "highs", "highs-ipm", "cbc")
# the child stops its solver this long before the deadline (startup, writing the answer)
_MARGIN_MIN, _MARGIN_FRACTION = 0.5, 0.05


@dataclass
class SolveResult:
    status: str  # one of STATUSES
    x: np.ndarray | None
    objective: float | None
    bound: float | None
    gap: float | None
    seconds: float
    solver: str
    message: str = ""


def default_solver(milp: Milp) -> str:
    """HiGHS interior point for an LP (no integer columns), CBC for a MIP.

    Measured on LeNet-5 / MNIST (benchmarks/scores.py and the README): the LP relaxation with 50 / 100
    calibration images took 1.3 / 3.4 s by HiGHS IPM; as a MIP, CBC took 13 / 79 s to the same objective
    (within 1e-5) and HiGHS 1.16 branch-and-cut stalled at the root node without an incumbent for 95 s.
    """
    return "highs-ipm" if milp.num_integer == 0 else "cbc"


def solve(milp: Milp, *, solver: str = "auto", time_limit: float = 300.0, threads: int = 1, seed: int = 0,
          verbose: bool = False, isolate: bool = True) -> SolveResult:
    """Solve in a child process killed at `time_limit` seconds (wall clock) if still running.

    isolate=False solves in this process (no process start-up, but only the solver's own time limit):
    meant for tests and small problems.
    """
    if solver not in SOLVERS:
        raise InputError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    if not time_limit > 0:
        raise InputError(f"time_limit must be positive, got {time_limit}")
    if solver == "auto":
        solver = default_solver(milp)
    start = time.perf_counter()
    deadline = time.time() + time_limit
    margin = max(_MARGIN_MIN, _MARGIN_FRACTION * time_limit)
    config = {"solver": solver, "deadline": deadline, "margin": margin, "threads": int(threads),
              "seed": int(seed), "verbose": bool(verbose)}
    with tempfile.TemporaryDirectory(prefix="onnxcrit-solve-") as work:
        if isolate:
            milp.save(os.path.join(work, "problem.npz"))
            with open(os.path.join(work, "config.json"), "w") as f:
                json.dump(config, f)
            ended = _run_child(work, deadline, verbose)
        else:
            _solve_in(work, milp, config)
            ended = 0
        result = _read_answer(work, milp, solver, ended)
    result.seconds = time.perf_counter() - start
    return result


# The child imports solve.py, errors.py and formulation/milp.py only: package stubs stand in for the
# package __init__ files, which would load the whole pipeline (about a second) for nothing.
_CHILD_CODE = """
import os, sys, types
root = sys.argv[2]
for name, path in (("onnxcrit", root), ("onnxcrit.formulation", os.path.join(root, "formulation"))):
    stub = types.ModuleType(name)
    stub.__path__ = [path]
    sys.modules[name] = stub
from onnxcrit.solve import _child_main
_child_main(sys.argv[1])
"""


def _run_child(work: str, deadline: float, verbose: bool) -> int | None:
    """Run the child; its exit code, or None if it was killed at the deadline."""
    env = dict(os.environ)
    # numerical libraries must not start thread pools of their own in the child
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    code = _CHILD_CODE
    log = open(os.path.join(work, "log.txt"), "wb")
    package = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, "-c", code, work, package], stdout=None if verbose else log,
                            stderr=subprocess.STDOUT if not verbose else None, env=env,
                            start_new_session=True)
    try:
        proc.wait(timeout=max(0.0, deadline - time.time()))
        return proc.returncode
    except subprocess.TimeoutExpired:
        return None
    finally:  # also on KeyboardInterrupt: never leave the solver running
        if proc.poll() is None:
            _kill_group(proc)
        log.close()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _read_answer(work: str, milp: Milp, solver: str, ended: int | None) -> SolveResult:
    """The child's answer; else its last incumbent; else nothing. ended: exit code, None if killed."""
    answer = os.path.join(work, "answer.npz")
    incumbent = os.path.join(work, "incumbent.npz")
    stopped = ("deadline reached; the solver was stopped" if ended is None
               else f"the solver process failed (exit code {ended}): {_tail(os.path.join(work, 'log.txt'))}")
    if ended == 0 and os.path.exists(answer):
        d = np.load(answer)
        status = str(d["status"])
        x = d["x"] if d["x"].size else None
        bound = float(d["bound"]) + milp.offset if np.isfinite(d["bound"]) else None
        message = str(d["message"])
    elif os.path.exists(incumbent):
        d = np.load(incumbent)
        status, x = "feasible_at_deadline", d["x"]
        bound = float(d["bound"]) + milp.offset if np.isfinite(d["bound"]) else None
        message = stopped + "; its best incumbent is used"
    else:
        status, x, bound = "no_solution", None, None
        message = stopped + "; no solution had been found"
    objective = milp.objective(x) if x is not None else None
    if status == "optimal" and bound is None:
        bound = objective
    gap = None
    if objective is not None and bound is not None:
        gap = abs(objective - bound) / max(1e-10, abs(objective))
    return SolveResult(status, x, objective, bound, gap, 0.0, solver, message)


def _tail(path: str, chars: int = 400) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace").strip()
    except OSError:
        return "(no log)"
    return text[-chars:].replace("\n", " | ") or "(empty log)"


# ---------------------------------------------------------------------------------------------------
# child side: only numpy, scipy and the solver libraries


def _child_main(work: str) -> None:
    with open(os.path.join(work, "config.json")) as f:
        config = json.load(f)
    _solve_in(work, Milp.load(os.path.join(work, "problem.npz")), config)


def _solve_in(work: str, milp: Milp, config: dict) -> None:
    """Solve here, writing incumbents and the final answer into the directory `work`."""
    limit = config["deadline"] - time.time() - config["margin"]
    writer = _IncumbentWriter(os.path.join(work, "incumbent.npz"))
    backend = {"highs": _solve_highs, "highs-ipm": _solve_highs, "cbc": _solve_cbc}[config["solver"]]
    status, x, bound, message = backend(milp, config, max(limit, 0.05), writer)
    _atomic_savez(os.path.join(work, "answer.npz"), status=np.array(status),
                  x=np.zeros(0) if x is None else np.asarray(x, float),
                  bound=np.array(np.nan if bound is None else bound), message=np.array(message))


class _IncumbentWriter:
    """Writes each improved incumbent atomically, so the parent never reads half a file."""

    def __init__(self, path: str):
        self.path = path
        self.best = np.inf

    def __call__(self, x, objective: float, bound: float) -> None:
        if objective < self.best:
            self.best = objective
            _atomic_savez(self.path, x=np.asarray(x, float), objective=np.array(objective),
                          bound=np.array(bound))


def _atomic_savez(path: str, **arrays) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _highs_model(milp: Milp):
    import highspy

    A = milp.A.tocsc()
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = milp.num_cols, milp.num_rows
    lp.col_cost_ = milp.cost
    lp.col_lower_, lp.col_upper_ = milp.col_lower, milp.col_upper
    lp.row_lower_, lp.row_upper_ = milp.row_lower, milp.row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr
    lp.a_matrix_.index_ = A.indices
    lp.a_matrix_.value_ = A.data
    if milp.num_integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger if v else highspy.HighsVarType.kContinuous
                           for v in milp.integer]
    return lp


def _solve_highs(milp: Milp, config: dict, limit: float, writer):
    import highspy

    h = highspy.Highs()
    h.setOptionValue("output_flag", bool(config["verbose"]))
    h.setOptionValue("threads", int(config["threads"]))
    h.setOptionValue("random_seed", int(config["seed"]))
    h.setOptionValue("time_limit", float(limit))
    is_mip = milp.num_integer > 0
    if config["solver"] == "highs-ipm":
        if is_mip:
            h.setOptionValue("mip_lp_solver", "ipm")
        else:
            h.setOptionValue("solver", "ipm")
    h.passModel(_highs_model(milp))
    if is_mip:
        def improved(e):
            out = e.data_out
            writer(np.array(out.mip_solution), out.objective_function_value, out.mip_dual_bound)
        h.cbMipImprovingSolution.subscribe(improved)
    h.run()
    model_status = h.getModelStatus()
    info = h.getInfo()
    has_x = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = np.array(h.getSolution().col_value) if has_x else None
    S = highspy.HighsModelStatus
    if model_status == S.kOptimal:
        status = "optimal"
    elif model_status in (S.kInfeasible, S.kUnboundedOrInfeasible):
        status = "infeasible"
    elif has_x:
        status = "feasible_at_deadline"
    else:
        status = "no_solution"
    bound = info.mip_dual_bound if is_mip else (info.objective_function_value if status == "optimal" else None)
    if bound is not None and not np.isfinite(bound):
        bound = None
    return status, x, bound, h.modelStatusToString(model_status)


def _solve_cbc(milp: Milp, config: dict, limit: float, writer):
    import highspy
    import mip
    from mip.cbc import cbclib, ffi

    mps = os.path.join(os.path.dirname(writer.path), "problem.mps")
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.passModel(_highs_model(milp))
    h.writeModel(mps)
    m = mip.Model(solver_name=mip.CBC)
    # cbcbox's CBC crashes (SIGSEGV in CbcBnBOutput::onStrongStats) when branching with logging off;
    # its log goes to the child's log file unless verbose
    m.verbose = 1
    m.read(mps)
    m.threads = int(config["threads"])
    m.seed = int(config["seed"])
    m.max_mip_gap = 1e-4
    names = {v.name: j for j, v in enumerate(m.vars)}

    @ffi.callback("int (void *, double, int, char **, double *, void *)")
    def improved(model, obj, nz, vnames, values, data):
        x = np.zeros(milp.num_cols)
        for k in range(nz):
            x[names[ffi.string(vnames[k]).decode()]] = values[k]
        writer(x, obj, -np.inf)
        return 0

    if milp.num_integer:
        # cbcbox's CBC calls this for some incumbents only (not for root heuristics): after a kill at the
        # deadline a CBC solve may have nothing to show even if it had found a solution
        cbclib.Cbc_addIncCallback(m.solver._model, improved, ffi.NULL)
    status = m.optimize(max_seconds=limit, relax=False)
    S = mip.OptimizationStatus
    x = None
    if status in (S.OPTIMAL, S.FEASIBLE):
        x = np.array([v.x for v in m.vars], float)
    if status == S.OPTIMAL:
        name = "optimal"
    elif status in (S.INFEASIBLE, S.INT_INFEASIBLE):
        name = "infeasible"
    elif x is not None:
        name = "feasible_at_deadline"
    else:
        name = "no_solution"
    bound = m.objective_bound if x is not None or status == S.OPTIMAL else None
    return name, x, bound, str(status.name)
