"""The compiled kernels agree with plain numpy / Python computations of the same formulas."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.kernels import (_sort_rows, bpr_steps, pool_histories, scale_columns, sparse_at, sparse_row_sum, splitmix_rows,
                            sum_by_row)

MASK = (1 << 64) - 1


def test_sparse_row_sum_matches_dense_sums_over_base_delta_and_pending():
    rng = np.random.default_rng(0)
    n = 40
    base = sp.random(n, n, density=0.2, random_state=1, format="csr") * 5
    delta = sp.random(n, n, density=0.1, random_state=2, format="csr") * 5
    p_rows, p_cols = rng.integers(0, n, 30), rng.integers(0, n, 30)
    p_vals = rng.random(30)
    rows, weights = np.array([3, 7, 3, 11]), np.array([1.0, 0.5, 0.25, 2.0])
    want = np.zeros(n)
    pending = sp.csr_matrix((p_vals, (p_rows, p_cols)), shape=(n, n)).toarray()
    for h, w in zip(rows, weights):
        want += w * (base.toarray()[h] + delta.toarray()[h] + pending[h])
    cols, vals = sparse_row_sum(base.indptr, base.indices, base.data, delta.indptr, delta.indices, delta.data,
                                p_rows, p_cols, p_vals, len(p_rows), rows, weights,
                                np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64))
    assert cols.tolist() == np.flatnonzero(want).tolist()
    assert np.allclose(vals, want[cols])


def _splitmix(seed: int, k: int, n: int) -> int:
    x = (seed + (k + 1) * 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return (x ^ (x >> 31)) % n


def test_splitmix_rows_match_a_plain_python_splitmix64():
    seeds = np.array([0, 7, 2**32 + 5, 2**63 + 11], dtype=np.uint64)
    got = splitmix_rows(seeds, 4, 1000)
    assert got.tolist() == [[_splitmix(int(s), k, 1000) for k in range(4)] for s in seeds]


def test_bpr_steps_match_the_numpy_formula():
    rng = np.random.default_rng(3)
    B, n, d, lr, l2, steps = 3, 4, 5, 0.1, 0.01, 2
    f = rng.normal(size=(B, d)).astype(np.float32)
    base, pos = rng.normal(size=(B, d)).astype(np.float32), rng.normal(size=(B, d)).astype(np.float32)
    negs = rng.normal(size=(B, n, d)).astype(np.float32)
    pos_b, neg_b = rng.normal(size=B).astype(np.float32), rng.normal(size=(B, n)).astype(np.float32)
    want = f.astype(np.float64)
    diff = pos[:, None, :] - negs
    for _ in range(steps):
        margin = np.einsum("bnd,bd->bn", diff, base + want) + pos_b[:, None] - neg_b
        coef = 1.0 / (1.0 + np.exp(margin))
        want = want + lr * (np.einsum("bn,bnd->bd", coef, diff) / n - l2 * want)
    got = f.copy()
    bpr_steps(got, base, pos, pos_b, negs, neg_b, np.float32(lr), np.float32(l2), steps)
    assert np.allclose(got, want, atol=1e-5)


def test_pool_histories_is_the_recency_weighted_mean_of_known_items():
    item_in = np.arange(1, 13, dtype=np.float32).reshape(6, 2)   # row 0 is padding; item r at r + 1
    recency = np.array([0.5, 0.3, 0.2], dtype=np.float32)       # most recent first
    flat = np.array([0, 4, -1, 2, 3, 1], dtype=np.int64)         # user 0: [0, 4, -1, 2]; user 1: []; user 2: [3, 1]
    ends = np.array([4, 4, 6])
    out = np.zeros((3, 2), dtype=np.float32)
    pool_histories(item_in, flat, ends, recency, out)
    # user 0, newest first: item 2 (w .5), unknown (skipped), item 4 (w .2); item 0 is past the window
    want0 = (0.5 * item_in[3] + 0.2 * item_in[5]) / 0.7
    want2 = (0.5 * item_in[2] + 0.3 * item_in[4]) / 0.8
    assert np.allclose(out, [want0, [0.0, 0.0], want2])


def test_sparse_at_writes_each_entry_at_its_row_and_leaves_the_rest():
    rng = np.random.default_rng(5)
    for _ in range(200):
        rows = np.unique(rng.integers(0, 60, rng.integers(0, 30)))
        entry_rows = np.unique(rng.integers(0, 60, rng.integers(0, 30)))
        values = rng.random(len(entry_rows))
        out = np.full(len(rows), -1.0)
        sparse_at(rows, entry_rows, values, out)
        lookup = dict(zip(entry_rows.tolist(), values.tolist()))
        assert out.tolist() == [lookup.get(r, -1.0) for r in rows.tolist()]


def test_scale_columns_is_min_max_scaling_per_column_with_flat_and_infinite_columns_zeroed():
    m = np.array([[2.0, 5.0, 1.0, np.nan, -np.inf],
                  [4.0, 5.0, np.inf, 1.0, 0.0],
                  [3.0, 5.0, 3.0, 2.0, 1.0]])
    scale_columns(m)
    want = [[(2 - 2) / 2, 0.0, 0.0, 0.0, 0.0],
            [(4 - 2) / 2, 0.0, np.nan, 0.0, 0.0],   # finite min, infinite max: inf / inf
            [(3 - 2) / 2, 0.0, 0.0, 0.0, 0.0]]
    assert np.array_equal(m, np.array(want), equal_nan=True)


def test_sum_by_row_equals_unique_then_bincount_bit_for_bit():
    rng = np.random.default_rng(7)
    for _ in range(300):
        rows = rng.integers(0, 20, rng.integers(0, 40))
        weights = rng.random(len(rows)) * 10.0 ** rng.integers(-8, 8, len(rows))
        got_rows, got_sums = sum_by_row(rows, weights)
        want_rows, inverse = np.unique(rows, return_inverse=True)
        want_sums = np.bincount(inverse, weights=weights, minlength=len(want_rows))
        assert got_rows.tolist() == want_rows.tolist() and got_sums.tolist() == want_sums.tolist()


def test_sort_rows_equals_np_sort_on_both_sides_of_the_radix_threshold():
    rng = np.random.default_rng(8)
    for n in (0, 1, 255, 256, 2000):
        for high in (5, 2048, 3_000_000):
            rows = rng.integers(0, high, n).astype(np.int64)
            assert _sort_rows(rows).tolist() == np.sort(rows).tolist()
