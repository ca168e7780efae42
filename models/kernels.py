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
    cols = np.sort(touched[:n_touched])
    vals = np.empty(n_touched)
    for i in range(n_touched):
        vals[i] = scratch[cols[i]]
        scratch[cols[i]] = 0.0
    return cols, vals
