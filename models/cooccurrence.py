"""A growing, symmetric item-item co-occurrence matrix that is cheap to update and to query.

Every interaction adds a handful of pairs; every recommendation sums a few rows. A sparse CSR
matrix answers row sums fast but is expensive to change, so recent increments wait in a small
dict-of-dicts and are folded into the CSR matrix in bulk once there are enough of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


class Cooccurrence:
    """Symmetric co-occurrence counts over item rows that can grow without limit.

    Parameters
    ----------
    merge_every
        Pending increments kept outside the CSR matrix before they are merged into it.

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
    """

    def __init__(self, merge_every: int = 50_000) -> None:
        self.merge_every = merge_every
        self._base = sp.csr_matrix((0, 0), dtype=np.float64)
        self._pending: dict[int, dict[int, float]] = {}
        self._n_pending = 0

    @property
    def size(self) -> int:
        """Number of rows the matrix covers (highest row seen + 1)."""
        top = max(self._pending, default=-1) + 1
        return max(self._base.shape[0], top)

    def add(self, others: Sequence[int], row: int, weight: float = 1.0) -> None:
        """Add `weight` to C[h, row] and C[row, h] for every h in `others` (h == row included once)."""
        pending = self._pending
        mine = pending.setdefault(row, {})
        for h in others:
            mine[h] = mine.get(h, 0.0) + weight
            if h != row:
                theirs = pending.setdefault(h, {})
                theirs[row] = theirs.get(row, 0.0) + weight
                self._n_pending += 2
            else:
                self._n_pending += 1
        if self._n_pending >= self.merge_every:
            self.merge()

    def merge(self) -> None:
        """Fold pending increments into the CSR matrix."""
        if not self._pending:
            return
        rows, cols, vals = [], [], []
        for r, entries in self._pending.items():
            rows.extend([r] * len(entries))
            cols.extend(entries.keys())
            vals.extend(entries.values())
        n = max(self.size, max(cols) + 1)
        base = self._base
        base.resize((n, n))
        delta = sp.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.float64)
        self._base = (base + delta).tocsr()
        self._pending = {}
        self._n_pending = 0

    def scores(self, rows: Sequence[int], weights: Sequence[float] | None = None,
               n: int | None = None) -> np.ndarray:
        """Dense vector of length `n`: sum over h in `rows` of weights[h] * C[h, :]."""
        n = self.size if n is None else n
        w = np.ones(len(rows)) if weights is None else np.asarray(weights, dtype=np.float64)
        out = np.zeros(n, dtype=np.float64)
        nb = self._base.shape[0]
        idx = np.asarray(rows, dtype=np.int64)
        in_base = idx < nb
        if in_base.any() and self._base.nnz:
            vec = self._base[idx[in_base]].T @ w[in_base]
            m = min(n, nb)
            out[:m] += vec[:m]
        for h, wh in zip(rows, w):
            entries = self._pending.get(h)
            if entries:
                for j, c in entries.items():
                    if j < n:
                        out[j] += wh * c
        return out

    def get(self, h: int, j: int) -> float:
        """One count C[h, j]."""
        base = float(self._base[h, j]) if h < self._base.shape[0] and j < self._base.shape[0] else 0.0
        return base + self._pending.get(h, {}).get(j, 0.0)
