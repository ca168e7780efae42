"""Replay sampling for consolidation: recent events plus a time-spread sample of older ones.

One pass over an event archive (any iterable of normalized event tables in time order, e.g.
`streaming.archive.iter_archive`) draws a bounded, seeded sample:

- **recent** events (time > ``since_ms``, the last consolidation) fill ``recent_fraction``
  of the sample, drawn uniformly;
- **old** events (time <= ``since_ms``) fill the rest, spread over time: the old part of the
  timeline is cut into ``strata`` equal-width periods and each period gets an equal share
  (a period with too few events gives its share to the others), so a burst of traffic in one
  week does not crowd out the months before it;
- if either part has too few events, the other fills in up to ``size``.

Uniform draws use bottom-k sampling: every event gets a seeded random key and a part keeps
the events with the smallest keys. Periods start at ``min_period_ms`` wide and double (merging
neighbours, which bottom-k makes exact) whenever the timeline outgrows ``strata`` of them, so
the sampler never needs to know the time range in advance.

Memory is bounded by the sample, never by the archive: at most ``size`` recent and ``2 * size``
old candidates (each with its history) are held, plus each user's last ``history`` items
(an int32 ring buffer per user). Events of deleted users are dropped on read: they are neither
sampled nor part of anyone's history.

Every sampled event carries the user's history before it (most recent first), which the slow
ranker's user tower reads, and the sample has a sha256 digest of its event ids for tracking.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import os
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastslow.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_STRATA = 32
_NO_ROOM = -1.0  # threshold of a part with no capacity: no key is below it


@dataclass
class ReplaySample:
    """Sampled events in time order, each with the user's history before it.

    Columns are parallel arrays (one entry per sampled event). ``history`` holds item codes
    into ``item_ids``, most recent first, -1 where the user had fewer items.
    """

    event_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    timestamps_ms: np.ndarray
    event_types: np.ndarray
    values: np.ndarray
    recent: np.ndarray
    """True for events after ``since_ms`` (recent), False for old ones."""
    history: np.ndarray
    item_ids: np.ndarray
    since_ms: int | None = None
    until_ms: int | None = None
    """Time of the latest event read (deleted users excluded): the next run's ``since_ms``."""
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.event_ids)

    @property
    def digest(self) -> str:
        """sha256 of the sampled event ids, one per line, in sample order."""
        return hashlib.sha256("\n".join(self.event_ids.tolist()).encode()).hexdigest()

    def history_of(self, n: int) -> list[str]:
        """Event ``n``'s user history as item ids, oldest first."""
        codes = self.history[n]
        return [self.item_ids[c] for c in codes[codes >= 0][::-1]]

    def histories(self) -> list[list[str]]:
        """Every event's user history as item ids, oldest first."""
        return [self.history_of(n) for n in range(len(self))]

    def subset(self, mask: np.ndarray) -> "ReplaySample":
        """The events where ``mask`` is True (same item codes, times and stats)."""
        return ReplaySample(self.event_ids[mask], self.users[mask], self.items[mask], self.timestamps_ms[mask],
                            self.event_types[mask], self.values[mask], self.recent[mask], self.history[mask],
                            self.item_ids, self.since_ms, self.until_ms, dict(self.stats))


def probe_mask(event_ids: Iterable[str], fraction: float) -> np.ndarray:
    """True for the events held out as probes: a stable hash of the event id, not the seed.

    The same event is a probe in every consolidation, so no run ever trains on a probe and
    the gate never scores a model on what it was trained on.

    >>> probe_mask(["e1", "e2", "e3"], 0.0).tolist(), probe_mask(["e1", "e2", "e3"], 1.0).tolist()
    ([False, False, False], [True, True, True])
    """
    cut = int(round(fraction * 10_000))
    return np.fromiter((zlib.crc32(e.encode()) % 10_000 < cut for e in event_ids), dtype=bool)


def split_probes(sample: ReplaySample, fraction: float) -> tuple[ReplaySample, ReplaySample]:
    """(training part, probe part) of a sample, probes chosen by `probe_mask`."""
    mask = probe_mask(sample.event_ids.tolist(), fraction)
    return sample.subset(~mask), sample.subset(mask)


