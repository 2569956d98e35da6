"""Solver backends, statuses and the hard deadline enforced by killing the solver's process group."""
from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
import scipy.sparse as sp

from onnxcrit import solve as solve_module
from onnxcrit.errors import InputError
from onnxcrit.formulation.milp import Milp
from onnxcrit.solve import solve

from .procs import processes


def market_split(m=6, n=50, seed=0) -> Milp:
    """A small MIP that branch-and-bound cannot close in seconds (Cornuejols-Dawande market split)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 100, size=(m, n)).astype(float)
    b = np.floor(a.sum(axis=1) / 2)
    A = sp.hstack([sp.csr_matrix(a), sp.identity(m), -sp.identity(m)]).tocsr()  # a x + s+ - s- = b
    cost = np.concatenate([np.zeros(n), np.ones(2 * m)])
    upper = np.concatenate([np.ones(n), np.full(2 * m, np.inf)])
    integer = np.concatenate([np.ones(n, bool), np.zeros(2 * m, bool)])
    return Milp(cost, np.zeros(n + 2 * m), upper, integer, A, b, b)


def tiny_lp(feasible=True) -> Milp:
    """min x + y  s.t.  x + y >= 1, x - y <= 1 (or x + y <= 0.5 when infeasible), 0 <= x, y <= 1."""
    A = sp.csr_matrix(np.array([[1.0, 1.0], [1.0, -1.0] if feasible else [1.0, 1.0]]))
    upper = np.array([np.inf, 1.0 if feasible else 0.5])
    return Milp(np.ones(2), np.zeros(2), np.ones(2), np.zeros(2, bool), A, np.array([1.0, -np.inf]), upper)


class _Recorder(subprocess.Popen):
    pids: list[int] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _Recorder.pids.append(self.pid)


def _group_members(pgid: int) -> list[int]:
    return [pid for pid, fields in processes().items() if int(fields[2]) == pgid and fields[0] != "Z"]


@pytest.fixture
def recorded(monkeypatch):
    _Recorder.pids = []
    monkeypatch.setattr(solve_module.subprocess, "Popen", _Recorder)
    return _Recorder.pids


@pytest.mark.parametrize("backend", ["highs", "cbc"])
def test_deadline_on_a_problem_that_cannot_finish(backend, recorded):
    limit = 2.5
    start = time.perf_counter()
    res = solve(market_split(), solver=backend, time_limit=limit)
    elapsed = time.perf_counter() - start
    assert elapsed <= 1.1 * limit + 0.5
    assert res.status in ("feasible_at_deadline", "no_solution")
    if res.status == "feasible_at_deadline":
        assert res.x is not None and res.objective is not None
    assert recorded and all(not _group_members(pid) for pid in recorded)  # no solver process left


@pytest.mark.parametrize("backend", ["highs", "cbc"])
def test_solver_ignoring_its_limit_is_killed_and_its_incumbent_used(backend, recorded, monkeypatch):
    # the child tells the solver a limit far beyond the deadline: only the parent's kill can stop it
    monkeypatch.setattr(solve_module, "_MARGIN_MIN", -60.0)
    monkeypatch.setattr(solve_module, "_MARGIN_FRACTION", 0.0)
    limit = 2.5
    start = time.perf_counter()
    res = solve(market_split(), solver=backend, time_limit=limit)
    elapsed = time.perf_counter() - start
    assert elapsed <= 1.1 * limit + 0.5
    assert "deadline reached" in res.message
    if backend == "highs":  # HiGHS streams every incumbent; cbcbox's CBC calls back only for some
        assert res.status == "feasible_at_deadline", res.message
    if res.status == "feasible_at_deadline":
        worst, _ = market_split().violation(res.x)
        assert worst < 1e-5
    else:
        assert res.status == "no_solution"
    assert recorded and all(not _group_members(pid) for pid in recorded)


@pytest.mark.parametrize("backend", ["highs", "highs-ipm", "cbc"])
def test_statuses(backend):
    res = solve(tiny_lp(), solver=backend, time_limit=30)
    assert res.status == "optimal"
    assert res.objective == pytest.approx(1.0, abs=1e-7)
    assert res.gap == pytest.approx(0.0, abs=1e-6)
    res = solve(tiny_lp(feasible=False), solver=backend, time_limit=30)
    assert res.status == "infeasible" and res.x is None


def test_no_solution_when_the_deadline_is_too_short():
    res = solve(market_split(), solver="highs", time_limit=0.05)
    assert res.status == "no_solution" and res.x is None
    assert res.seconds < 1.0


def test_objective_offset_and_small_mip():
    """A 2-binary MIP solved to optimality; the objective includes the offset."""
    A = sp.csr_matrix(np.array([[1.0, 1.0]]))
    milp = Milp(np.array([-1.0, -2.0]), np.zeros(2), np.ones(2), np.ones(2, bool), A, np.array([-np.inf]),
                np.array([1.0]), offset=10.0)
    for backend in ("highs", "cbc"):
        res = solve(milp, solver=backend, time_limit=30)
        assert res.status == "optimal"
        np.testing.assert_allclose(res.x, [0.0, 1.0], atol=1e-9)
        assert res.objective == pytest.approx(8.0) and res.bound == pytest.approx(8.0, abs=1e-3)


def test_in_process_solve_matches_child():
    a = solve(tiny_lp(), solver="highs", time_limit=30)
    b = solve(tiny_lp(), solver="highs", time_limit=30, isolate=False)
    np.testing.assert_array_equal(a.x, b.x)


def test_bad_options():
    with pytest.raises(InputError):
        solve(tiny_lp(), solver="gurobi")
    with pytest.raises(InputError):
        solve(tiny_lp(), time_limit=0)


def test_milp_round_trip(tmp_path):
    m = market_split(3, 7)
    m.save(tmp_path / "p.npz")
    back = Milp.load(tmp_path / "p.npz")
    assert (back.A != m.A).nnz == 0
    np.testing.assert_array_equal(back.integer, m.integer)
    np.testing.assert_array_equal(back.row_lower, m.row_lower)
