"""A growing, collision-free mapping from external string ids to dense row numbers.

New users and items keep arriving in a stream, so every model that keeps per-id rows
(embeddings, counts, fast weights) indexes them through a `Vocab`. Rows are never reused
and never hashed, so two ids can never share a row silently.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np


class Vocab:
    """Map string ids to consecutive integers in order of first appearance.

    Examples
    --------
    >>> v = Vocab()
    >>> v.add("apple"), v.add("pear"), v.add("apple")
    (0, 1, 0)
    >>> v.get("pear"), v.get("plum"), len(v)
    (1, -1, 2)
    >>> v.id_of(1)
    'pear'
    >>> v.lookup(["pear", "plum", "apple"]).tolist()
    [1, -1, 0]
    """

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        for item in ids:
            self.add(item)

    def add(self, key: str) -> int:
        """Return the row of `key`, giving it the next free row if it is new."""
        row = self._index.get(key)
        if row is None:
            row = len(self._ids)
            self._index[key] = row
            self._ids.append(key)
        return row

    def get(self, key: str) -> int:
        """Return the row of `key`, or -1 if it has never been added."""
        return self._index.get(key, -1)

    def lookup(self, keys: Iterable[str]) -> np.ndarray:
        """Rows of many keys at once (-1 for unknown ones)."""
        return np.fromiter(map(self._index.get, keys, itertools.repeat(-1)), dtype=np.int64)

    def id_of(self, row: int) -> str:
        """The external id stored at `row`."""
        return self._ids[row]

    def ids_of(self, rows: np.ndarray) -> list[str]:
        """The external ids of many rows at once.

        >>> Vocab(["a", "b", "c"]).ids_of(np.array([2, 0]))
        ['c', 'a']
        """
        ids = self._ids
        return [ids[r] for r in rows.tolist()]

    def ids(self) -> list[str]:
        """All ids in row order (a copy)."""
        return list(self._ids)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._ids)

    def __getstate__(self) -> list[str]:
        return self._ids

    def __setstate__(self, ids: list[str]) -> None:
        self._ids = list(ids)
        self._index = {k: i for i, k in enumerate(self._ids)}
