"""A growing item-item co-occurrence matrix that is cheap to update and to query.

Every interaction adds a handful of pairs; every recommendation sums a few rows. A CSR matrix
answers row sums fast but is expensive to change, so the counts live in three levels, like a
log-structured merge tree:

- `pending`: the latest increments as coordinate arrays (cheap to append to);
- `delta`: a CSR matrix that pending folds into once it holds `merge_every` increments;
- `base`: a CSR matrix that delta folds into once delta is a fraction of base's size.

A query reads all three in one compiled pass (`models.kernels.sparse_row_sum`), so every
increment is visible immediately and the cost follows the entries read, not the catalogue.
Counts and weights must be positive (they are: co-occurrences, recency weights).

Memory: with ``max_per_row`` set, a fold that leaves `base` with more than
``2 * items * max_per_row`` cells keeps each row's ``max_per_row`` largest entries and drops
the rest, so the matrix holds at most ``2 * items * max_per_row`` cells (plus delta and
pending, bounded by the fold thresholds) however long the stream runs.
A dropped cell that occurs again starts over from its new increments. Unset, the counts are
exact and grow with the distinct pairs seen (the `itemknn` peer's definition).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from models.kernels import sparse_row_sum


def _resized(matrix: sp.csr_matrix, n: int) -> sp.csr_matrix:
    if matrix.shape[0] >= n:
        return matrix
    out = matrix.copy()
    out.resize((n, n))
    return out


def _empty(n: int = 0) -> sp.csr_matrix:
    return sp.csr_matrix((n, n), dtype=np.float64)


def top_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """`matrix` (canonical CSR) with only each row's `k` largest entries (ties: lower column).

    >>> m = sp.csr_matrix(np.array([[3.0, 1.0, 2.0, 5.0], [0.0, 4.0, 0.0, 0.0]]))
    >>> top_per_row(m, 2).toarray().tolist()
    [[3.0, 0.0, 0.0, 5.0], [0.0, 4.0, 0.0, 0.0]]
    """
    counts = np.diff(matrix.indptr)
    if not len(counts) or counts.max() <= k:
        return matrix
    rows = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((-matrix.data, rows))          # row blocks in place, largest first within
    rank = np.arange(len(order)) - matrix.indptr[rows[order]]
    keep = np.sort(order[rank < k])                    # back to row-major, column order
    indptr = np.concatenate([[0], np.cumsum(np.minimum(counts, k))])
    return sp.csr_matrix((matrix.data[keep], matrix.indices[keep], indptr), shape=matrix.shape)


class Cooccurrence:
    """Co-occurrence counts over item rows, exact or capped per row.

    Parameters
    ----------
    merge_every
        Increments kept as pending coordinates before they fold into `delta`.
    symmetric
        Count C[row, h] along with C[h, row] (False: a directed transition matrix h -> row).
    max_per_row
        Keep at most this many entries per row when folding into `base` (module docstring);
        None keeps every count.

    Examples
    --------
    >>> c = Cooccurrence(merge_every=2)
    >>> c.add([0, 1], 2)          # item 2 seen after items 0 and 1
    >>> c.add([2], 3, weight=0.5)
    >>> c.scores([2], n=4).tolist()
    [1.0, 1.0, 0.0, 0.5]
    >>> c.scores([0, 3], weights=[1.0, 2.0], n=4).tolist()
    [0.0, 0.0, 2.0, 0.0]
    >>> c.get(1, 2), c.get(1, 0)
    (1.0, 0.0)
    >>> t = Cooccurrence(symmetric=False)
    >>> t.add([0, 1], 2, weight=[1.0, 0.5])   # 0 -> 2 and 1 -> 2, weighted
    >>> t.scores([1], n=3).tolist(), t.scores([2], n=3).tolist()
    ([0.0, 0.0, 0.5], [0.0, 0.0, 0.0])
    >>> t.add_pairs(np.array([1, 1]), np.array([0, 2]), np.array([1.0, 1.0]))   # bulk
    >>> t.scores([1], n=3).tolist()
    [1.0, 0.0, 1.5]
    >>> [a.tolist() for a in t.sparse_scores([1])]
    [[0, 2], [1.0, 1.5]]
    """

    def __init__(self, merge_every: int = 4096, symmetric: bool = True, max_per_row: int | None = None) -> None:
        self.merge_every = merge_every
        self.symmetric = symmetric
        self.max_per_row = max_per_row
        self._base = _empty()
        self._delta = _empty()
        self._p_rows = np.zeros(merge_every, dtype=np.int64)
        self._p_cols = np.zeros(merge_every, dtype=np.int64)
        self._p_vals = np.zeros(merge_every)
        self._n_pending = 0
        self._size = 0
        self._scratch = np.zeros(1024)
        self._row_weight = np.zeros(1024)
        self._touched = np.zeros(1024, dtype=np.int64)

    @property
    def cells(self) -> int:
        """Stored entries in all three levels (what the matrix costs in memory, ~12 bytes each)."""
        return int(self._base.nnz + self._delta.nnz + self._n_pending)

    @property
    def size(self) -> int:
        """Number of rows the matrix covers (highest row seen + 1)."""
        return self._size

    def add(self, others: Sequence[int], row: int, weight: float | Sequence[float] = 1.0) -> None:
        """Add weight to C[h, row] (and C[row, h] if symmetric) for every h in `others`.

        `weight` is one number for all pairs or one per element of `others`; h == row counts once.
        """
        others = np.asarray(others, dtype=np.int64)
        weights = np.broadcast_to(np.asarray(weight, dtype=np.float64), others.shape)
        self.add_pairs(others, np.full(len(others), row, dtype=np.int64), weights)

    def add_pairs(self, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> None:
        """C[rows[n], cols[n]] += weights[n] (mirrored off the diagonal if symmetric)."""
        if not len(rows):
            return
        if self.symmetric:
            off = rows != cols
            rows, cols, weights = (np.concatenate([rows, cols[off]]), np.concatenate([cols, rows[off]]),
                                   np.concatenate([weights, weights[off]]))
        self._size = max(self._size, int(rows.max()) + 1, int(cols.max()) + 1)
        start, n = self._n_pending, len(rows)
        if start + n > self.merge_every:
            self._fold_pending()
            start = 0
        if n > self.merge_every:  # a bulk batch goes straight to delta
            self._fold(rows, cols, weights)
            return
        self._p_rows[start:start + n], self._p_cols[start:start + n], self._p_vals[start:start + n] = rows, cols, weights
        self._n_pending = start + n

    def _fold(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        n = self._size
        self._delta = _resized(self._delta, n) + sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
        if self._delta.nnz > max(65_536, self._base.nnz // 8):
            self._base = (_resized(self._base, n) + self._delta).tocsr()
            if self.max_per_row is not None and self._base.nnz > 2 * self._base.shape[0] * self.max_per_row:
                self._base = top_per_row(self._base, self.max_per_row)   # lazily: its sort is not free
            self._delta = _empty(n)

    def _fold_pending(self) -> None:
        k = self._n_pending
        if k:
            self._fold(self._p_rows[:k].copy(), self._p_cols[:k].copy(), self._p_vals[:k].copy())
            self._n_pending = 0

    def _ensure_scratch(self) -> None:
        if len(self._scratch) < self._size:
            n = max(self._size, 2 * len(self._scratch))
            self._scratch, self._row_weight = np.zeros(n), np.zeros(n)
            self._touched = np.zeros(n, dtype=np.int64)

    def sparse_scores(self, rows: Sequence[int], weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """sum over h in `rows` of weights[h] * C[h, :], as (sorted columns, values) of its
        non-zero entries: the cost follows the rows' entries, not the catalogue's size."""
        rows = np.asarray(rows, dtype=np.int64)
        w = np.ones(len(rows)) if weights is None else np.asarray(weights, dtype=np.float64)
        if len(rows) and rows.max() >= self._size:
            inside = rows < self._size
            rows, w = rows[inside], w[inside]
        self._ensure_scratch()
        base, delta = self._base, self._delta
        return sparse_row_sum(base.indptr, base.indices, base.data, delta.indptr, delta.indices, delta.data,
                              self._p_rows, self._p_cols, self._p_vals, self._n_pending, rows, w,
                              self._scratch, self._row_weight, self._touched)

    def scores(self, rows: Sequence[int], weights: Sequence[float] | None = None,
               n: int | None = None) -> np.ndarray:
        """Dense vector of length `n`: sum over h in `rows` of weights[h] * C[h, :]."""
        n = self._size if n is None else n
        cols, vals = self.sparse_scores(rows, weights)
        out = np.zeros(n)
        keep = cols < n
        out[cols[keep]] = vals[keep]
        return out

    def get(self, h: int, j: int) -> float:
        """One count C[h, j]."""
        k = self._n_pending
        total = float(self._p_vals[:k][(self._p_rows[:k] == h) & (self._p_cols[:k] == j)].sum())
        for matrix in (self._base, self._delta):
            if h < matrix.shape[0] and j < matrix.shape[1]:
                total += float(matrix[h, j])
        return total
