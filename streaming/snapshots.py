"""Snapshots of a worker's fast state, with the offsets they include, as atomic files.

Two kinds of file live under ``<data dir>/snapshots/<topic>/<group>/`` (`snapshot_dir`):

``worker-<worker id>.snapshot`` (`WorkerSnapshot`)
    The whole model (pickled: per-user state *and* global state), and for each partition the
    worker held: the next offset to read (every event before it is in the model), the user ids
    seen on it, its dedup window and rate-limit buckets. Restored when a worker with the same id starts again.
``partition-<p>.snapshot`` (`PartitionSnapshot`)
    One partition: its next offset, its users, its dedup window and rate-limit buckets, and the users' state from
    `streaming.state.PartitionedState.export_users` (None for models without it), plus the
    id of the worker that wrote it. Restored by whichever worker is assigned the partition.

A snapshot pass writes the worker file first, then the partition files, each atomically
(`streaming.durable.atomic_write`), so after a crash at any point a partition file is never
ahead of its writer's worker file. A partition file is never replaced by one with a smaller
offset (a worker that lost a partition without noticing cannot roll its new owner back).

Each file is a pickle of a dict with ``"format": SNAPSHOT_FORMAT`` and the dataclass fields.
They are trusted local files (pickle runs code when loaded): keep the data dir private.

>>> import tempfile
>>> store = SnapshotStore(tempfile.mkdtemp())
>>> store.write_partition(PartitionSnapshot("interactions", 0, offset=10, writer="w1",
...                                         users=["u1"], dedup=["e1"], state=None))
True
>>> store.write_partition(PartitionSnapshot("interactions", 0, offset=7, writer="w2",
...                                         users=[], dedup=[], state=None))  # older: refused
False
>>> store.read_partition(0).offset, store.read_worker("w1")
(10, None)
"""

from __future__ import annotations

import fcntl
import logging
import pickle
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fastslow.errors import ConfigError, FastslowError
from streaming.durable import atomic_write

logger = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
_WORKER_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class SnapshotError(FastslowError):
    """A snapshot file cannot be used (unreadable, another format, another model class)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"snapshot {path}: {reason} (move the snapshot directory aside to start "
                         "with empty fast state; the worker then resumes from the committed offsets)")


def snapshot_dir(data_dir: str | Path, topic: str, group_id: str) -> Path:
    """Where the snapshots of one consumer group on one topic live.

    >>> snapshot_dir("/data", "interactions", "workers").as_posix()
    '/data/snapshots/interactions/workers'
    """
    return Path(data_dir) / "snapshots" / topic / group_id


def check_worker_id(worker_id: str) -> str:
    """``worker_id`` if it is usable in a file name (letters, digits, ``._-``), else ConfigError.

    >>> check_worker_id("host-1.a")
    'host-1.a'
    """
    if not _WORKER_ID.match(worker_id):
        raise ConfigError("worker_id", worker_id, "1 to 128 letters, digits, '.', '_' or '-'")
    return worker_id


@dataclass
class PartitionSnapshot:
    """One partition's share of the fast state (see the module docstring)."""

    topic: str
    partition: int
    offset: int
    writer: str
    users: list[str]
    dedup: list[str]
    state: bytes | None
    limits: dict = field(default_factory=dict)
    """The partition's rate-limit buckets (`streaming.ratelimit.UserBuckets.state`)."""
    written_at: float = field(default_factory=time.time)
    topic_id: str | None = None
    """The broker's id of the topic incarnation ``offset`` belongs to (None: not known, or a
    snapshot written before it was recorded). A topic deleted and created again, or a broker
    on memory storage restarted, gets a new id and starts its offsets at 0 again."""


@dataclass
class WorkerSnapshot:
    """A worker's whole state: the model and, per partition held, offset, users and dedup ids."""

    topic: str
    group_id: str
    worker_id: str
    model: Any
    offsets: dict[int, int]
    users: dict[int, list[str]]
    dedup: dict[int, list[str]]
    limits: dict[int, dict] = field(default_factory=dict)
    """Per partition, its rate-limit buckets (snapshots written before they existed have none)."""
    written_at: float = field(default_factory=time.time)
    topic_id: str | None = None
    """The topic incarnation ``offsets`` belong to (see `PartitionSnapshot.topic_id`)."""


class SnapshotStore:
    """Reads and writes the snapshot files of one group on one topic under ``root``."""

    def __init__(self, root: str | Path, *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable

    def worker_path(self, worker_id: str) -> Path:
        return self.root / f"worker-{check_worker_id(worker_id)}.snapshot"

    def partition_path(self, partition: int) -> Path:
        return self.root / f"partition-{partition}.snapshot"

    def write_worker(self, snapshot: WorkerSnapshot) -> None:
        """Replace the worker's snapshot file atomically."""
        self._write(self.worker_path(snapshot.worker_id), _fields(snapshot))

    def read_worker(self, worker_id: str) -> WorkerSnapshot | None:
        """The worker's last snapshot, or None if it never wrote one."""
        data = self._read(self.worker_path(worker_id))
        return None if data is None else WorkerSnapshot(**data)

    def write_partition(self, snapshot: PartitionSnapshot) -> bool:
        """Replace the partition's file unless the file holds a later offset of the same topic
        incarnation; return if written."""
        path = self.partition_path(snapshot.partition)
        current = self.read_partition(snapshot.partition)
        if current is not None and current.offset > snapshot.offset and current.topic_id == snapshot.topic_id:
            logger.warning("not overwriting %s (offset %d, by %s) with older state (offset %d, by %s)",
                           path, current.offset, current.writer, snapshot.offset, snapshot.writer)
            return False
        self._write(path, _fields(snapshot))
        return True

    def read_partition(self, partition: int) -> PartitionSnapshot | None:
        """The partition's last snapshot, or None."""
        data = self._read(self.partition_path(partition))
        return None if data is None else PartitionSnapshot(**data)

    def lock(self, worker_id: str) -> IO[bytes]:
        """Hold an exclusive lock for ``worker_id`` until the returned file is closed.

        Two live workers with one id would overwrite each other's snapshot; the lock makes the
        second fail at start. The kernel releases it when the process dies, even by ``kill -9``.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / f"worker-{check_worker_id(worker_id)}.lock", "ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError("worker_id", worker_id,
                              f"an id no other running worker uses (one holds it under {self.root}); "
                              "pass another --worker-id") from None
        return handle

    def _write(self, path: Path, data: dict) -> None:
        payload = {"format": SNAPSHOT_FORMAT, **data}
        atomic_write(path, lambda f: pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL),
                     durable=self.durable)

    def _read(self, path: Path) -> dict | None:
        try:
            with open(path, "rb") as file:
                data = pickle.load(file)
        except FileNotFoundError:
            return None
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise SnapshotError(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise SnapshotError(path, f"has format {found!r}, this version reads {SNAPSHOT_FORMAT}")
        del data["format"]
        return data


def _fields(snapshot: WorkerSnapshot | PartitionSnapshot) -> dict:
    """The dataclass fields as a dict, without the deep copy ``dataclasses.asdict`` makes."""
    return {name: getattr(snapshot, name) for name in snapshot.__dataclass_fields__}
