"""What a worker holds per partition, and how it is snapshotted, restored and handed over.

For each partition it holds, the worker keeps a `Holding`: the next offset to read (every
event before it is in the model), the users seen on the partition, the dedup window, the
users' rate-limit buckets (`streaming.ratelimit`), and the events applied since the last
archive write. `Holdings` saves all of it with the model in
`streaming.snapshots` files and decides, when the group assigns partitions, which state to use:

- A partition the worker still holds (same process, or restored from its own worker
  snapshot) keeps its in-memory state, unless the partition snapshot is further ahead: then
  another worker advanced it meanwhile, and its snapshot replaces the users' state.
- A newly assigned partition gets its users from its partition snapshot
  (`streaming.state.PartitionedState.import_users`), its dedup window and its offset.
- A partition with no snapshot starts at the group's committed offset (or the beginning).
- A held or snapshot position recorded for another incarnation of the topic (its broker id
  differs from the topic's id now: the topic was created again, or a broker on memory storage
  restarted) is not used: its offsets would skip the new log's first events. The users' state
  is kept, the partition starts like one with no snapshot (committed offset, or the log start),
  and the archive's files of the old incarnation are retired (`reset`). The worker does the
  same for a position found past the log's end (`streaming.worker`).
- A partition no longer assigned is released: its users are forgotten
  (``forget_users``), so the model keeps only users of partitions this worker owns.

Every restored partition also has the archive trimmed at its resume offset
(`streaming.archive.EventArchive.truncate`), since everything after it is read again.

Models without `PartitionedState` keep working: their whole state is in the worker snapshot
and restored on restart, but users do not move between workers (a warning says so once).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fastslow.errors import ConfigError
from infra.faults import point as fault_point
from streaming.archive import ArchiveSegment, EventArchive
from streaming.dedup import DedupWindow
from streaming.ratelimit import UserBuckets
from streaming.snapshots import PartitionSnapshot, SnapshotError, SnapshotStore, WorkerSnapshot
from streaming.state import supports_partitioned_state

logger = logging.getLogger(__name__)


class Holding:
    """One partition's state in a worker."""

    __slots__ = ("partition", "position", "users", "dedup", "limits", "segment", "topic_id")

    def __init__(self, partition: int, position: int | None, users: Iterable[str] = (),
                 dedup: DedupWindow | None = None, dedup_window: int = 100_000,
                 limits: UserBuckets | None = None, topic_id: str | None = None) -> None:
        self.partition = partition
        self.position = position
        self.topic_id = topic_id
        """The topic incarnation `position` counts in (None: not known)."""
        self.users: set[str] = set(users)
        self.dedup = dedup if dedup is not None else DedupWindow(dedup_window)
        self.limits = limits if limits is not None else UserBuckets()
        self.segment = ArchiveSegment(partition)

    def take_segment(self) -> ArchiveSegment:
        """The events waiting for the archive; a fresh segment takes their place."""
        segment, self.segment = self.segment, ArchiveSegment(self.partition)
        return segment


