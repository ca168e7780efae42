"""The event archive: every event the worker applied, as Parquet files by date and partition.

Consolidation and offline evaluation read it with `iter_archive`; the worker writes it with
`EventArchive.write` before it commits offsets.

Layout (under ``<data dir>/archive/<topic>``, see `archive_dir`)::

    date=2024-05-01/partition=3/00000000000000001200-00000000000000001999.parquet

A file holds the applied events of one partition whose Kafka offsets lie in the range of its
name (first and last offset consumed, inclusive; rejected and duplicate messages take offsets
but are not archived), split by the UTC date of the event time. Columns: those of
`streaming.normalize.EVENT_SCHEMA` plus ``partition`` and ``offset``.

Redelivery never duplicates: a range written again replaces the file of the same name
(atomic rename), and when a worker resumes a partition from a snapshot at offset ``o`` it
first calls `EventArchive.truncate`, which removes whatever a crashed predecessor archived at
offsets ``>= o`` (cutting a file that straddles ``o``), since those offsets are re-read.

When the topic starts over (a new incarnation: its offsets begin at 0 again), the partition's
files are *retired* (`EventArchive.retire`): renamed ``r<n>-<first>-<last>.parquet`` (``n``
counting retirements up), so new offsets neither replace nor truncate events of the old ones.
Readers take retired files first, oldest retirement first, then the current ones.

>>> import tempfile, pyarrow as pa
>>> from pathlib import Path
>>> root = Path(tempfile.mkdtemp())
>>> from streaming.decode import DecodedEvent, decoded_table
>>> segment = ArchiveSegment(partition=0)
>>> events = decoded_table([DecodedEvent("e1", "u1", "i1", 1714564800000, "click", 1.0, None)])
>>> segment.add(events, offsets=[7])
>>> segment.cover(7, 8)  # offset 8 was consumed too (a rejected message)
>>> [p.relative_to(root).as_posix() for p in EventArchive(root).write(segment)]
['date=2024-05-01/partition=0/00000000000000000007-00000000000000000008.parquet']
>>> [t.column("user_id").to_pylist() for t in iter_archive(root)]
[['u1']]
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fastslow.errors import ConfigError
from streaming.durable import TMP_PREFIX, atomic_write
from streaming.normalize import EVENT_SCHEMA

__all__ = ["ARCHIVE_SCHEMA", "ArchiveSegment", "ArchiveWriter", "EventArchive", "archive_dir", "iter_archive"]

logger = logging.getLogger(__name__)

ARCHIVE_SCHEMA = EVENT_SCHEMA.append(pa.field("partition", pa.int32())).append(pa.field("offset", pa.int64()))
_DAY_MS = 86_400_000
_NAME = re.compile(r"^(\d{20})-(\d{20})\.parquet$")
_RETIRED = re.compile(r"^r(\d{6})-(\d{20})-(\d{20})\.parquet$")


def archive_dir(data_dir: str | Path, topic: str) -> Path:
    """Where the archive of ``topic`` lives under a data dir.

    >>> archive_dir("/data", "interactions").as_posix()
    '/data/archive/interactions'
    """
    return Path(data_dir) / "archive" / topic


class ArchiveSegment:
    """Applied events of one partition waiting to be archived, with the offset range they span."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.first_offset: int | None = None
        self.last_offset: int | None = None
        self._tables: list[pa.Table] = []
        self._offsets: list[np.ndarray] = []
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    def add(self, events: pa.Table, offsets: Sequence[int] | np.ndarray) -> None:
        """Record applied events (`EVENT_SCHEMA`, offset order) and the offsets they were read at."""
        if events.num_rows != len(offsets):
            raise ValueError(f"{events.num_rows} events but {len(offsets)} offsets")
        if events.num_rows:
            self._tables.append(events)
            self._offsets.append(np.asarray(offsets, dtype=np.int64))
            self._rows += events.num_rows
            self.cover(int(self._offsets[-1][0]), int(self._offsets[-1][-1]))

    def cover(self, first: int, last: int) -> None:
        """Record that offsets ``first`` to ``last`` were consumed (some without an event to archive)."""
        if self.first_offset is None or first < self.first_offset:
            self.first_offset = first
        if self.last_offset is None or last > self.last_offset:
            self.last_offset = last

    def table(self) -> pa.Table:
        """The events in `ARCHIVE_SCHEMA`, in offset order."""
        events = pa.concat_tables([EVENT_SCHEMA.empty_table(), *self._tables])
        offsets = np.concatenate([np.zeros(0, dtype=np.int64), *self._offsets])
        return events.append_column(ARCHIVE_SCHEMA.field("partition"), pa.array(
            np.full(len(offsets), self.partition, dtype=np.int32))).append_column(
            ARCHIVE_SCHEMA.field("offset"), pa.array(offsets))


