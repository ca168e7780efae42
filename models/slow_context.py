"""Context inputs of the slow ranker: the arrays one request reads, and item context over time.

`ContextArrays` is what a feature provider hands the ranker for one request (or, one row per
example, for training). `ItemContextTable` holds item context as it changed over time, for
the sampled negatives of training: a negative must be described as it was when the example
happened, like the example's own item (whose context comes from a point-in-time join), or
the model learns the difference between "then" and "now" instead of the difference between
items. `time_batches` cuts examples into batches of neighbouring times, so each batch can
read its negatives as of one time (its earliest example's: never later than any of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from models.vocab import Vocab


class ContextArrays(NamedTuple):
    """Context of one request as the ranker reads it (`features.context.FeatureContext.lookup`).

    ``user`` (n_user,) numeric user features; ``items`` (N, n_item) numeric features and
    ``categories`` (N,) category buckets (0: unknown) of N candidate items. For training, one
    row per example: ``user`` (n, n_user).
    """

    user: np.ndarray
    items: np.ndarray
    categories: np.ndarray


def context_dims(context: dict | None) -> tuple[int, int, int]:
    """(user features, item features, category buckets) a context spec asks for.

    >>> context_dims(None), context_dims({"user": ["a", "b"], "item": ["c"], "categories": 16})
    ((0, 0, 0), (2, 1, 16))
    """
    if not context:
        return 0, 0, 0
    return len(context.get("user", ())), len(context.get("item", ())), int(context.get("categories", 0))


class ItemContextTable:
    """Item context over time: an item's context at time t is its newest entry strictly before t.

    Parameters
    ----------
    item_ids
        Item of each entry.
    numeric, categories
        (n, n_item) numeric features and (n,) category buckets of each entry.
    times
        Unix seconds from which each entry holds; None: one snapshot, valid at any time.

    An item without an entry before t reads as all-missing (zeros, bucket 0).

    Examples
    --------
    >>> table = ItemContextTable(["a", "a", "b"], np.array([[1.0], [2.0], [5.0]]), np.array([3, 3, 4]),
    ...                          times=np.array([10.0, 20.0, 0.0]))
    >>> rows = table.rows_of(["b", "a", "new"])
    >>> table.as_of(rows, 20.0)[0].ravel().tolist()     # a's entry at 20 is not strictly before 20
    [5.0, 1.0, 0.0]
    >>> table.as_of(rows, 5.0)[1].tolist()
    [4, 0, 0]
    """

    def __init__(self, item_ids: Sequence[str], numeric: np.ndarray, categories: np.ndarray,
                 times: np.ndarray | None = None) -> None:
        self.ids = Vocab()
        codes = np.fromiter((self.ids.add(str(i)) for i in item_ids), dtype=np.int64, count=len(item_ids))
        self.timed = times is not None
        millis = (np.zeros(len(codes), np.int64) if times is None
                  else np.round(np.asarray(times, np.float64) * 1000).astype(np.int64))
        self._t0 = int(millis.min()) - 1 if len(millis) else 0
        self._span = int(millis.max()) - self._t0 + 2 if len(millis) else 2
        keys = codes * self._span + (millis - self._t0)
        order = np.argsort(keys, kind="stable")
        self._keys, self._codes = keys[order], codes[order]
        numeric = np.asarray(numeric, np.float32)
        self._numeric = (numeric if numeric.ndim == 2 else numeric.reshape(len(codes), -1))[order]
        self._categories = np.asarray(categories, np.int64)[order]

    @property
    def width(self) -> int:
        """Numeric features per entry."""
        return self._numeric.shape[1]

    def rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Table codes of item ids (-1: no entry), to pass to `as_of`."""
        return self.ids.lookup(item_ids)

    def as_of(self, codes: np.ndarray, time: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
        """(numeric, categories) of items (codes from `rows_of`) as of just before `time`."""
        codes = np.asarray(codes, dtype=np.int64)
        if not self.timed or not np.isfinite(time):
            offset = self._span - 1   # after every entry
        else:
            offset = int(np.clip(round(time * 1000) - self._t0, 0, self._span - 1))
        pos = np.searchsorted(self._keys, codes * self._span + offset, side="left") - 1
        ok = (codes >= 0) & (pos >= 0)
        ok[ok] = self._codes[pos[ok]] == codes[ok]
        numeric = np.zeros((len(codes), self.width), np.float32)
        categories = np.zeros(len(codes), np.int64)
        numeric[ok], categories[ok] = self._numeric[pos[ok]], self._categories[pos[ok]]
        return numeric, categories


def time_batches(times: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Example positions cut into batches of neighbouring times, the batches in random order.

    >>> batches = time_batches(np.array([5.0, 1.0, 3.0, 2.0]), 2, np.random.default_rng(0))
    >>> sorted(sorted(b.tolist()) for b in batches)
    [[0, 2], [1, 3]]
    """
    order = np.argsort(np.asarray(times), kind="stable")
    chunks = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
    return [chunks[k] for k in rng.permutation(len(chunks))]


class ContextWeights:
    """Numpy copies of a net's context layers, for scoring without torch (`SlowRanker.refresh`).

    ``user_w`` (dim, n_user) or None; ``item_w`` (dim + 1, n_item) or None; ``category``
    (buckets, dim + 1) or None; ``unknown`` (dim + 1,) or None (no item context).
    """

    def __init__(self, dim: int, user_w=None, item_w=None, category=None, unknown=None) -> None:
        self.dim, self.user_w, self.item_w, self.category, self.unknown = dim, user_w, item_w, category, unknown

    @classmethod
    def of(cls, net) -> ContextWeights:
        """From a `models.slow_net.SlowRankerNet` (nets pickled before context: all None)."""
        def copy(param):
            return None if param is None else param.detach().cpu().numpy().astype(np.float32)

        item, category = getattr(net, "item_context", None), getattr(net, "category", None)
        return cls(net.dim, copy(net.context.weight if net.context is not None else None),
                   copy(item.weight if item is not None else None),
                   copy(category.weight if category is not None else None), copy(getattr(net, "unknown_item", None)))

    def user_part(self, user: np.ndarray) -> np.ndarray:
        """(dim,) what the user's context adds to the user vector."""
        if self.user_w is None:
            return np.zeros(self.dim, np.float32)
        return self.user_w @ np.asarray(user, np.float32)

    def item_parts(self, unknown: np.ndarray, items: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """(N, dim + 1): each item's context vector (first dim columns) and bias (last column);
        items flagged `unknown` (no id row) get the unknown-item part too."""
        parts = np.zeros((len(unknown), self.dim + 1), dtype=np.float32)
        if self.unknown is None:
            return parts
        if self.item_w is not None:
            parts += np.asarray(items, np.float32) @ self.item_w.T
        if self.category is not None:
            parts += self.category[np.asarray(categories, np.int64)]
        parts[np.asarray(unknown, bool)] += self.unknown
        return parts
