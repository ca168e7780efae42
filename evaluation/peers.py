"""Peer policies: what people use today, implemented as the literature and libraries define them.

They share the `Recommender` contract with the product, so one replay compares them all.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection

import numpy as np

from models.base import Recommender
from models.cooccurrence import Cooccurrence
from models.ranking import lex_top_k, top_k
from models.vocab import Vocab


class _ItemCounts:
    """Item vocabulary plus all-time interaction counts (shared by the count-based peers)."""

    def __init__(self) -> None:
        self.items = Vocab()
        self.counts = np.zeros(1024)

    def add(self, item_id: str) -> int:
        row = self.items.add(item_id)
        if row >= len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(len(self.counts))])
        self.counts[row] += 1
        return row

    @property
    def n(self) -> np.ndarray:
        return self.counts[: len(self.items)]

    def rows(self, item_ids: Collection[str]) -> list[int]:
        get = self.items.get
        return [r for r in map(get, item_ids) if r >= 0]

    def ids(self, rows: np.ndarray) -> list[str]:
        return [self.items.id_of(int(r)) for r in rows]


class Popularity(Recommender):
    """Recommend the items with the most interactions so far (ties: first seen first).

    >>> p = Popularity()
    >>> for u, i in [("a", "x"), ("b", "y"), ("c", "y")]:
    ...     p.learn_one(u, i, 0.0)
    >>> p.recommend("d", 2), p.recommend("d", 2, exclude={"y"})
    (['y', 'x'], ['x'])
    """

    name = "popularity"

    def __init__(self) -> None:
        self._items = _ItemCounts()

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        self._items.add(item_id)

    def recommend(self, user_id, k, exclude=()) -> list[str]:
        counts = self._items
        return counts.ids(top_k(counts.n, k, counts.rows(exclude)))


class ItemKNN(Recommender):
    """Online item-item co-occurrence over each user's last `window` items.

    When user u interacts with item j, C[h, j] and C[j, h] grow by 1 for each h among u's
    previous `window` items and n_j grows by 1. A candidate j scores
    sum_h C[h, j] / sqrt(n_j + 1) over u's last `window` items; ties go to the larger n_j,
    then to the item seen first.

    >>> knn = ItemKNN()
    >>> for u, i in [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "z"), ("c", "z"), ("d", "x")]:
    ...     knn.learn_one(u, i, 0.0)
    >>> knn.recommend("d", 2, exclude={"x"})   # y co-occurs with x twice; z is only popular
    ['y', 'z']
    """

    name = "itemknn"

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self._items = _ItemCounts()
        self._cooc = Cooccurrence()
        self._recent: dict[str, deque[int]] = {}

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        row = self._items.add(item_id)
        recent = self._recent.setdefault(user_id, deque(maxlen=self.window))
        if recent:
            self._cooc.add(recent, row)
        recent.append(row)

    def recommend(self, user_id, k, exclude=()) -> list[str]:
        counts = self._items
        n = counts.n
        recent = self._recent.get(user_id)
        if recent:
            score = self._cooc.scores(list(recent), n=len(n)) / np.sqrt(n + 1.0)
        else:
            score = np.zeros(len(n))
        return counts.ids(lex_top_k(score, n, k, counts.rows(exclude)))


class RecencyKNN(ItemKNN):
    """`itemknn` with the user's last `window` items weighted by recency.

    C and n_j exactly as `ItemKNN`; the user's h-th latest item (age 0 = the latest) weighs
    ``decay ** age``, and a candidate j scores sum_h w_h * C[h, j] / sqrt(n_j + 1); ties go to
    the larger n_j, then to the item seen first.

    >>> knn = RecencyKNN()
    >>> for u, i in [("a", "x"), ("a", "y"), ("b", "w"), ("b", "z"), ("c", "y"), ("c", "w")]:
    ...     knn.learn_one(u, i, 0.0)
    >>> knn.recommend("c", 2, exclude={"y", "w"})   # w (latest, weight 1) -> z beats y (0.85) -> x
    ['z', 'x']
    """

    name = "recency-knn"

    def __init__(self, window: int = 20, decay: float = 0.85) -> None:
        super().__init__(window)
        self.decay = decay
        self._weights = decay ** np.arange(window - 1, -1, -1, dtype=np.float64)
        """Weight by position in a full window, oldest first (the latest weighs 1)."""

    def recommend(self, user_id, k, exclude=()) -> list[str]:
        counts = self._items
        n = counts.n
        recent = self._recent.get(user_id)
        if recent:
            score = self._cooc.scores(list(recent), self._weights[-len(recent):], n=len(n)) / np.sqrt(n + 1.0)
        else:
            score = np.zeros(len(n))
        return counts.ids(lex_top_k(score, n, k, counts.rows(exclude)))


class SequentialRules(Recommender):
    """Sequential rules (`sr`, after Ludewig et al.'s session-rec): directed, distance-weighted
    transitions from a user's recent items to the next one.

    When user u learns item b, for each of u's previous (up to) `window` items a, at distance
    d = 1, 2, ... back (d = 1 is the item just before b), R[a, b] grows by 1/d. A candidate j
    scores R[last item of u, j]; ties (and users without history: every score 0) go to the
    larger n_j (all-time interactions, as `itemknn`), then to the item seen first.

    >>> sr = SequentialRules()
    >>> for u, i in [("a", "x"), ("a", "y"), ("a", "z"), ("b", "x"), ("b", "z")]:
    ...     sr.learn_one(u, i, 0.0)
    >>> sr.recommend("c", 3)            # no history: popularity (x=2, z=2: x seen first)
    ['x', 'z', 'y']
    >>> sr.recommend("b", 2)            # R[z, .] = 0; ties by n_j
    ['x', 'z']
    >>> sr.recommend("a", 2, exclude={"z"})   # R[z, .] is empty too: x (n=2) before y (n=1)
    ['x', 'y']
    """

    name = "sr"

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._items = _ItemCounts()
        self._rules = Cooccurrence(symmetric=False)
        self._recent: dict[str, deque[int]] = {}
        self._inverse = 1.0 / np.arange(window, 0, -1, dtype=np.float64)
        """1/d by position in a full window, oldest first (the latest item is at d = 1)."""

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        row = self._items.add(item_id)
        recent = self._recent.setdefault(user_id, deque(maxlen=self.window))
        if recent:
            self._rules.add(list(recent), row, weight=self._inverse[-len(recent):])
        recent.append(row)

    def recommend(self, user_id, k, exclude=()) -> list[str]:
        counts = self._items
        n = counts.n
        recent = self._recent.get(user_id)
        score = self._rules.scores([recent[-1]], n=len(n)) if recent else np.zeros(len(n))
        return counts.ids(lex_top_k(score, n, k, counts.rows(exclude)))


def popularity(seed: int = 0) -> Popularity:
    """Factory used by `fastslow replay --policy popularity` (deterministic; seed unused)."""
    return Popularity()


def itemknn(seed: int = 0) -> ItemKNN:
    """Factory used by `fastslow replay --policy itemknn` (deterministic; seed unused)."""
    return ItemKNN()


def recency_knn(seed: int = 0) -> RecencyKNN:
    """Factory used by `fastslow replay --policy recency-knn` (deterministic; seed unused)."""
    return RecencyKNN()


def sequential_rules(seed: int = 0) -> SequentialRules:
    """Factory used by `fastslow replay --policy sr` (deterministic; seed unused)."""
    return SequentialRules()
