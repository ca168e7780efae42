"""The scorer's array helpers give exactly what the plain numpy calls they replace give."""

from __future__ import annotations

import numpy as np

from models.gate import normalise, normalise_columns
from models.scorer import Scored, Sparse, sorted_unique


def _random_ints(rng, n_max=400, high=50):
    return rng.integers(0, high, rng.integers(0, n_max)).astype(np.int64)


def test_sorted_unique_equals_np_unique():
    rng = np.random.default_rng(0)
    for _ in range(300):
        values = _random_ints(rng)
        assert np.array_equal(sorted_unique(values), np.unique(values))


def test_top_equals_a_full_lexsort_including_ties():
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(0, 60))
        rows = rng.permutation(1000)[:n]
        score = rng.integers(0, 5, n).astype(np.float64)   # many ties
        scored = Scored("u", rows, np.zeros(n), np.zeros((n, 5)), np.zeros(8), 0.5, np.zeros(n), score)
        for k in (0, 1, 3, 10, n, n + 5):
            assert scored.top(k).tolist() == np.lexsort((rows, -score))[:k].tolist()


def test_normalise_columns_equals_normalise_per_column():
    rng = np.random.default_rng(2)
    for t in range(300):
        n = int(rng.integers(0, 40))
        m = rng.normal(size=(n, 5)) * rng.choice([1e-14, 1.0, 1e6], 5)
        if n and t % 3 == 0:
            m[:, 1] = 3.0
        if n and t % 5 == 0:
            m[rng.integers(0, n), 2] = np.inf
        with np.errstate(invalid="ignore"):   # inf / inf in the reference, as in the kernel
            want = np.column_stack([normalise(m[:, j]) for j in range(5)]) if n else np.zeros((0, 5))
        assert np.array_equal(normalise_columns(m.copy()), want, equal_nan=True)


def test_sparse_at_into_a_column_of_a_matrix():
    m = np.zeros((4, 2))
    Sparse(np.array([1, 5, 9]), np.array([0.5, 0.7, 0.9])).at(np.array([0, 1, 5, 8]), out=m[:, 1])
    assert m[:, 1].tolist() == [0.0, 0.5, 0.7, 0.0] and not m[:, 0].any()
