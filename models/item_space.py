"""The item vectors FastSlow's fast path reads: the slow model's id vectors, or id + context.

A slow model trained with item context scores item j for user vector u as
``<u, v_j + e_j> + b_j + c_j``: the id part (v_j, b_j) plus the context part (e_j, c_j) of the
item's category and numeric attributes (`models.slow.SlowRanker.context_item_vectors`). The
fast path (item index, fast-weight targets and negatives, the ``fast_weights`` signal, the slow
score) must read the same vectors the slow model scores with, or the fast vectors learn in a
space the slow model no longer uses. `ItemSpace` is what those reads take; `ContextItems`
keeps the id + context vectors of every item the stream has seen, one row per stream item
row, computed once per item (and again when its context changes), not per request. An item
the slow model has no id row for (newer than the model) gets a context-only vector, so the
fast path can learn and retrieve it too.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from models.item_index import ItemIndex


class ItemSpace(NamedTuple):
    """Item vectors as the fast path reads them.

    ``rows``: stream item row -> vector row (-1: no vector); ``items``: vector row -> stream
    item row (-1: an item the stream has not seen); ``vectors`` (n, dim) and ``biases`` (n,);
    ``index``: the item index over ``vectors``, labelled by vector rows; ``count``: vector rows
    sampled negatives are drawn from (``0..count-1``).
    """

    rows: np.ndarray
    items: np.ndarray
    vectors: np.ndarray
    biases: np.ndarray
    index: ItemIndex
    count: int


class ContextItems:
    """Id + context vectors of stream items under one slow model, kept as items arrive.

    Vector rows are the stream's item rows. `update` sets rows from their slow-model rows (-1:
    none) and context arrays; only rows that are new or whose context changed are recomputed
    and (re-)added to the item index, which is rebuilt whenever it has doubled since it was last
    built (so re-added rows do not pile up: the cost of rebuilding is amortised over the adds).

    Examples
    --------
    >>> from models.slow import SlowRanker
    >>> ranker = SlowRanker(dim=4, context={"user": [], "item": ["x"], "categories": 3})
    >>> _ = ranker.build_examples(["u"], ["a"])
    >>> ranker.refresh()
    >>> items = ContextItems(ranker)
    >>> items.update(np.array([0, 1]), np.array([0, -1]), np.array([[0.5], [1.0]]), np.array([1, 2]))
    >>> space = items.space()
    >>> space.count, space.rows.tolist(), len(space.index)
    (2, [0, 1], 2)
    >>> v, b = ranker.context_item_vectors(np.array([0, -1]), np.array([[0.5], [1.0]]), np.array([1, 2]))
    >>> bool(np.array_equal(space.vectors, v) and np.array_equal(space.biases, b))
    True
    >>> items.update(np.array([1]), np.array([-1]), np.array([[1.0]]), np.array([2]))   # unchanged: nothing added
    >>> len(items.space().index)
    2
    """

    def __init__(self, ranker) -> None:
        self.ranker = ranker
        n_item = len((ranker.context or {}).get("item", ()))
        self._vectors = np.zeros((0, ranker.dim), np.float32)
        self._biases = np.zeros(0, np.float32)
        self._numeric = np.zeros((0, n_item), np.float32)
        self._categories = np.zeros(0, np.int64)
        self._slow = np.zeros(0, np.int64)
        self._identity = np.zeros(0, np.int64)
        self._index = ItemIndex()
        self._built = 0
        self.n = 0

    def update(self, rows: np.ndarray, slow_rows: np.ndarray, numeric: np.ndarray, categories: np.ndarray) -> None:
        """Set item `rows` (stream item rows; those past the end extend the table) from their
        slow-model rows and context; rows the table holds with the same inputs are left alone."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return
        slow_rows, numeric = np.asarray(slow_rows, np.int64), np.asarray(numeric, np.float32)
        categories = np.asarray(categories, np.int64)
        self._grow(int(rows.max()) + 1)
        changed = ((rows >= self.n) | (self._slow[rows] != slow_rows) | (self._categories[rows] != categories)
                   | (self._numeric[rows] != numeric).any(axis=1))
        rows, slow_rows, numeric, categories = rows[changed], slow_rows[changed], numeric[changed], categories[changed]
        if not len(rows):
            return
        self._slow[rows], self._numeric[rows], self._categories[rows] = slow_rows, numeric, categories
        self._vectors[rows], self._biases[rows] = self.ranker.context_item_vectors(slow_rows, numeric, categories)
        self.n = max(self.n, int(rows.max()) + 1)
        if len(self._index) + len(rows) >= 2 * self._built:
            self._index = ItemIndex().build(self._vectors[: self.n])
            self._built = self.n
        else:
            self._index.add(self._vectors[rows], rows)

    def rebased(self, ranker, slow_rows: np.ndarray) -> ContextItems:
        """The same items with the same context under another slow model reading the same
        context spec (a promoted champion), with `slow_rows` its rows of the stream items; the
        context is not read again."""
        out = ContextItems(ranker)
        rows = np.arange(self.n, dtype=np.int64)
        out.update(rows, np.asarray(slow_rows, np.int64)[rows], self._numeric[: self.n], self._categories[: self.n])
        return out

    def _grow(self, n: int) -> None:
        if n <= len(self._slow):
            return
        size = max(n, 2 * len(self._slow), 1024)

        def grown(a: np.ndarray, fill) -> np.ndarray:
            out = np.full((size, *a.shape[1:]), fill, dtype=a.dtype)
            out[: len(a)] = a
            return out

        self._vectors, self._biases = grown(self._vectors, 0), grown(self._biases, 0)
        self._numeric, self._categories = grown(self._numeric, 0), grown(self._categories, 0)
        self._slow = grown(self._slow, -1)

    def space(self) -> ItemSpace:
        """The table as an `ItemSpace` (vector rows are stream item rows)."""
        if len(self._identity) < self.n:
            self._identity = np.arange(max(self.n, 2 * len(self._identity)), dtype=np.int64)
        identity = self._identity[: self.n]
        return ItemSpace(identity, identity, self._vectors[: self.n], self._biases[: self.n], self._index, self.n)
