"""Shared machinery of the layer builders: affine expressions and the growing MILP.

Every layer output, over all calibration images at once, is an `Expr`: one affine expression per row
(row n * size + e for image n and flat element e of the per-sample shape) in the columns created so far.
A builder turns its input `Expr` into its output `Expr` and adds columns and rows in bulk through a
`ProblemBuilder`. Expressions are substituted into the next layer rather than given their own variable
when that keeps the matrix smaller (`linear_map` measures it), which makes the first layer's
pre-activations constants and keeps rows short.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .milp import Milp

INF = np.inf


def widen(A: sp.spmatrix, ncols: int) -> sp.csr_matrix:
    """The same rows seen with `ncols` columns (columns are only ever appended)."""
    A = A.tocsr()
    if A.shape[1] == ncols:
        return A
    return sp.csr_matrix((A.data, A.indices, A.indptr), shape=(A.shape[0], ncols))


@dataclass
class Expr:
    """value[r] = A[r] @ x + c[r]; `nonneg[r]` marks rows that still owe the constraint value >= 0."""

    A: sp.csr_matrix
    c: np.ndarray
    nonneg: np.ndarray
    shape: tuple[int, ...]  # per-sample shape
    n: int  # number of images

    @property
    def rows(self) -> int:
        return int(self.c.size)

    @classmethod
    def constant(cls, values: np.ndarray, ncols: int) -> "Expr":
        values = np.asarray(values, dtype=np.float64)
        flat = values.reshape(-1)
        return cls(sp.csr_matrix((flat.size, ncols)), flat.copy(), np.zeros(flat.size, bool),
                   tuple(values.shape[1:]), int(values.shape[0]))

    def with_shape(self, shape: tuple[int, ...]) -> "Expr":
        return Expr(self.A, self.c, self.nonneg, tuple(shape), self.n)

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """Values [n, *shape] at the column values x."""
        A = widen(self.A, x.size)
        return (A @ x + self.c).reshape(self.n, *self.shape)


@dataclass
class ProblemBuilder:
    """Collects columns and rows as arrays; `finish()` returns the `Milp`."""

    num_cols: int = 0
    num_rows: int = 0
    offset: float = 0.0
    _col_lower: list = field(default_factory=list)
    _col_upper: list = field(default_factory=list)
    _ref: list = field(default_factory=list)  # value of each column in the unpruned network
    _cost: list = field(default_factory=list)
    _integer: list = field(default_factory=list)
    _coo: list = field(default_factory=list)  # (row ids, col ids, values)
    _row_lower: list = field(default_factory=list)
    _row_upper: list = field(default_factory=list)
    kinds: dict = field(default_factory=dict)  # kind -> number of columns
    _extra_cost: list = field(default_factory=list)

    def add_cols(self, count: int, lower, upper, cost=0.0, integer: bool = False, kind: str = "aux",
                 ref=np.nan) -> np.ndarray:
        """New columns; `ref` is their value in the unpruned network (every score 1)."""
        count = int(count)
        idx = np.arange(self.num_cols, self.num_cols + count)
        self._col_lower.append(np.broadcast_to(np.asarray(lower, float), (count,)).copy())
        self._col_upper.append(np.broadcast_to(np.asarray(upper, float), (count,)).copy())
        self._cost.append(np.broadcast_to(np.asarray(cost, float), (count,)).copy())
        self._integer.append(np.full(count, bool(integer)))
        self._ref.append(np.broadcast_to(np.asarray(ref, float), (count,)).copy())
        self.num_cols += count
        self.kinds[kind] = self.kinds.get(kind, 0) + count
        return idx

    def add_cost(self, cols: np.ndarray, values) -> None:
        """Add values to the cost of existing columns."""
        self._extra_cost.append((np.asarray(cols), np.broadcast_to(np.asarray(values, float), np.shape(cols))))

    def reference(self) -> np.ndarray:
        """The unpruned network as a point of the problem (nan where a column has no reference yet)."""
        return np.concatenate(self._ref) if self._ref else np.zeros(0)

    def ref_value(self, X: "Expr", rows: np.ndarray) -> np.ndarray:
        """Value of rows of X at the reference point."""
        A = widen(X.A[rows], self.num_cols)
        ref = np.nan_to_num(self.reference())
        return A @ ref + X.c[rows]

    def col_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Current column bounds (before the one-column rows are folded in)."""
        if not self._col_lower:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(self._col_lower), np.concatenate(self._col_upper)

    def box_minimum(self, D: sp.csr_matrix, c: np.ndarray) -> np.ndarray:
        """Minimum of each row of D @ x + c over the current column bounds (-inf if unbounded)."""
        lo, hi = self.col_bounds()
        D = widen(D, self.num_cols).tocsr()
        cols = D.indices
        pick = np.where(D.data > 0, lo[cols], hi[cols])
        with np.errstate(invalid="ignore"):
            terms = np.where(D.data != 0, D.data * pick, 0.0)
        row = np.repeat(np.arange(D.shape[0]), np.diff(D.indptr))
        out = np.asarray(c, float).copy()
        np.add.at(out, row, terms)
        return out

    def add_rows(self, terms, lower, upper) -> None:
        """Add rows sum(terms) in [lower, upper].

        Each term is a sparse matrix (one row per new row, columns created so far) or a pair
        (cols, values) of arrays with one entry per new row.
        """
        lower = np.asarray(lower, float)
        count = lower.size
        if count == 0:
            return
        for term in terms:
            if sp.issparse(term):
                coo = term.tocoo()
                self._coo.append((coo.row + self.num_rows, coo.col, coo.data))
            else:
                cols, vals = term
                cols = np.asarray(cols)
                self._coo.append((np.arange(count) + self.num_rows, cols,
                                  np.broadcast_to(np.asarray(vals, float), (count,))))
        self._row_lower.append(lower)
        self._row_upper.append(np.broadcast_to(np.asarray(upper, float), (count,)).copy())
        self.num_rows += count

    # --- expression helpers -------------------------------------------------------------------------

    def flush(self, X: Expr, mask: np.ndarray | None = None) -> Expr:
        """Emit the pending rows value >= 0 (where mask) and return X without them pending."""
        todo = X.nonneg if mask is None else (X.nonneg & mask)
        if not todo.any():
            return X
        rows = np.flatnonzero(todo)
        self.add_rows([X.A[rows]], -X.c[rows], INF)
        nonneg = X.nonneg.copy()
        nonneg[rows] = False
        return Expr(X.A, X.c, nonneg, X.shape, X.n)

    def materialise(self, X: Expr, mask: np.ndarray) -> Expr:
        """Give the rows in mask a column of their own (y = expression); pending value >= 0 becomes y's bound."""
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return X
        lower = np.where(X.nonneg[rows], 0.0, -INF)
        y = self.add_cols(rows.size, lower, INF, kind="substitute", ref=self.ref_value(X, rows))
        A = widen(X.A, self.num_cols)
        self.add_rows([(y, 1.0), -A[rows]], X.c[rows], X.c[rows])
        keep = sp.diags((~mask).astype(float)) @ A
        A_new = (keep + sp.csr_matrix((np.ones(rows.size), (rows, y)), shape=A.shape)).tocsr()
        c = X.c.copy()
        c[rows] = 0.0
        nonneg = X.nonneg.copy()
        nonneg[rows] = False
        return Expr(A_new, c, nonneg, X.shape, X.n)

    def linear_map(self, X: Expr, K: sp.spmatrix, forward, out_shape: tuple[int, ...]) -> Expr:
        """Apply the per-sample linear map K (out x in) to every image; forward(c) maps the constant parts
        (the layer's own forward pass, bias included).

        Rows of X that are sums of several columns are substituted into the product when that gives fewer
        nonzeros than giving each its own column first; the rows' pending value >= 0 is emitted.
        """
        KN = sp.kron(sp.identity(X.n, format="csr"), sp.csr_matrix(K), format="csr")
        A = widen(X.A, self.num_cols)
        nnz_row = np.diff(A.indptr)
        multi = nnz_row > 1
        product = KN @ A
        if multi.any():
            KN_csc = KN.tocsc()
            used = np.diff(KN_csc.indptr) > 0  # inputs the map actually reads
            multi &= used
            alt = A[multi].nnz + int(multi.sum()) + KN_csc[:, nnz_row > 0].nnz
            if product.nnz > alt:
                X = self.materialise(X, multi)
                A = widen(X.A, self.num_cols)
                product = KN @ A
        self.flush(X)
        product = product.tocsr()
        product.eliminate_zeros()
        n_out = int(np.prod(out_shape))
        const = forward(X.c)  # after any materialisation, which moves constants into the new columns
        return Expr(product, np.asarray(const, float).reshape(-1), np.zeros(X.n * n_out, bool),
                    tuple(out_shape), X.n)

    # --- assembly -------------------------------------------------------------------------------------

    def finish(self, scale_rows: bool = True) -> Milp:
        """Concatenate the blocks; fold one-column rows into column bounds; scale rows to max |coef| 1."""
        n = self.num_cols
        cat = lambda parts, dtype=float: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        col_lower, col_upper = cat(self._col_lower), cat(self._col_upper)
        cost, integer = cat(self._cost), cat(self._integer, bool)
        row_lower, row_upper = cat(self._row_lower), cat(self._row_upper)
        for cols, values in self._extra_cost:
            np.add.at(cost, cols, values)
        if self._coo:
            r = np.concatenate([t[0] for t in self._coo])
            c = np.concatenate([t[1] for t in self._coo])
            v = np.concatenate([t[2] for t in self._coo])
        else:
            r = c = np.zeros(0, int)
            v = np.zeros(0)
        A = sp.csr_matrix((v, (r, c)), shape=(self.num_rows, n))  # sums duplicates
        A.eliminate_zeros()
        notes = []
        nnz = np.diff(A.indptr)

        # rows without columns: constants that must lie in their range
        empty = nnz == 0
        bad = empty & ((row_lower > 1e-9) | (row_upper < -1e-9))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            notes.append(f"{int(bad.sum())} constant rows violated (first: row {k}, "
                         f"0 not in [{row_lower[k]:.3g}, {row_upper[k]:.3g}])")

        # one-column rows are column bounds
        single = nnz == 1
        if single.any():
            rows = np.flatnonzero(single)
            cols = A.indices[A.indptr[rows]]
            coef = A.data[A.indptr[rows]]
            lo = np.where(coef > 0, row_lower[rows], row_upper[rows]) / coef
            hi = np.where(coef > 0, row_upper[rows], row_lower[rows]) / coef
            np.maximum.at(col_lower, cols, lo)
            np.minimum.at(col_upper, cols, hi)
            # a bound pushed past its partner by rounding alone is snapped back
            close = (col_lower > col_upper) & (col_lower - col_upper <= 1e-9 * (1 + np.abs(col_upper)))
            col_lower[close] = col_upper[close]
        keep = ~(empty | single)
        A, row_lower, row_upper = A[keep], row_lower[keep], row_upper[keep]
        crossed = col_lower > col_upper
        if crossed.any():
            k = int(np.flatnonzero(crossed)[0])
            notes.append(f"{int(crossed.sum())} columns with lower bound above upper bound (first: column {k}, "
                         f"[{col_lower[k]:.6g}, {col_upper[k]:.6g}])")

        if scale_rows and A.nnz:
            big = np.maximum.reduceat(np.abs(A.data), A.indptr[:-1][np.diff(A.indptr) > 0])
            factor = np.ones(A.shape[0])
            factor[np.diff(A.indptr) > 0] = 1.0 / big
            A = (sp.diags(factor) @ A).tocsr()
            row_lower, row_upper = row_lower * factor, row_upper * factor
        return Milp(cost, col_lower, col_upper, integer, A.tocsr(), row_lower, row_upper, self.offset, notes)