class _BottomK:
    """The ``capacity`` entries with the smallest keys seen (a uniform sample of what was offered)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.heap: list[tuple[float, int, tuple]] = []  # (-key, seq, payload): a max-heap on key

    def threshold(self) -> float:
        """Keys below this enter; 2.0 (above every key) while there is room."""
        if len(self.heap) < self.capacity:
            return 2.0
        return -self.heap[0][0] if self.capacity else _NO_ROOM

    def push(self, key: float, seq: int, payload: tuple) -> None:
        entry = (-key, seq, payload)
        if len(self.heap) < self.capacity:
            heapq.heappush(self.heap, entry)
        else:
            heapq.heapreplace(self.heap, entry)

    def merged(self, other: "_BottomK") -> "_BottomK":
        out = _BottomK(self.capacity)
        out.heap = heapq.nlargest(self.capacity, self.heap + other.heap)  # largest -key = smallest key
        heapq.heapify(out.heap)
        return out

    def smallest(self, n: int) -> list[tuple[float, int, tuple]]:
        return heapq.nlargest(n, self.heap)


class _TimeStrata:
    """Old events in ``strata`` equal periods from the first one, widths doubling as time goes on."""

    def __init__(self, strata: int, capacity: int, min_period_ms: int) -> None:
        self.cells = [_BottomK(capacity) for _ in range(strata)]
        self.origin: int | None = None
        self.width = max(1, min_period_ms)

    def cell_index(self, ts_ms: np.ndarray) -> np.ndarray:
        """Period of each time, widening the periods first if any lies beyond the last one."""
        if not len(ts_ms):
            return np.zeros(0, dtype=np.int64)
        if self.origin is None:
            self.origin = int(ts_ms.min())
        k = len(self.cells)
        while k > 1 and (int(ts_ms.max()) - self.origin) // self.width >= k:
            self._double()
        return np.clip((ts_ms - self.origin) // self.width, 0, k - 1)

    def _double(self) -> None:
        k = len(self.cells)
        pairs = [self.cells[j].merged(self.cells[j + 1]) if j + 1 < k else self.cells[j] for j in range(0, k, 2)]
        self.cells = pairs + [_BottomK(self.cells[0].capacity) for _ in range(k - len(pairs))]
        self.width *= 2

    def take(self, n: int) -> list[tuple[float, int, tuple]]:
        """``n`` entries spread evenly over the periods (water-filling), fewer if not held."""
        cells = sorted((c for c in self.cells if c.heap), key=lambda c: len(c.heap))
        out, remaining = [], n
        for pos, cell in enumerate(cells):
            share = min(len(cell.heap), remaining // (len(cells) - pos) if pos < len(cells) - 1 else remaining)
            out.extend(cell.smallest(share))
            remaining -= share
        return out


class _Histories:
    """Each user's last ``length`` item codes in an int32 ring buffer (bounded per user)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.ring = np.full((1024, length), -1, dtype=np.int32)
        self.count = np.zeros(1024, dtype=np.int64)

    def ensure(self, n_users: int) -> None:
        if n_users > len(self.count):
            size = max(n_users, 2 * len(self.count))
            ring = np.full((size, self.length), -1, dtype=np.int32)
            ring[: len(self.ring)] = self.ring
            self.ring, self.count = ring, np.concatenate([self.count, np.zeros(size - len(self.count), np.int64)])

    def snapshot(self, user: int) -> tuple[np.ndarray, int]:
        """A cheap copy of the user's ring and item count; `ordered` turns many into histories."""
        return self.ring[user].copy(), int(self.count[user])

    def ordered(self, rings: list[np.ndarray], counts: list[int]) -> np.ndarray:
        """(n, length) histories, most recent first, -1 padded, from `snapshot` results."""
        if not rings:
            return np.zeros((0, self.length), dtype=np.int32)
        rows, counts_ = np.stack(rings), np.asarray(counts, dtype=np.int64)[:, None]
        steps = np.arange(self.length)[None, :]
        out = np.take_along_axis(rows, (counts_ - 1 - steps) % max(self.length, 1), axis=1)
        return np.where(steps < np.minimum(counts_, self.length), out, -1).astype(np.int32)

    def push(self, user: int, item: int) -> None:
        if self.length:
            self.ring[user, self.count[user] % self.length] = item
        self.count[user] += 1


