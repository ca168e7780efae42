"""A growing item-item co-occurrence matrix that is cheap to update and to query.

Every interaction adds a handful of pairs; every recommendation sums a few rows. A CSR matrix
answers row sums fast but is expensive to change, so the counts live in three levels, like a
log-structured merge tree:

- `pending`: a small dict of the latest increments (cheap to add one pair to);
- `delta`: a CSR matrix that pending folds into once it holds `merge_every` increments;
- `base`: a CSR matrix that delta folds into once delta is a fraction of base's size.

A query reads all three, so every increment is visible immediately. Bulk increments (the
worker's batches) go straight into `delta` as a sparse matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def _resized(matrix: sp.csr_matrix, n: int) -> sp.csr_matrix:
    if matrix.shape[0] >= n:
        return matrix
    out = matrix.copy()
    out.resize((n, n))
    return out


def _gather(matrix: sp.csr_matrix, rows: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(columns, weights[h] * values) of the entries of `rows`, read straight from the CSR arrays
    in a few vectorised steps (scipy's fancy row indexing builds a new matrix per call)."""
    inside = rows < matrix.shape[0]
    rows, weights = rows[inside], weights[inside]
    starts, ends = matrix.indptr[rows], matrix.indptr[rows + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
    return matrix.indices[offsets], matrix.data[offsets] * np.repeat(weights, lengths)


class Cooccurrence:
    """Co-occurrence counts over item rows that can grow without limit.

    Parameters
    ----------
    merge_every
        Increments kept in the pending dict before they fold into `delta`.
    symmetric
        Count C[row, h] along with C[h, row] (False: a directed transition matrix h -> row).

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

    def __init__(self, merge_every: int = 4096, symmetric: bool = True) -> None:
        self.merge_every = merge_every
        self.symmetric = symmetric
        self._base = sp.csr_matrix((0, 0), dtype=np.float64)
        self._delta = sp.csr_matrix((0, 0), dtype=np.float64)
        self._pending: dict[int, dict[int, float]] = {}
        self._n_pending = 0
        self._size = 0

    @property
    def size(self) -> int:
        """Number of rows the matrix covers (highest row seen + 1)."""
        return self._size

    def add(self, others: Sequence[int], row: int, weight: float | Sequence[float] = 1.0) -> None:
        """Add weight to C[h, row] (and C[row, h] if symmetric) for every h in `others`.

        `weight` is one number for all pairs or one per element of `others`; h == row counts once.
        """
        pending = self._pending
        weights = [weight] * len(others) if isinstance(weight, (int, float)) else weight
        mine = pending.setdefault(row, {}) if self.symmetric else None
        top = row
        for h, w in zip(others, weights):
            theirs = pending.setdefault(h, {})
            theirs[row] = theirs.get(row, 0.0) + w
            self._n_pending += 1
            if mine is not None and h != row:
                mine[h] = mine.get(h, 0.0) + w
                self._n_pending += 1
            top = h if h > top else top
        self._size = max(self._size, top + 1)
        if self._n_pending >= self.merge_every:
            self._fold_pending()

    def add_pairs(self, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> None:
        """Bulk form of `add`: C[rows[n], cols[n]] += weights[n] (mirrored if symmetric, off-diagonal)."""
        if not len(rows):
            return
        if len(rows) < self.merge_every // 4:   # a few pairs: the pending dict is cheaper
            pending = self._pending
            for h, j, w in zip(rows.tolist(), cols.tolist(), weights.tolist()):
                theirs = pending.setdefault(h, {})
                theirs[j] = theirs.get(j, 0.0) + w
                if self.symmetric and h != j:
                    mine = pending.setdefault(j, {})
                    mine[h] = mine.get(h, 0.0) + w
            self._n_pending += len(rows) * (2 if self.symmetric else 1)
            self._size = max(self._size, int(rows.max()) + 1, int(cols.max()) + 1)
            if self._n_pending >= self.merge_every:
                self._fold_pending()
            return
        if self.symmetric:
            off = rows != cols
            rows, cols, weights = (np.concatenate([rows, cols[off]]), np.concatenate([cols, rows[off]]),
                                   np.concatenate([weights, weights[off]]))
        self._size = max(self._size, int(rows.max()) + 1, int(cols.max()) + 1)
        n = self._size
        bulk = sp.csr_matrix((weights, (rows, cols)), shape=(n, n), dtype=np.float64)
        self._delta = _resized(self._delta, n) + bulk
        self._fold_delta()

    def _fold_pending(self) -> None:
        if not self._pending:
            return
        rows, cols, vals = [], [], []
        for r, entries in self._pending.items():
            rows.extend([r] * len(entries))
            cols.extend(entries.keys())
            vals.extend(entries.values())
        self._pending, self._n_pending = {}, 0
        n = self._size = max(self._size, max(cols) + 1)
        self._delta = _resized(self._delta, n) + sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
        self._fold_delta()

    def _fold_delta(self, force: bool = False) -> None:
        if self._delta.nnz and (force or self._delta.nnz > max(65_536, self._base.nnz // 8)):
            n = max(self._size, self._delta.shape[0])
            self._base = (_resized(self._base, n) + _resized(self._delta, n)).tocsr()
            self._delta = sp.csr_matrix((n, n), dtype=np.float64)

    def _entries(self, rows: Sequence[int], weights: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
        """(columns, weighted values) of every stored entry of `rows`, duplicates not summed."""
        rows = [int(h) for h in rows]
        w = np.ones(len(rows)) if weights is None else np.asarray(weights, dtype=np.float64)
        cols, vals = [], []
        idx = np.asarray(rows, dtype=np.int64)
        for matrix in (self._base, self._delta):
            if matrix.nnz:
                c, v = _gather(matrix, idx, w)
                cols.append(c)
                vals.append(v)
        if self._pending:
            more_cols, more_vals = [], []
            for h, wh in zip(rows, w.tolist()):
                entries = self._pending.get(h)
                if entries:
                    more_cols.extend(entries.keys())
                    more_vals.extend(c * wh for c in entries.values())
            cols.append(np.asarray(more_cols, dtype=np.int64))
            vals.append(np.asarray(more_vals, dtype=np.float64))
        if not cols:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return np.concatenate(cols).astype(np.int64, copy=False), np.concatenate(vals)

    def sparse_scores(self, rows: Sequence[int], weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """sum over h in `rows` of weights[h] * C[h, :], as (sorted columns, values) of its
        non-zero entries: the cost follows the rows' entries, not the catalogue's size."""
        cols, vals = self._entries(rows, weights)
        if not len(cols):
            return cols, vals
        unique, inverse = np.unique(cols, return_inverse=True)
        return unique, np.bincount(inverse, weights=vals, minlength=len(unique))

    def scores(self, rows: Sequence[int], weights: Sequence[float] | None = None,
               n: int | None = None) -> np.ndarray:
        """Dense vector of length `n`: sum over h in `rows` of weights[h] * C[h, :]."""
        n = self._size if n is None else n
        cols, vals = self._entries(rows, weights)
        if len(cols) and cols.max() >= n:
            keep = cols < n
            cols, vals = cols[keep], vals[keep]
        if not len(cols):
            return np.zeros(n)
        return np.bincount(cols, weights=vals, minlength=n)[:n]

    def get(self, h: int, j: int) -> float:
        """One count C[h, j]."""
        total = self._pending.get(h, {}).get(j, 0.0)
        for matrix in (self._base, self._delta):
            if h < matrix.shape[0] and j < matrix.shape[1]:
                total += float(matrix[h, j])
        return total
