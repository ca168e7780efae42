"""What the peers `recency-knn` and `sr` know, learned per event inside the fast path.

`evaluation.peers` defines the two streaming peers by their statistics:

- recency-knn: C[h, j] grows by 1 whenever j follows h within a user's last `knn_window`
  (20) items (symmetric, undecayed counts, as `itemknn`); a user whose last items are h
  (age 0 = the latest) scores j = sum_h knn_decay**age_h * C[h, j] / sqrt(n_j + 1);
- sr (sequential rules): when a user learns b, R[a, b] grows by 1/d for each of their
  previous up-to-`sr_window` (10) items a at distance d (d = 1: the item just before b);
  a user scores j = R[last item, j].

`PeerStats` keeps both matrices and answers both scores exactly as the peers do (n_j: the
all-time counts `models.stream_stats.StreamStats` keeps), so the gate can put its weight on
either peer's ranking — and the peers break ties (and rank users without history) by n_j,
which the fast path has as its ``popularity`` signal. The matrices are the fast path's
three-level `Cooccurrence`; with `max_per_row` set (StreamStats passes its
``max_neighbours``) a row keeps its largest entries once the matrix outgrows
``2 * items * max_per_row`` cells, so memory stays bounded on a long stream; None keeps
every count (exactly the peers).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from models.cooccurrence import Cooccurrence
from models.tails import tails


@functools.lru_cache(maxsize=256)
def _decay_weights(n: int, decay: float) -> np.ndarray:
    """decay**age for a user's last n items, oldest first (the latest weighs 1), read-only."""
    weights = decay ** np.arange(n - 1, -1, -1, dtype=np.float64)
    weights.flags.writeable = False
    return weights


_ONE = np.ones(1)
_ONE.flags.writeable = False


class PeerStats:
    """recency-knn's co-occurrence counts and sr's distance-weighted rules, learned per event.

    Examples
    --------
    The log of `evaluation.peers.RecencyKNN`'s example: c's latest item w weighs 1, y 0.85.

    >>> ps, rows, recent = PeerStats(), {}, {}
    >>> for u, i in [("a", "x"), ("a", "y"), ("b", "w"), ("b", "z"), ("c", "y"), ("c", "w")]:
    ...     row = rows.setdefault(i, len(rows))
    ...     ps.link([np.array(recent.get(u, []), dtype=np.int64)], np.array([row]))
    ...     recent.setdefault(u, []).append(row)
    >>> n = np.bincount([rows[i] for i in "xywzyw"]).astype(float)   # x y w z: 1 2 2 1
    >>> cols, vals = ps.knn_scores(recent["c"], 1.0 / np.sqrt(n + 1.0))
    >>> {"xywz"[c]: round(float(v), 4) for c, v in zip(cols, vals)}   # z beats x, as the peer's list
    {'x': 0.601, 'y': 0.5774, 'w': 0.4907, 'z': 0.7071}
    >>> cols, vals = ps.sr_scores(recent["c"])                        # R[w, .]: w was followed by z
    >>> [("xywz"[c], float(v)) for c, v in zip(cols, vals)]
    [('z', 1.0)]
    """

    def __init__(self, knn_window: int = 20, knn_decay: float = 0.85, sr_window: int = 10,
                 max_per_row: int | None = None) -> None:
        self.knn_window = knn_window
        self.knn_decay = knn_decay
        self.sr_window = sr_window
        self.max_per_row = max_per_row
        self.knn = Cooccurrence(symmetric=True, max_per_row=max_per_row)
        self.sr = Cooccurrence(symmetric=False, max_per_row=max_per_row)

    def link(self, histories: Sequence[np.ndarray], rows: Sequence[int]) -> None:
        """Learn that each item row followed its history (the user's previous rows, oldest first)."""
        rows = np.asarray(rows, dtype=np.int64)
        src, owner, distance = tails(histories, self.knn_window)
        if len(src):
            self.knn.add_pairs(src, rows[owner], np.ones(len(src)))
        src, owner, distance = tails(histories, self.sr_window)
        if len(src):
            self.sr.add_pairs(src, rows[owner], 1.0 / (distance + 1.0))

    def knn_scores(self, recent: Sequence[int], inv_sqrt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """recency-knn's score of every item it scores above 0, as (sorted rows, scores);
        `inv_sqrt[j]` is 1 / sqrt(n_j + 1)."""
        window = np.asarray(recent, dtype=np.int64)[-self.knn_window:]
        cols, vals = self.knn.sparse_scores(window, _decay_weights(len(window), self.knn_decay))
        vals *= inv_sqrt[cols]
        return cols, vals

    def sr_scores(self, recent: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """sr's score R[last item, j] of every item j with a rule from it, as (sorted rows, scores)."""
        last = np.asarray(recent, dtype=np.int64)[-1:]
        return self.sr.sparse_scores(last, _ONE[: len(last)])
