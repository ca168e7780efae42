"""Turning a score per item row into a ranked top-k list."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def top_k(keys: np.ndarray, k: int, exclude: Iterable[int] = ()) -> np.ndarray:
    """Rows of the `k` largest `keys`, best first, skipping rows in `exclude`.

    Ties are broken by the lower row (earlier first appearance). `keys` is not modified.

    >>> top_k(np.array([0.5, 2.0, 2.0, 1.0]), 3).tolist()
    [1, 2, 3]
    >>> top_k(np.array([0.5, 2.0, 2.0, 1.0]), 3, exclude=[1]).tolist()
    [2, 3, 0]
    """
    return lex_top_k(keys, np.zeros(len(keys)), k, exclude)


def lex_top_k(primary: np.ndarray, secondary: np.ndarray, k: int, exclude: Iterable[int] = ()) -> np.ndarray:
    """Rows of the top `k` by `primary` desc, then `secondary` desc, then row asc.

    >>> lex_top_k(np.array([1.0, 0.0, 1.0, 0.0]), np.array([1, 5, 3, 7]), 3).tolist()
    [2, 0, 3]
    """
    primary = np.asarray(primary, dtype=np.float64)
    excluded = np.fromiter((r for r in exclude if 0 <= r < len(primary)), dtype=np.int64)
    valid = np.ones(len(primary), dtype=bool)
    valid[excluded] = False
    k = min(k, int(valid.sum()))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    masked = np.where(valid, primary, -np.inf)
    if k < len(primary):
        kth = np.partition(masked, len(masked) - k)[len(masked) - k]
        cand = np.flatnonzero((masked >= kth) & valid)
    else:
        cand = np.flatnonzero(valid)
    order = np.lexsort((cand, -np.asarray(secondary)[cand], -primary[cand]))
    return cand[order[:k]]
