"""Vectorised access to the last few items of many variable-length histories at once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def tails(histories: Sequence[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The last `width` entries of every history, flattened.

    Returns (values, owner, distance): entry n is ``histories[owner[n]][-1 - distance[n]]``;
    distance 0 is the most recent entry of its history.

    >>> v, o, d = tails([np.array([1, 2, 3]), np.array([], dtype=np.int64), np.array([7])], 2)
    >>> v.tolist(), o.tolist(), d.tolist()
    ([2, 3, 7], [0, 0, 2], [1, 0, 0])
    >>> [a.tolist() for a in tails([np.array([1, 2, 3])], 2)]
    [[2, 3], [0, 0], [1, 0]]
    """
    if len(histories) == 1:  # the common replay case, without the bookkeeping for many
        tail = np.asarray(histories[0], dtype=np.int64)[-width:] if width else np.zeros(0, np.int64)
        return tail, np.zeros(len(tail), dtype=np.int64), np.arange(len(tail) - 1, -1, -1, dtype=np.int64)
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    take = np.minimum(lengths, width)
    total = int(take.sum())
    if not total:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
    ends = np.cumsum(lengths)
    first = np.repeat(ends - take - (np.cumsum(take) - take), take)
    idx = first + np.arange(total)
    last = np.repeat(ends - 1, take)
    return flat[idx], np.repeat(np.arange(len(histories)), take), last - idx
