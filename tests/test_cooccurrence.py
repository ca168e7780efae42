"""The co-occurrence matrix behind the fast path's item signals: capped per row, memory
follows the catalogue however long the stream runs, and the strong pairs survive the cap."""

from __future__ import annotations

import numpy as np

from models.cooccurrence import Cooccurrence


def test_capped_matrix_stays_bounded_and_keeps_each_rows_strong_pairs():
    rng = np.random.default_rng(0)
    items, cap = 3000, 8
    capped, exact = Cooccurrence(merge_every=256, max_per_row=cap), Cooccurrence(merge_every=256)
    partner = (np.arange(items) + 1) % items           # each item's strong pair
    cells = []
    for step in range(1500):
        rows = rng.integers(items, size=200)
        cols = np.where(rng.random(200) < 0.5, partner[rows], rng.integers(items, size=200))
        for matrix in (capped, exact):
            matrix.add_pairs(rows, cols, np.ones(200))
        cells.append(capped.cells)
    # bounded: base <= items * cap, plus what delta and pending may hold between folds
    assert 0 < capped._base.nnz <= 2 * items * cap   # folded into base, and capped there
    assert max(cells) <= 2 * items * cap + 2 * 65_536
    assert exact.cells > 4 * items * cap            # the exact one kept every pair it saw
    # each row's strong pairs (its partner, and the item whose partner it is) stay on top,
    # with their counts intact: a strong pair is never the one dropped
    for r in range(0, items, 7):
        got, want = capped.scores([r], n=items), exact.scores([r], n=items)
        strong = [partner[r], (r - 1) % items]
        assert int(np.argmax(got)) in strong
        assert got[strong].tolist() == want[strong].tolist()
