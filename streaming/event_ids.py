"""Derived event ids for whole columns, counting repeats of identical rows.

A log without an id column gets `streaming.events.derive_event_id` ids, computed for a batch
at once. Real logs repeat identical rows on purpose (two lines of one invoice for the same
product), and downstream deduplication by ``event_id`` must not merge them, so the n-th
identical row of a log (n counted from 0, in file order) gets ``occurrence=n``. The first
occurrence gets exactly the id `Interaction` derives for the same content.

Counting needs to remember every content seen. `OccurrenceCounter` keeps one 64-bit key per
row in sorted numpy runs (8 bytes per event, no Python objects), merged like a log-structured
merge tree, so a log of N events costs O(N log N) time overall.

>>> counter = OccurrenceCounter()
>>> counter.count(np.array([7, 5, 7], dtype=np.uint64)).tolist()
[0, 0, 1]
>>> counter.count(np.array([7, 9], dtype=np.uint64)).tolist()
[2, 0]
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streaming.events import EVENT_ID_BYTES

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


class OccurrenceCounter:
    """How many times each 64-bit key was seen before, across calls to `count`."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []  # sorted, sizes decreasing

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    def count(self, keys: np.ndarray) -> np.ndarray:
        """For each key (in order): how often it occurred before it; then remember them."""
        keys = np.asarray(keys, dtype=np.uint64)
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]  # sorted queries keep the binary searches cache-friendly
        starts = np.ones(len(keys), dtype=bool)
        starts[1:] = ordered[1:] != ordered[:-1]
        position = np.arange(len(keys))
        counts = position - np.maximum.accumulate(np.where(starts, position, 0))
        for run in self._runs:
            counts += np.searchsorted(run, ordered, "right") - np.searchsorted(run, ordered, "left")
        earlier = np.empty(len(keys), dtype=np.int64)
        earlier[order] = counts
        self._add(ordered)
        return earlier

    def _add(self, run: np.ndarray) -> None:
        while self._runs and len(self._runs[-1]) <= len(run):
            run = np.concatenate((self._runs.pop(), run))
            run.sort(kind="stable")  # two sorted runs: timsort merges them in linear time
        if len(run):
            self._runs.append(run)


def _hex(digests: np.ndarray) -> pa.Array:
    """Fixed-width hex strings from an (n, width) uint8 matrix."""
    count, width = digests.shape
    text = np.empty((count, 2 * width), dtype=np.uint8)
    text[:, 0::2] = _HEX[digests >> 4]
    text[:, 1::2] = _HEX[digests & 15]
    offsets = np.arange(0, 2 * width * count + 1, 2 * width, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(text)]).cast(pa.string())


def content_column(user_id: pa.Array, item_id: pa.Array, event_type: pa.Array,
                   timestamp_ms: np.ndarray, value: np.ndarray) -> pa.Array:
    """`streaming.events.event_content` for every row, as a binary array."""
    fixed = np.empty(len(timestamp_ms), dtype=[("t", "<i8"), ("v", "<f8")])
    fixed["t"], fixed["v"] = timestamp_ms, np.asarray(value, dtype=np.float64) + 0.0
    tail = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(fixed), [None, pa.py_buffer(fixed.tobytes())])
    parts = [pc.cast(part, pa.binary()) for part in (user_id, item_id, event_type)]
    return pc.binary_join_element_wise(*parts, pc.cast(tail, pa.binary()), b"\x1f")


def derive_ids(content: pa.Array, counter: OccurrenceCounter) -> pa.Array:
    """Ids for rows with this content, in order, counting repeats with ``counter``."""
    blake2b = hashlib.blake2b
    contents = content.to_pylist()  # transient: one batch of bytes objects at a time
    digests = np.frombuffer(b"".join([blake2b(c, digest_size=EVENT_ID_BYTES).digest() for c in contents]),
                            dtype=np.uint8).reshape(len(contents), EVENT_ID_BYTES).copy()
    keys = np.ascontiguousarray(digests[:, :8]).view("<u8").ravel()
    occurrences = counter.count(keys)
    for index in np.flatnonzero(occurrences):
        repeated = contents[index] + b"\x1f" + str(int(occurrences[index])).encode()
        digests[index] = np.frombuffer(blake2b(repeated, digest_size=EVENT_ID_BYTES).digest(), dtype=np.uint8)
    return _hex(digests)
