"""A mixed-integer linear program as plain arrays, the hand-over format between formulation and solve.

    minimise  cost @ x + offset   subject to   row_lower <= A @ x <= row_upper,
                                               col_lower <= x <= col_upper,  x[integer] integral.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


@dataclass
class Milp:
    cost: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    integer: np.ndarray  # bool per column
    A: sp.csr_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    offset: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def num_cols(self) -> int:
        return int(self.cost.size)

    @property
    def num_rows(self) -> int:
        return int(self.A.shape[0])

    @property
    def num_integer(self) -> int:
        return int(np.count_nonzero(self.integer))

    def relaxed(self) -> "Milp":
        """The same problem with every integer column made continuous (bounds kept)."""
        return Milp(self.cost, self.col_lower, self.col_upper, np.zeros_like(self.integer), self.A,
                    self.row_lower, self.row_upper, self.offset, list(self.notes))

    def objective(self, x: np.ndarray) -> float:
        return float(self.cost @ x + self.offset)

    def violation(self, x: np.ndarray) -> tuple[float, str]:
        """Largest violation of a row, a column bound or integrality at x, and where it is."""
        ax = self.A @ x
        worst, where = 0.0, "none"
        checks = (("row", self.row_lower - ax), ("row", ax - self.row_upper),
                  ("column", self.col_lower - x), ("column", x - self.col_upper))
        for kind, gap in checks:
            if gap.size and gap.max() > worst:
                worst, where = float(gap.max()), f"{kind} {int(gap.argmax())}"
        if self.num_integer:
            frac = np.abs(x[self.integer] - np.round(x[self.integer]))
            if frac.max() > worst:
                column = int(np.flatnonzero(self.integer)[frac.argmax()])
                worst, where = float(frac.max()), f"integrality of column {column}"
        return worst, where

    def save(self, path: str) -> None:
        """Uncompressed .npz (fast; the child solver process reads it)."""
        A = self.A.tocsr()
        np.savez(path, cost=self.cost, col_lower=self.col_lower, col_upper=self.col_upper,
                 integer=self.integer, indptr=A.indptr, indices=A.indices, data=A.data,
                 shape=np.array(A.shape), row_lower=self.row_lower, row_upper=self.row_upper,
                 offset=np.array(self.offset))

    @classmethod
    def load(cls, path: str) -> "Milp":
        d = np.load(path)
        A = sp.csr_matrix((d["data"], d["indices"], d["indptr"]), shape=tuple(d["shape"]))
        return cls(d["cost"], d["col_lower"], d["col_upper"], d["integer"].astype(bool), A,
                   d["row_lower"], d["row_upper"], float(d["offset"]))