class Holdings:
    """The partitions a worker holds state for (see the module docstring).

    Parameters
    ----------
    store, archive
        Where snapshots and archived events live.
    topic, group_id, worker_id
        Identify the snapshots.
    dedup_window
        Event ids remembered per partition.
    """

    def __init__(self, store: SnapshotStore, archive: EventArchive, *, topic: str, group_id: str,
                 worker_id: str, dedup_window: int) -> None:
        self.store, self.archive = store, archive
        self.topic, self.group_id, self.worker_id = topic, group_id, worker_id
        self.dedup_window = dedup_window
        self.held: dict[int, Holding] = {}
        self._written: dict[int, int] = {}  # partition -> offset of the partition file we last wrote
        self._warned = False
        self.topic_id: str | None = None
        """The topic's incarnation as of the last `assign` (None: the broker did not say)."""
        self.resets = 0
        """Positions given up because they belong to another incarnation or lie past the log end."""

    def restore_worker(self, model: object) -> object:
        """The model from this worker's snapshot (holding its partitions), or ``model`` itself."""
        snapshot = self.store.read_worker(self.worker_id)
        if snapshot is None:
            return model
        if type(snapshot.model) is not type(model):
            raise SnapshotError(self.store.worker_path(self.worker_id),
                                f"holds a {type(snapshot.model).__name__} model, the worker was given "
                                f"a {type(model).__name__}")
        for p, offset in snapshot.offsets.items():
            self.held[p] = Holding(p, offset, snapshot.users.get(p, ()),
                                   DedupWindow(self.dedup_window, snapshot.dedup.get(p, ())),
                                   limits=UserBuckets(snapshot.limits.get(p)), topic_id=snapshot.topic_id)
        logger.info("restored worker snapshot of %s: partitions %s at offsets %s", self.worker_id,
                    sorted(snapshot.offsets), [snapshot.offsets[p] for p in sorted(snapshot.offsets)])
        return snapshot.model

    def snapshot(self, model: object) -> None:
        """Write the worker snapshot, then one file per held partition (positions must be known)."""
        held = {p: h for p, h in self.held.items() if h.position is not None}
        self.store.write_worker(WorkerSnapshot(
            self.topic, self.group_id, self.worker_id, model,
            offsets={p: h.position for p, h in held.items()},
            users={p: sorted(h.users) for p, h in held.items()},
            dedup={p: h.dedup.ids() for p, h in held.items()},
            limits={p: h.limits.state() for p, h in held.items()}, topic_id=self.topic_id))
        fault_point("snapshot")
        partitioned = supports_partitioned_state(model)
        for p, h in held.items():
            if self._written.get(p) == h.position:  # unchanged since our last file for it
                continue
            state = model.export_users(sorted(h.users)) if partitioned else None
            self.store.write_partition(PartitionSnapshot(self.topic, p, h.position, self.worker_id,
                                                         sorted(h.users), h.dedup.ids(), state,
                                                         limits=h.limits.state(), topic_id=h.topic_id))
            self._written[p] = h.position

    def forget_users(self, user_ids: Iterable[str]) -> None:
        """Drop these users' ids from the partitions holding them (a deletion); the next
        `snapshot` rewrites those partitions' files even if their offsets did not move."""
        gone = set(user_ids)
        for p, holding in self.held.items():
            if holding.users & gone:
                holding.users -= gone
                self._written.pop(p, None)

    def assign(self, partitions: Iterable[int], model: object, topic_id: str | None = None) -> dict[int, int | None]:
        """Take up ``partitions`` (releasing the others); return the offset to resume each at.

        None means no usable position exists for the partition: the caller resumes it at the
        group's committed offset and reports that offset with `start_at`. ``topic_id`` is the
        broker's id of the topic now; positions recorded under another one are `reset`.
        """
        partitions = set(partitions)
        self.topic_id = topic_id
        self.release([p for p in self.held if p not in partitions], model)
        resume = {}
        for p in sorted(partitions):
            snapshot = self.store.read_partition(p)
            mine = self.held.get(p)
            if mine is not None and mine.position is not None and (snapshot is None or snapshot.offset <= mine.position):
                logger.info("partition %d: resuming held state at offset %d", p, mine.position)
            elif snapshot is not None:
                self._adopt(snapshot, model)
            else:
                self.held[p] = Holding(p, None, dedup_window=self.dedup_window, topic_id=topic_id)
            held = self.held[p]
            if held.position and None not in (held.topic_id, topic_id) and held.topic_id != topic_id:
                # (a position of 0 skips nothing in any incarnation: it just takes the new id)
                self.reset(p, f"it belongs to topic incarnation {held.topic_id}, the broker's "
                              f"{self.topic!r} is now {topic_id} (created again, or a broker on memory "
                              "storage restarted)")
            held.topic_id = topic_id if topic_id is not None else held.topic_id
            resume[p] = held.position
            if resume[p] is not None:
                self.archive.truncate(p, resume[p])
        return resume

    def reset(self, partition: int, why: str, log_start: int | None = None, log_end: int | None = None) -> None:
        """Give up the held position of ``partition`` (see the module docstring): keep its
        users' state, retire the archive's files, and leave the position to the caller (None)."""
        held = self.held[partition]
        bounds = "" if log_start is None else f" (the log now runs from {log_start} to {log_end})"
        logger.warning("partition %d: not resuming at offset %d%s: %s. The fast state is kept; the "
                       "partition resumes at the group's committed offset or the log start instead, so "
                       "no new event is skipped", partition, held.position, bounds, why)
        held.position = None
        self._written.pop(partition, None)
        self.archive.retire(partition)
        self.resets += 1

    def start_at(self, partition: int, offset: int) -> None:
        """Record where a partition without any state starts (and trim the archive there)."""
        self.held[partition].position = offset
        self.archive.truncate(partition, offset)
        if offset:
            logger.warning("partition %d has no snapshot: starting at committed offset %d with no fast "
                           "state for the events before it", partition, offset)

    def release(self, partitions: Iterable[int], model: object) -> None:
        """Stop holding ``partitions``: forget their users (when the model can)."""
        for p in list(partitions):
            holding = self.held.pop(p, None)
            self._written.pop(p, None)
            if holding is None:
                continue
            if supports_partitioned_state(model):
                model.forget_users(sorted(holding.users))
            elif holding.users:
                self._warn_not_partitioned(model)
            logger.info("partition %d released (%d users)", p, len(holding.users))

    def _adopt(self, snapshot: PartitionSnapshot, model: object) -> None:
        """Replace whatever is held for the snapshot's partition with the snapshot's state."""
        p = snapshot.partition
        if snapshot.topic != self.topic:
            raise ConfigError("topic", self.topic, f"the topic of snapshot {self.store.partition_path(p)} "
                                                   f"({snapshot.topic!r})")
        self.release([p], model)
        if snapshot.state is not None and supports_partitioned_state(model):
            model.import_users(snapshot.state)
        elif snapshot.users:
            self._warn_not_partitioned(model)
        self.held[p] = Holding(p, snapshot.offset, snapshot.users,
                               DedupWindow(self.dedup_window, snapshot.dedup), limits=UserBuckets(snapshot.limits),
                               topic_id=snapshot.topic_id)
        logger.info("partition %d: adopted snapshot of %s at offset %d (%d users)", p, snapshot.writer,
                    snapshot.offset, len(snapshot.users))

    def _warn_not_partitioned(self, model: object) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("%s does not implement streaming.state.PartitionedState: users do not move "
                           "with their partitions between workers", type(model).__name__)