def _codes(column: pa.ChunkedArray, vocab: dict[str, int]) -> np.ndarray:
    """Global int codes of a string column, registering new strings in ``vocab``."""
    encoded = column.combine_chunks().dictionary_encode()
    local = np.fromiter((vocab.setdefault(s, len(vocab)) for s in encoded.dictionary.to_pylist()),
                        dtype=np.int64, count=len(encoded.dictionary))
    return local[encoded.indices.to_numpy(zero_copy_only=False)]


class ReplaySampler:
    """Streaming replay sampler: `add` event tables in time order, then take the `result`.

    Parameters
    ----------
    size
        Events in the sample (fewer if the archive holds fewer).
    recent_fraction
        Share of the sample drawn from events after ``since_ms``.
    since_ms
        Time of the last consolidation (unix ms); ``None``: every event is old.
    history
        Items of history kept per user and attached to each sampled event (the slow ranker's
        ``history``).
    deleted
        User ids whose events are dropped entirely.
    seed
        Seed of the sampling keys: the same tables and seed give the same sample.
    strata, min_period_ms
        Number of time periods the old part is spread over, and their starting width.

    Examples
    --------
    >>> import datetime as dt
    >>> t = [dt.datetime(2024, 1, d, tzinfo=dt.timezone.utc) for d in (1, 2, 3, 4)]
    >>> table = pa.table({"event_id": ["e1", "e2", "e3", "e4"], "user_id": ["a", "a", "gone", "a"],
    ...                   "item_id": ["x", "y", "z", "w"], "timestamp": pa.array(t, pa.timestamp("ms", "UTC")),
    ...                   "event_type": ["click"] * 4, "value": [1.0] * 4})
    >>> since = int(t[2].timestamp() * 1000)
    >>> sampler = ReplaySampler(10, since_ms=since, deleted={"gone"})
    >>> sampler.add(table)
    >>> s = sampler.result()
    >>> s.event_ids.tolist(), s.recent.tolist(), s.history_of(2)
    (['e1', 'e2', 'e4'], [False, False, True], ['x', 'y'])
    """

    def __init__(self, size: int, *, recent_fraction: float = 0.5, since_ms: int | None = None, history: int = 50,
                 deleted: Collection[str] = (), seed: int = 0, strata: int = DEFAULT_STRATA,
                 min_period_ms: int = 1000) -> None:
        if size < 0:
            raise ConfigError("replay sample size", size, "a number of events >= 0")
        if not 0.0 <= recent_fraction <= 1.0:
            raise ConfigError("replay recent fraction", recent_fraction, "a fraction between 0 and 1")
        if strata < 1 or history < 0:
            raise ConfigError("replay strata/history", (strata, history), "strata >= 1 and history >= 0")
        self.size, self.recent_fraction, self.since_ms = size, recent_fraction, since_ms
        self._recent = _BottomK(size)
        self._old = _TimeStrata(strata, math.ceil(2 * size / strata), min_period_ms)
        self._users: dict[str, int] = {}
        self._items: dict[str, int] = {}
        self._histories = _Histories(history)
        self._deleted = pa.array(sorted(set(deleted)), pa.string())
        self._rng = np.random.default_rng(seed)
        self._seq = 0
        self.stats = {"read": 0, "deleted_skipped": 0, "recent_read": 0, "old_read": 0}
        self.until_ms: int | None = None

    def held(self) -> int:
        """Candidate events held right now (bounded by 3 * size)."""
        return len(self._recent.heap) + sum(len(c.heap) for c in self._old.cells)

    def add(self, table: pa.Table) -> None:
        """Read one table of events (normalized columns, time order within and across tables)."""
        keys = self._rng.random(table.num_rows)
        self.stats["read"] += table.num_rows
        if len(self._deleted):
            keep = pc.invert(pc.is_in(table.column("user_id"), value_set=self._deleted))
            keys = keys[keep.to_numpy(zero_copy_only=False)]
            self.stats["deleted_skipped"] += table.num_rows - len(keys)
            table = table.filter(keep)
        if not table.num_rows:
            return
        ts = pc.cast(table.column("timestamp"), pa.int64()).to_numpy()
        self.until_ms = max(int(ts.max()), self.until_ms if self.until_ms is not None else int(ts.max()))
        recent = ts > self.since_ms if self.since_ms is not None else np.zeros(len(ts), dtype=bool)
        self.stats["recent_read"] += int(recent.sum())
        self.stats["old_read"] += int(len(ts) - recent.sum())
        cells = np.zeros(len(ts), dtype=np.int64)
        cells[~recent] = self._old.cell_index(ts[~recent])
        user_codes = _codes(table.column("user_id"), self._users)
        item_codes = _codes(table.column("item_id"), self._items)
        self._histories.ensure(len(self._users))
        self._scan(table, ts, keys, recent, cells, user_codes, item_codes)

    def _scan(self, table, ts, keys, recent, cells, user_codes, item_codes) -> None:
        histories, old_cells, recent_part, seq = self._histories, self._old.cells, self._recent, self._seq
        rows = zip(keys.tolist(), recent.tolist(), cells.tolist(), user_codes.tolist(), item_codes.tolist(),
                   ts.tolist(), *(table.column(c).to_pylist()
                                  for c in ("event_id", "user_id", "item_id", "event_type", "value")))
        for n, (key, is_recent, cell, user, item, t, event_id, user_id, item_id, event_type, value) in enumerate(rows):
            part = recent_part if is_recent else old_cells[cell]
            if key < part.threshold():
                part.push(key, seq + n, (event_id, user_id, item_id, t, event_type, value, *histories.snapshot(user)))
            histories.push(user, item)
        self._seq += len(ts)

    def result(self) -> ReplaySample:
        """The sample so far: recent share first, old periods fill the rest (and vice versa)."""
        wanted_recent = min(len(self._recent.heap), round(self.size * self.recent_fraction))
        old = self._old.take(self.size - wanted_recent)
        recent = self._recent.smallest(min(len(self._recent.heap), self.size - len(old)))
        entries = sorted([(e, True) for e in recent] + [(e, False) for e in old],
                         key=lambda pair: (pair[0][2][3], pair[0][1]))
        payloads = [e[2] for e, _ in entries]
        column = lambda j, dtype=object: np.array([p[j] for p in payloads], dtype=dtype)
        history = self._histories.ordered([p[6] for p in payloads], [p[7] for p in payloads])
        stats = {**self.stats, "sampled_recent": len(recent), "sampled_old": len(old)}
        return ReplaySample(column(0), column(1), column(2), column(3, np.int64), column(4), column(5, np.float64),
                            np.array([r for _, r in entries], dtype=bool), history,
                            np.array(list(self._items), dtype=object), self.since_ms, self.until_ms, stats)


def sample_replay(tables: Iterable[pa.Table], size: int, **options) -> ReplaySample:
    """Stream ``tables`` through a `ReplaySampler` (same options) and return its sample."""
    sampler = ReplaySampler(size, **options)
    for table in tables:
        sampler.add(table)
    sample = sampler.result()
    logger.info("replay sample: %d events (%d recent, %d old) from %d read, %d of deleted users skipped",
                len(sample), sample.stats["sampled_recent"], sample.stats["sampled_old"], sample.stats["read"],
                sample.stats["deleted_skipped"])
    return sample


def read_deleted_users(path: str | Path) -> set[str]:
    """User ids listed one per line in ``path`` (a missing file lists none).

    >>> read_deleted_users("/nonexistent/deleted_users.txt")
    set()
    """
    path = Path(path)
    if not path.exists():
        return set()
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def record_deleted_user(path: str | Path, user_id: str) -> None:
    """Append ``user_id`` to the deleted-users file durably (the next sample excludes them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(user_id.strip() + "\n")
        f.flush()
        os.fsync(f.fileno())