class EventArchive:
    """Writes and trims the archive under ``root`` (see the module docstring).

    Parameters
    ----------
    root
        The archive directory of one topic (`archive_dir`).
    durable
        fsync each file and its directory entry before `write` returns.
    """

    def __init__(self, root: str | Path, *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable

    def write(self, segment: ArchiveSegment) -> list[Path]:
        """Write the segment's events (one file per event date); return the files written."""
        if segment.first_offset is None or not len(segment):
            return []
        table = segment.table()
        name = f"{segment.first_offset:020d}-{segment.last_offset:020d}.parquet"
        days = pc.divide(pc.cast(table.column("timestamp"), pa.int64()), _DAY_MS).to_numpy()
        written = []
        for day in sorted(set(days.tolist())):
            part = table if days[0] == days[-1] == day else table.filter(pa.array(days == day))
            path = self._partition_dir(_day_text(day), segment.partition) / name
            atomic_write(path, lambda f, part=part: pq.write_table(part, f), durable=self.durable)
            written.append(path)
        return written

    def truncate(self, partition: int, offset: int) -> int:
        """Remove what ``partition`` holds at offsets ``>= offset``; return the events removed."""
        removed = 0
        for path in self.root.glob(f"date=*/partition={partition}/*"):
            if path.name.startswith(TMP_PREFIX):  # a crashed writer's leftover
                path.unlink(missing_ok=True)
                continue
            match = _NAME.match(path.name)
            if match is None:
                continue
            first, last = int(match[1]), int(match[2])
            if first >= offset:
                removed += pq.ParquetFile(path).metadata.num_rows
                path.unlink()
            elif last >= offset:
                removed += self._cut(path, first, offset)
        if removed:
            logger.info("archive %s partition %d: removed %d events at offsets >= %d (they are re-read)",
                        self.root, partition, removed, offset)
        return removed

    def retire(self, partition: int) -> int:
        """Rename the partition's current files out of the way of a new topic incarnation's
        offsets (see the module docstring); return how many were renamed."""
        files = [path for path in self.root.glob(f"date=*/partition={partition}/*") if _NAME.match(path.name)]
        if not files:
            return 0
        retired = [int(m[1]) for path in self.root.glob(f"date=*/partition={partition}/r*")
                   if (m := _RETIRED.match(path.name))]
        tag = f"r{max(retired, default=0) + 1:06d}-"
        for path in files:
            path.rename(path.with_name(tag + path.name))
        logger.info("archive %s partition %d: %d files retired as %s* (the topic's offsets started over)",
                    self.root, partition, len(files), tag)
        return len(files)

    def _cut(self, path: Path, first: int, offset: int) -> int:
        """Keep only the rows of ``path`` below ``offset``, under the name of the shorter range."""
        table = pq.read_table(path)
        kept = table.filter(pc.less(table.column("offset"), offset))
        target = path.with_name(f"{first:020d}-{offset - 1:020d}.parquet")
        atomic_write(target, lambda f: pq.write_table(kept, f), durable=self.durable)
        path.unlink()
        return table.num_rows - kept.num_rows

    def _partition_dir(self, day: str, partition: int) -> Path:
        return self.root / f"date={day}" / f"partition={partition}"


class ArchiveWriter:
    """Writes segments on a background thread, so encoding and fsync do not hold up learning.

    One write is in flight at a time: `submit` segments with the offsets they complete, then
    collect those offsets with `ready` (without waiting) or `wait` once the files are durable;
    a failed write raises there.

    >>> import tempfile
    >>> writer = ArchiveWriter(EventArchive(tempfile.mkdtemp()))
    >>> writer.submit([ArchiveSegment(0)], {0: 5})
    >>> writer.busy, writer.wait(), writer.busy, writer.wait()
    (True, {0: 5}, False, None)
    >>> writer.close()
    """

    def __init__(self, archive: EventArchive) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.archive = archive
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive-writer")
        self._future = None
        self._offsets: dict[int, int] | None = None

    @property
    def busy(self) -> bool:
        """Whether a submitted write has not been collected yet."""
        return self._future is not None

    def submit(self, segments: list[ArchiveSegment], offsets: dict[int, int]) -> None:
        """Start writing ``segments``; ``offsets`` come back from `ready`/`wait` once durable."""
        if self.busy:
            raise RuntimeError("a write is still in flight: collect it with wait() first")
        self._future = self._executor.submit(lambda: [self.archive.write(s) for s in segments])
        self._offsets = offsets

    def ready(self) -> dict[int, int] | None:
        """The offsets of a finished write (raising its error), or None if none has finished."""
        if self._future is None or not self._future.done():
            return None
        return self.wait()

    def wait(self) -> dict[int, int] | None:
        """Block until the write in flight is durable; its offsets, or None if there was none."""
        if self._future is None:
            return None
        future, offsets, self._future, self._offsets = self._future, self._offsets, None, None
        future.result()
        return offsets

    def close(self) -> None:
        """Finish the write in flight (its errors are dropped: nothing will commit it) and stop."""
        self._executor.shutdown(wait=True)
        self._future = self._offsets = None


def _day_text(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, timezone.utc).date().isoformat()


def iter_archive(root: str | Path, since: datetime | date | None = None) -> Iterator[pa.Table]:
    """The archived events, one table per file in `EVENT_SCHEMA`, never all at once.

    Files come by date, then partition, then offset; within a file events are in offset
    order (which is each user's order). ``since`` keeps events at or after that time (a date
    means its midnight UTC; a naive datetime is refused). A missing archive yields nothing.

    >>> list(iter_archive("/nonexistent"))
    []
    """
    since_ms, since_day = _since(since)
    for path in _archive_files(Path(root), since_day):
        table = pq.read_table(path).select(EVENT_SCHEMA.names)
        if since_ms is not None:
            table = table.filter(pc.greater_equal(pc.cast(table.column("timestamp"), pa.int64()), since_ms))
        if table.num_rows:
            yield table


def archived_count(root: str | Path) -> int:
    """How many events the archive's finished files hold (from Parquet footers; a file still
    being written is not counted).

    >>> archived_count("/nonexistent")
    0
    """
    return sum(pq.ParquetFile(path).metadata.num_rows for path in _archive_files(Path(root), ""))


def _archive_files(root: Path, since_day: str) -> Iterator[Path]:
    """The archive's finished files by date, then partition, then offset (never a temporary)."""
    dates = sorted(p for p in root.glob("date=*") if p.is_dir() and p.name[5:] >= since_day)
    for day_dir in dates:
        partitions = sorted(day_dir.glob("partition=*"), key=lambda p: int(p.name.split("=", 1)[1]))
        for partition_dir in partitions:
            yield from sorted((p for p in partition_dir.iterdir() if _file_order(p.name) is not None),
                              key=lambda p: _file_order(p.name))


def _file_order(name: str) -> tuple[int, int] | None:
    """Where a file's events come in its partition: retired incarnations first, oldest first,
    then by first offset (None: not an archive file).

    >>> _file_order("r000002-" + "0" * 19 + "5-" + "0" * 18 + "10.parquet"), _file_order("x.tmp")
    ((2, 5), None)
    """
    if (current := _NAME.match(name)) is not None:
        return (1 << 62, int(current[1]))
    if (retired := _RETIRED.match(name)) is not None:
        return (int(retired[1]), int(retired[2]))
    return None


def _since(since: datetime | date | None) -> tuple[int | None, str]:
    if since is None:
        return None, ""
    if not isinstance(since, datetime):
        since = datetime(since.year, since.month, since.day, tzinfo=timezone.utc)
    if since.tzinfo is None:
        raise ConfigError("since", since, "a date, or a datetime with a time zone (e.g. UTC)")
    since = since.astimezone(timezone.utc)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (since - epoch) // timedelta(milliseconds=1), since.date().isoformat()
