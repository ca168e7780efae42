"""What the stream itself teaches about items, updated on every event (part of the fast path).

- co-occurrence: items that appear close together in a user's history, each pair weighted
  by how close (decay**distance), over the last `window` items;
- transitions: the same, directed (what tends to come *after* an item), over a short window;
- popularity: all-time counts and a recency-weighted count with a half-life;
- the peers' statistics (`models.signals.PeerStats`): recency-knn's co-occurrence counts and
  sr's distance-weighted rules, so the fast path knows what they know.

None of this waits for a model sync: it is what lets the fast path rank items that appeared
minutes ago and that the slow model has never seen.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from models.cooccurrence import Cooccurrence
from models.signals import PeerStats
from models.tails import tails
from models.vocab import Vocab


def _grow(array: np.ndarray, size: int) -> np.ndarray:
    if size <= len(array):
        return array
    bigger = np.zeros(max(size, 2 * len(array)), dtype=array.dtype)
    bigger[: len(array)] = array
    return bigger


@functools.lru_cache(maxsize=1024)
def _shared_pair_weights(n: int, decay: float) -> np.ndarray:
    """`StreamStats.pair_weights`, computed once per (n, decay) and shared read-only: every
    request asks for the same few."""
    weights = StreamStats.pair_weights(n, decay)
    weights.flags.writeable = False
    return weights


class StreamStats:
    """Item statistics learned online from the stream.

    Examples
    --------
    >>> st = StreamStats(window=3, decay=0.5, transition_window=2, popularity_half_life=10.0)
    >>> for item, t in [("a", 0.0), ("b", 1.0), ("c", 2.0)]:
    ...     _ = st.learn(recent=[st.items.get(x) for x in "abc"[: "abc".index(item)]], item_id=item, timestamp=t)
    >>> rows = [st.items.get(x) for x in "abc"]
    >>> st.cooccurrence.get(rows[0], rows[2]), st.cooccurrence.get(rows[1], rows[2])   # c: 1 and 2 steps after
    (0.5, 1.0)
    >>> st.transitions.get(rows[2], rows[1]), st.transitions.get(rows[1], rows[2])   # directed
    (0.0, 1.0)
    >>> round(float(st.recent_popularity(2.0)[rows[0]]), 3)     # one event, 2 s old, half-life 10 s
    0.871
    """

    def __init__(self, window: int = 10, decay: float = 0.7, transition_window: int = 5,
                 transition_decay: float = 0.5, popularity_half_life: float = 86400.0,
                 max_neighbours: int | None = 128, peers: dict | None = None) -> None:
        self.window = window
        self.decay = decay
        self.transition_window = transition_window
        self.transition_decay = transition_decay
        self.popularity_half_life = popularity_half_life
        self.max_neighbours = max_neighbours
        self.items = Vocab()
        # capped per item, so a long stream's memory follows the catalogue, not the pairs seen
        self.cooccurrence = Cooccurrence(symmetric=True, max_per_row=max_neighbours)
        self.transitions = Cooccurrence(symmetric=False, max_per_row=max_neighbours)
        self.peers = PeerStats(**{"max_per_row": max_neighbours, **(peers or {})})
        self.counts = np.zeros(1024)
        self._pop = np.zeros(1024)          # decayed count as of self._pop_time
        self._inv_sqrt = np.ones(1024)      # 1 / sqrt(count + 1), kept per item as counts change
        self._pop_time = 0.0

    @property
    def n_items(self) -> int:
        return len(self.items)

    @staticmethod
    def pair_weights(n: int, decay: float) -> np.ndarray:
        """Weights for the last n items, oldest first: decay**distance (1 for the latest).

        >>> StreamStats.pair_weights(3, 0.5).tolist()
        [0.25, 0.5, 1.0]
        """
        return decay ** np.arange(n - 1, -1, -1, dtype=np.float64)

    def register(self, item_id: str) -> int:
        """The item's row, adding it (with zero counts) if it is new."""
        row = self.items.add(item_id)
        if row >= len(self.counts):
            self.counts = _grow(self.counts, row + 1)
            self._pop = _grow(self._pop, row + 1)
            fresh = len(self._inv_sqrt)
            self._inv_sqrt = _grow(self._inv_sqrt, row + 1)
            self._inv_sqrt[fresh:] = 1.0
        return row

    def observe(self, item_id: str, timestamp: float) -> int:
        """Count one interaction with the item (registering it if new); returns its row."""
        row = self.register(item_id)
        self.count(np.array([row]), np.array([timestamp]))
        return row

    def count(self, rows: np.ndarray, timestamps: np.ndarray) -> None:
        """Count interactions with registered item rows at the given times (vectorised)."""
        if len(rows) == 1:   # one event (a replay): plain indexing adds the same, without add.at's setup
            self.counts[rows] += 1.0
        else:
            np.add.at(self.counts, rows, 1.0)
        self._inv_sqrt[rows] = 1.0 / np.sqrt(self.counts[rows] + 1.0)   # a repeated row writes one value
        # Decayed counts are stored as of `_pop_time`; an event at t adds 0.5**((_pop_time - t)/H).
        # Re-reference to a newer time at most once per half-life (an exact rescale).
        newest, half_life = float(timestamps.max()), self.popularity_half_life
        if self._pop_time == 0.0 or newest - self._pop_time > half_life:
            self._pop *= math.pow(0.5, max(newest - self._pop_time, 0.0) / half_life)
            self._pop_time = newest
        added = np.power(0.5, (self._pop_time - timestamps) / half_life)
        if len(rows) == 1:
            self._pop[rows] += added
        else:
            np.add.at(self._pop, rows, added)

    def link(self, histories: Sequence[np.ndarray], rows: Sequence[int]) -> None:
        """Learn that each item row followed its history (the user's previous rows, oldest first)."""
        rows = np.asarray(rows, dtype=np.int64)
        single = np.asarray(histories[0], dtype=np.int64) if len(histories) == 1 else None
        for matrix, width, decay in ((self.cooccurrence, self.window, self.decay),
                                     (self.transitions, self.transition_window, self.transition_decay)):
            if single is not None:   # one event (a replay): its weights are the shared decay**distance
                src = single[-width:] if width else single[:0]
                if len(src):
                    matrix.add_pairs(src, np.full(len(src), rows[0]), _shared_pair_weights(len(src), decay))
                continue
            src, owner, distance = tails(histories, width)
            if len(src):
                matrix.add_pairs(src, rows[owner], np.power(decay, distance.astype(np.float64)))
        self.peers.link(histories, rows)

    def learn(self, recent: Sequence[int], item_id: str, timestamp: float) -> int:
        """`observe` the item and `link` it to the user's `recent` rows at once; returns its row."""
        row = self.observe(item_id, timestamp)
        self.link([np.asarray(recent, dtype=np.int64)], [row])
        return row

    def recent_popularity(self, now: float, rows: np.ndarray | None = None) -> np.ndarray:
        """Recency-weighted counts as of `now`, per item row (all of them, or just `rows`)."""
        factor = math.pow(0.5, (now - self._pop_time) / self.popularity_half_life)
        return (self._pop[: self.n_items] if rows is None else self._pop[rows]) * factor

    def cooccurrence_scores(self, recent: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Sum over the user's last `window` items of decay**age * C[h, j] / sqrt(n_j + 1), as
        (item rows, scores) of the non-zero entries (the item-kNN normalisation by popularity)."""
        window = np.asarray(recent, dtype=np.int64)[-self.window:]
        cols, vals = self.cooccurrence.sparse_scores(window, _shared_pair_weights(len(window), self.decay))
        vals *= self._inv_sqrt[cols]
        return cols, vals

    def transition_scores(self, recent: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Sum over the last `transition_window` items of decay**age * T[h -> j], as (item rows,
        scores) of the non-zero entries."""
        short = np.asarray(recent, dtype=np.int64)[-self.transition_window:]
        return self.transitions.sparse_scores(short, _shared_pair_weights(len(short), self.transition_decay))

    def knn_scores(self, recent: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The `recency-knn` peer's scores for a user with these recent rows (oldest first), as
        (item rows, scores) of the non-zero entries (`PeerStats.knn_scores`)."""
        return self.peers.knn_scores(recent, self._inv_sqrt)

    def sr_scores(self, recent: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The `sr` peer's scores for a user with these recent rows (`PeerStats.sr_scores`)."""
        return self.peers.sr_scores(recent)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "peers" not in state:   # pickled before the peers' statistics: they start now
            self.peers = PeerStats(max_per_row=self.max_neighbours)
