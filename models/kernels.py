"""Compiled inner loops of the fast path (numba).

Scoring one request touches a few hundred sparse entries; as numpy calls that is dozens of
~1-2 µs calls, as one compiled loop it is a few µs. Each kernel is a plain function of arrays,
checked against a numpy reference in the tests; `cache=True` keeps the compiled code next to
this file so only the first process on a machine pays the compile.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _scatter_csr(indptr, indices, data, rows, weights, scratch, touched, n_touched):
    for q in range(rows.size):
        h = rows[q]
        if h + 1 >= indptr.size:
            continue
        w = weights[q]
        for e in range(indptr[h], indptr[h + 1]):
            c = indices[e]
            if scratch[c] == 0.0:
                touched[n_touched] = c
                n_touched += 1
            scratch[c] += w * data[e]
    return n_touched


@njit(cache=True, nogil=True)
def _sort_rows(rows):
    """A sorted copy of non-negative int rows: an LSD radix sort (11-bit digits) past a few
    hundred entries, where it beats np.sort's comparisons (a request's co-occurrence row sum
    touches ~1-2k columns); np.sort below."""
    n = rows.size
    if n < 256:
        return np.sort(rows)
    src = rows.copy()
    dst = np.empty_like(src)
    count = np.empty(2048, dtype=np.int64)
    top = src.max()
    shift = 0
    while (top >> shift) > 0:
        count[:] = 0
        for i in range(n):
            count[(src[i] >> shift) & 2047] += 1
        total = 0
        for b in range(2048):
            c = count[b]
            count[b] = total
            total += c
        for i in range(n):
            digit = (src[i] >> shift) & 2047
            dst[count[digit]] = src[i]
            count[digit] += 1
        src, dst = dst, src
        shift += 11
    return src


@njit(cache=True, nogil=True)
def sparse_row_sum(base_indptr, base_indices, base_data, delta_indptr, delta_indices, delta_data,
                   p_rows, p_cols, p_vals, n_pending, rows, weights, scratch, row_weight, touched):
    """sum_q weights[q] * M[rows[q], :] over the three levels of a `Cooccurrence`, as (sorted
    columns, values) of the non-zero result. `scratch` and `row_weight` are zero arrays at least
    as long as the matrix is wide and are zero again on return; `touched` is as long."""
    n_touched = _scatter_csr(base_indptr, base_indices, base_data, rows, weights, scratch, touched, 0)
    n_touched = _scatter_csr(delta_indptr, delta_indices, delta_data, rows, weights, scratch, touched, n_touched)
    if n_pending > 0:
        for q in range(rows.size):
            row_weight[rows[q]] += weights[q]
        for i in range(n_pending):
            w = row_weight[p_rows[i]]
            if w != 0.0:
                c = p_cols[i]
                if scratch[c] == 0.0:
                    touched[n_touched] = c
                    n_touched += 1
                scratch[c] += w * p_vals[i]
        for q in range(rows.size):
            row_weight[rows[q]] = 0.0
    cols = _sort_rows(touched[:n_touched])
    vals = np.empty(n_touched)
    for i in range(n_touched):
        vals[i] = scratch[cols[i]]
        scratch[cols[i]] = 0.0
    return cols, vals


@njit(cache=True, nogil=True)
def splitmix_rows(seeds, count, n):
    """(len(seeds), count) pseudo-random rows in [0, n): splitmix64 of seed + k * golden ratio.

    Integer arithmetic wraps modulo 2**64 exactly as numpy's uint64 does.
    """
    out = np.empty((seeds.size, count), dtype=np.int64)
    golden = np.uint64(0x9E3779B97F4A7C15)
    m1, m2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
    for i in range(seeds.size):
        for k in range(count):
            x = seeds[i] + np.uint64(k + 1) * golden
            x = (x ^ (x >> np.uint64(30))) * m1
            x = (x ^ (x >> np.uint64(27))) * m2
            x = x ^ (x >> np.uint64(31))
            out[i, k] = np.int64(x % np.uint64(n))
    return out


@njit(cache=True, nogil=True)
def bpr_steps(f, base, pos, pos_bias, negs, neg_bias, lr, l2, steps):
    """In place: `steps` BPR steps on each row of the fast vectors `f` (B, d).

    For user b: margin_n = (base_b + f_b) . (pos_b - negs_bn) + pos_bias_b - neg_bias_bn and
    f_b += lr * (mean_n sigmoid(-margin_n) * (pos_b - negs_bn) - l2 * f_b), all steps from the
    same negatives.
    """
    B, d = f.shape
    n_neg = negs.shape[1]
    grad = np.empty(d, dtype=np.float32)
    for b in range(B):
        for _ in range(steps):
            grad[:] = 0.0
            for n in range(n_neg):
                margin = pos_bias[b] - neg_bias[b, n]
                for j in range(d):
                    margin += (base[b, j] + f[b, j]) * (pos[b, j] - negs[b, n, j])
                coef = 0.5 * (1.0 + np.tanh(-0.5 * margin))
                for j in range(d):
                    grad[j] += coef * (pos[b, j] - negs[b, n, j])
            for j in range(d):
                f[b, j] += lr * (grad[j] / n_neg - l2 * f[b, j])


@njit(cache=True, nogil=True)
def pool_histories(item_in, flat, ends, recency, out):
    """out[b] = recency-weighted mean of item_in[row + 1] over user b's last len(recency) rows.

    User b's rows are flat[ends[b-1]:ends[b]], oldest first; rows < 0 (items the model does
    not know) are skipped and the weights of the rest renormalised; the most recent row gets
    recency[0]. Users without known rows keep a zero vector.
    """
    start = 0
    for b in range(ends.size):
        end = ends[b]
        total = 0.0
        age = 0
        for e in range(end - 1, start - 1, -1):
            if age >= recency.size:
                break
            row = flat[e]
            if row >= 0:
                w = recency[age]
                total += w
                for j in range(item_in.shape[1]):
                    out[b, j] += w * item_in[row + 1, j]
            age += 1
        if total > 0.0:
            for j in range(item_in.shape[1]):
                out[b, j] /= total
        start = end


@njit(cache=True, nogil=True)
def sparse_at(rows, entry_rows, entry_values, out):
    """out[i] = entry_values[e] where entry_rows[e] == rows[i] (both sorted ascending, entry
    rows distinct); other positions of `out` are left as they are."""
    i = 0
    n = rows.size
    for e in range(entry_rows.size):
        r = entry_rows[e]
        while i < n and rows[i] < r:
            i += 1
        if i == n:
            break
        if rows[i] == r:
            out[i] = entry_values[e]


@njit(cache=True, nogil=True)
def scale_columns(matrix):
    """In place: each column x of the (n, c) float64 `matrix` becomes (x - min) / (max - min);
    a column whose min is not finite (inf, NaN) or whose range is at most 1e-12 becomes zeros."""
    n, c = matrix.shape
    for j in range(c):
        lo = np.inf
        hi = -np.inf
        nan = False
        for i in range(n):
            x = matrix[i, j]
            if x != x:
                nan = True
            if x < lo:
                lo = x
            if x > hi:
                hi = x
        span = hi - lo
        if nan or not np.isfinite(lo) or not span > 1e-12:
            for i in range(n):
                matrix[i, j] = 0.0
        else:
            for i in range(n):
                matrix[i, j] = (matrix[i, j] - lo) / span


@njit(cache=True, nogil=True)
def sum_by_row(rows, weights):
    """(sorted distinct rows, the sum of `weights` per row, added in input order): what
    ``np.unique(rows, return_inverse=True)`` then ``np.bincount(inverse, weights)`` give."""
    order = np.argsort(rows, kind="mergesort")
    out_rows = np.empty(rows.size, dtype=np.int64)
    out_sums = np.empty(rows.size, dtype=np.float64)
    m = -1
    for o in order:
        r = rows[o]
        if m < 0 or out_rows[m] != r:
            m += 1
            out_rows[m] = r
            out_sums[m] = 0.0
        out_sums[m] += weights[o]
    return out_rows[: m + 1], out_sums[: m + 1]