@dataclass
class Context:
    """What a layer builder may read besides its input: the network, its bounds, the scores, options."""

    net: object  # ir.Network
    bounds: object  # bounds.Bounds
    pb: ProblemBuilder
    relax: bool = False
    stable_on: str = "linear"  # stable-on units: "linear" (h = a - (1 - s) U) or "nonneg" (also h >= 0)
    score_cols: dict = field(default_factory=dict)  # layer index -> score column of each unit
    unit_stats: dict = field(default_factory=dict)  # group key -> counts of off / on / unstable units
    score_points: set = field(default_factory=set)  # layers whose outputs carry their groups' scores
    binaries: dict = field(default_factory=dict)  # origin -> number of binary columns
    activations: list = field(default_factory=list)  # forward values of every layer (s = 1)
    inputs: np.ndarray | None = None

    def _source(self, i: int) -> int:
        return self.net.inputs_of(i)[0]

    def input_bounds(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat lower and upper bounds (all images) of layer i's (first) input, from the unpruned network."""
        p = self._source(i)
        if p < 0:
            lo, hi = self.bounds.input_lower, self.bounds.input_upper
        else:
            lo, hi = self.bounds.lower[p], self.bounds.upper[p]
        return lo.reshape(-1), hi.reshape(-1)

    def input_values(self, i: int) -> np.ndarray:
        """Flat forward values (all images) of layer i's (first) input in the unpruned network."""
        p = self._source(i)
        return (self.inputs if p < 0 else self.activations[p]).reshape(-1)

    def output_bounds(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.bounds.lower[i].reshape(-1), self.bounds.upper[i].reshape(-1)

    def score_per_row(self, p: int, n: int) -> np.ndarray | None:
        """Score column for every row of layer p's output (all images), -1 on rows of channels that no scored
        group owns; None when no channel of p is scored."""
        if p < 0 or not self.score_cols:
            return None
        keys, units = self.net.deps.owners[p]
        owned = np.flatnonzero([k in self.score_cols for k in keys])
        if owned.size == 0:
            return None
        cols = np.full(keys.size, -1, dtype=np.int64)
        cols[owned] = [self.score_cols[int(keys[c])][int(units[c])] for c in owned]
        shape = self.net.layers[p].out_shape
        per_sample = np.repeat(cols, int(np.prod(shape[1:], dtype=int)))
        return np.tile(per_sample, n)

    def add_binaries(self, count: int, origin: str, ref=np.nan) -> np.ndarray:
        """Binary columns (continuous in [0, 1] when relaxed)."""
        self.binaries[origin] = self.binaries.get(origin, 0) + int(count)
        return self.pb.add_cols(count, 0.0, 1.0, integer=not self.relax, kind="binary", ref=ref)
