"""The streaming worker: consume interactions, learn them, archive them, commit, snapshot.

A `Worker` is one member of a consumer group on the interactions topic. For every polled
batch it

1. decodes and validates every message at once (`streaming.decode.decode_batch`, the rules
   of `streaming.events`); a bad one goes to the dead-letter topic with its original key,
   value and headers plus the reason in headers (`streaming.dlq`);
2. skips an event whose ``event_id`` it applied recently (`streaming.dedup`), and sends one
   over its user's rate limit (`streaming.ratelimit`, when given) to the dead-letter topic;
3. applies the others to the model with ``learn_one`` in each partition's offset order, the
   call the prequential replay makes (`evaluation.protocol`), then calls the model's
   ``flush()`` if it has one (`models.fastslow.FastSlow` queues per-event work and applies it
   vectorised there), so the whole batch is in the model before anything is committed or
   snapshotted;
4. queues them for the event archive (`streaming.archive`).

Every ``flush_interval_s`` seconds (or ``flush_events`` records) it writes the archive
segments (on a background thread: learning goes on meanwhile), waits for the dead letters to
be acknowledged, and only once both are durable commits the offsets they complete.
Every ``snapshot_interval_s`` (or ``snapshot_events``), when partitions are revoked and on
shutdown it flushes and writes snapshots (`streaming.snapshots`, `streaming.holdings`): the
model with the offsets it includes and the dedup windows. On start and on every partition
assignment it restores them and seeks to those offsets, so after a crash (even ``kill -9``)
each event is applied exactly once to the fast state: events after the snapshot are read
again, and the archive first drops what it held beyond the snapshot. Committed offsets are
for monitoring and for partitions that have no snapshot at all; snapshots decide where state
resumes, unless their offsets belong to another incarnation of the topic (the broker's topic
id differs: `streaming.holdings`) or lie past the log's end (seen in the first fetch): then
the fast state is kept, the partition resumes at the committed offset or the log start with a
warning that gives the numbers, and `WorkerStats.offset_resets` counts it. Dead letters of the re-read range are sent again (their ``fastslow.source.*``
headers identify copies). Crash points marked with `infra.faults.point` (``apply``,
``commit``, and ``snapshot`` in `streaming.holdings`) let tests stop the process there.

Partitions and users: message keys must be user ids (`streaming.partitioning`), so each
user's state lives on the worker owning the user's partition. With a model implementing
`streaming.state.PartitionedState` the users move with their partitions on a rebalance;
global state (item statistics) stays with the worker that learnt it.

Threads: the worker runs in one thread (`run`). Other threads (an HTTP server) may read the
model while holding `Worker.lock`, which the worker holds while it changes the model. Read
`Worker.model` after `start`: it is replaced then when a snapshot is restored. The rebalance
listener runs on kafka-python's network thread: snapshots taken there block heartbeats for
as long as they take (keep them well under the 6 s session timeout).

Examples
--------
>>> import tempfile
>>> from evaluation.peers import ItemKNN
>>> from infra.broker import EmbeddedBroker
>>> from streaming.kafka import make_producer
>>> with EmbeddedBroker(port=0, partitions=2) as broker:
...     producer = make_producer(broker.bootstrap)
...     sent = [producer.send("interactions", key=user.encode(), value=value) for user, value in [
...         ("u1", b'{"user_id": "u1", "item_id": "x", "timestamp": 1714564800}'),
...         ("u1", b'{"user_id": "u1", "item_id": "y", "timestamp": 1714564801}'),
...         ("u2", b'{"user_id": "u2", "item_id": "x", "timestamp": 1714564802}'),
...         ("u2", b'{"user_id": "", "item_id": "x", "timestamp": 1714564803}')]]  # bad: to the DLQ
...     producer.close()
...     with Worker(ItemKNN(), broker.bootstrap, data_dir=tempfile.mkdtemp()) as worker:
...         worker.run(until=lambda: worker.stats.records == 4, timeout=30)
...         worker.model.recommend("u2", 1, exclude={"x"})
True
['y']
>>> worker.stats.events_applied, worker.stats.dlq
(3, 1)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from infra.faults import point as fault_point
from streaming.archive import ArchiveWriter, EventArchive, archive_dir
from streaming.decode import decode_batch, now_ms
from streaming.dlq import DeadLetterQueue
from streaming.events import MAX_FUTURE_SKEW
from streaming.holdings import Holding, Holdings
from streaming.kafka import TOPIC_DLQ, TOPIC_INTERACTIONS, FetchWait, make_consumer, make_producer
from streaming.ratelimit import RateLimit, rate_limited_error
from streaming.snapshots import SnapshotStore, check_worker_id, snapshot_dir
from streaming.worker_stats import BatchReport, WorkerStats

__all__ = ["BatchReport", "Worker", "WorkerStats"]

logger = logging.getLogger(__name__)

DEFAULT_GROUP = "fastslow-workers"
FETCH_MAX_WAIT_MS = 10
"""How long the broker may hold a fetch waiting for data: kafka-python's 500 ms default adds
~250 ms to every produce-to-learn delay on an idle stream (measured on Tansu), 10 ms ~5 ms.
Raised while the broker answers empty although data waits (`streaming.kafka.FetchWait`)."""


class Worker:
    """One consumer-group member applying interactions to ``model`` (see the module docstring).

    Parameters
    ----------
    model
        A `models.base.Recommender` (``learn_one``); implementing
        `streaming.state.PartitionedState` lets its users move with their partitions.
    bootstrap
        Kafka bootstrap servers.
    topic, dlq_topic, group_id
        Where events come from, where rejected ones go, and the consumer group.
    data_dir
        Archive (``archive/<topic>``) and snapshots (``snapshots/<topic>/<group>``) go here.
    worker_id
        Stable name of this worker: a restarted worker finds its snapshot by it. Two running
        workers may not share one (the second fails at `start`).
    max_poll_records, poll_timeout_s
        Per poll: at most this many records, waiting at most this long for them.
    flush_interval_s, flush_events
        Write the archive and commit after this much time or this many records.
    snapshot_interval_s, snapshot_events
        Snapshot after this much time or this many records.
    dedup_window
        Event ids remembered per partition for duplicate detection.
    max_future_skew
        Events time-stamped further ahead of the worker's clock are rejected.
    rate_limit
        Per-user limit (`streaming.ratelimit`); events over it go to the dead-letter topic,
        neither learned nor archived. None: no limit.
    durable
        fsync archive and snapshot files (turn off only for throwaway runs).
    on_batch
        Called after each batch is applied, with its `BatchReport` (in the worker thread).
    consumer_options
        Extra ``KafkaConsumer`` settings (`streaming.kafka.consumer_config` has the defaults).
    """

    def __init__(self, model: Any, bootstrap: str, *, topic: str = TOPIC_INTERACTIONS,
                 dlq_topic: str = TOPIC_DLQ, group_id: str = DEFAULT_GROUP,
                 data_dir: str | Path = ".fastslow", worker_id: str = "worker-0",
                 max_poll_records: int = 2000, poll_timeout_s: float = 0.1,
                 flush_interval_s: float = 2.0, flush_events: int = 100_000,
                 snapshot_interval_s: float = 60.0, snapshot_events: int = 1_000_000,
                 dedup_window: int = 100_000, max_future_skew: timedelta = MAX_FUTURE_SKEW,
                 durable: bool = True, on_batch: Callable[[BatchReport], None] | None = None,
                 consumer_options: dict[str, Any] | None = None, rate_limit: RateLimit | None = None) -> None:
        self.model = model
        self.bootstrap, self.topic, self.dlq_topic, self.group_id = bootstrap, topic, dlq_topic, group_id
        self.data_dir, self.worker_id = Path(data_dir), check_worker_id(worker_id)
        self.max_poll_records, self.poll_timeout_s = max_poll_records, poll_timeout_s
        self.flush_interval_s, self.flush_events = flush_interval_s, flush_events
        self.snapshot_interval_s, self.snapshot_events = snapshot_interval_s, snapshot_events
        self.max_future_skew, self.on_batch, self.rate_limit = max_future_skew, on_batch, rate_limit
        self.consumer_options = dict(consumer_options or {})
        self.stats = WorkerStats(worker_id=worker_id)
        self.lock = threading.RLock()
        self.archive = EventArchive(archive_dir(data_dir, topic), durable=durable)
        self.snapshots = SnapshotStore(snapshot_dir(data_dir, topic, group_id), durable=durable)
        self.holdings = Holdings(self.snapshots, self.archive, topic=topic, group_id=group_id,
                                 worker_id=worker_id, dedup_window=dedup_window)
        self._stop = threading.Event()
        self._consumer = self._producer = self._dlq = self._lockfile = self._writer = None
        self._fetch_wait: FetchWait | None = None
        self._since_flush = self._since_snapshot = 0
        self._flushed_at = self._snapshot_at = time.monotonic()
        self._committed: dict[int, int] = {}
        self._unplaced: set[int] = set()  # assigned partitions whose start offset is not known yet
        self._unverified: set[int] = set()  # resumed partitions whose position the log's end has not confirmed
        self._closing = False
        self._snapshot_due = False  # users were forgotten: snapshot at the next step

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Worker:
        """Lock the worker id, restore this worker's snapshot, connect and subscribe."""
        if self._consumer is not None:
            return self
        self._lockfile = self.snapshots.lock(self.worker_id)
        try:
            with self.lock:
                self.model = self.holdings.restore_worker(self.model)
            self._writer = ArchiveWriter(self.archive)
            self._producer = make_producer(self.bootstrap)
            self._dlq = DeadLetterQueue(self._producer, self.dlq_topic, self.worker_id)
            options = {"max_poll_records": self.max_poll_records, "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
                       **self.consumer_options}
            self._consumer = make_consumer(self.bootstrap, self.group_id, **options)
            self._consumer.subscribe([self.topic], listener=_listener(self))
            self._fetch_wait = FetchWait(self._consumer)
        except BaseException:
            self._close_clients()
            raise
        logger.info("worker %s joining group %s on %s at %s", self.worker_id, self.group_id, self.topic,
                    self.bootstrap)
        return self

    def run(self, until: Callable[[], bool] | None = None, timeout: float | None = None) -> bool:
        """Process batches until `stop` is called or ``until()`` is true; False on ``timeout`` s."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            self.step()
            if until is not None and until():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def stop(self) -> None:
        """Ask `run` to return after the current batch (safe from signal handlers and threads)."""
        self._stop.set()

    def close(self, snapshot: bool = True) -> None:
        """Flush, commit and snapshot (unless ``snapshot`` is False), then leave the group."""
        try:
            if snapshot and self._consumer is not None and self.holdings.held:
                self.snapshot()
        finally:
            self._closing = True  # consumer.close() calls the revocation listener: nothing left to do
            self._close_clients()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, kind, exc, tb) -> None:
        # After an error inside a batch the model may hold part of it: never snapshot that.
        self.close(snapshot=exc is None)

    # -- the batch loop --------------------------------------------------------------------

    def step(self) -> int:
        """Poll once, process what came, flush and snapshot when due; return records consumed."""
        batch = self._consumer.poll(timeout_ms=int(self.poll_timeout_s * 1000),
                                    max_records=self.max_poll_records)
        count = sum(len(records) for records in batch.values())
        if self._unverified:
            self._verify_positions()
        if self._unplaced:
            self._place(batch)
        if count:
            report = self._apply(batch)
            if self.on_batch is not None:
                self.on_batch(report)
        self._update_lag()
        raised = self._fetch_wait.after_poll(count, behind=any(self.stats.lag.values()))
        if raised is not None:
            self.stats.fetch_max_wait_ms = raised
            logger.warning("worker %s: the broker answered nothing although partitions are behind (lag %s); "
                           "fetch max wait raised to %d ms (the broker needs longer to read its partitions, "
                           "as Tansu's memory:// store does once they are long)", self.worker_id, self.stats.lag,
                           raised)
        self._commit_written(wait=False)
        self._since_flush += count
        self._since_snapshot += count
        now = time.monotonic()
        due = self._since_snapshot and (self._since_snapshot >= self.snapshot_events
                                        or now - self._snapshot_at >= self.snapshot_interval_s)
        if due or (self._snapshot_due and self.holdings.held):
            self.snapshot()
        elif ((self._since_flush or self._uncommitted()) and not self._writer.busy
              and (self._since_flush >= self.flush_events or now - self._flushed_at >= self.flush_interval_s)):
            self._start_flush()
        return count

    def _apply(self, batch: dict) -> BatchReport:
        """Decode the whole poll at once, then apply each partition's events in offset order."""
        started = time.perf_counter()
        parts = list(batch.items())
        records = [record for _, part in parts for record in part]
        decoded = decode_batch([record.value for record in records], now_ms(), self.max_future_skew)
        for index, error in decoded.rejected:
            self._dlq.send(records[index], error)
        columns = decoded.learn_columns()
        ends = np.cumsum([len(part) for _, part in parts])
        rows = np.searchsorted(decoded.positions, np.concatenate([[0], ends]))
        duplicates, limited, users, applied_tables = 0, 0, set(), []
        for k, (tp, part) in enumerate(parts):
            holding = self.holdings.held[tp.partition]
            first, last = int(rows[k]), int(rows[k + 1])
            kept, over = self._learn(holding, [column[first:last] for column in columns], users)
            for row in over:
                self._dlq.send(records[int(decoded.positions[first + row])],
                               rate_limited_error(columns[1][first + row], self.rate_limit))
            duplicates += (last - first) - len(kept) - len(over)
            limited += len(over)
            offsets = [records[i].offset for i in decoded.positions[first:last][kept].tolist()]
            learned = decoded.events.slice(first, last - first).take(pa.array(kept))
            holding.segment.add(learned, offsets)
            applied_tables.append(learned)
            holding.segment.cover(part[0].offset, part[-1].offset)
            holding.position = part[-1].offset + 1
            fault_point("apply")
        self._flush_model()
        applied = decoded.events.num_rows - duplicates - limited
        report = BatchReport(len(records), applied, len(decoded.rejected) + limited, duplicates, users,
                             time.perf_counter() - started, rate_limited=limited,
                             events=pa.concat_tables(applied_tables) if applied_tables else None)
        self.stats.record_batch(report, records[-1].timestamp)
        return report

    def _learn(self, holding: Holding, columns: list[list], users: set[str]) -> tuple[np.ndarray, list[int]]:
        """Apply one partition's valid events unless already applied or over the user's rate limit;
        return the rows applied and the rows rate limited."""
        learn, lock, limit = self.model.learn_one, self.lock, self.rate_limit
        seen, partition_users = holding.dedup.add, holding.users.add
        kept, limited = [], []
        for row, (event_id, user, item, stamp, event_type, value) in enumerate(zip(*columns)):
            if not seen(event_id):
                continue
            if limit is not None and not limit.allow(holding.limits, user, stamp):
                limited.append(row)
                continue
            with lock:
                learn(user, item, stamp / 1000, event_type, value)
            partition_users(user)
            users.add(user)
            kept.append(row)
        return np.array(kept, dtype=np.int64), limited

    def _flush_model(self) -> None:
        """Let a model that queues per-event work (``flush``) apply the batch now, in one go."""
        flush = getattr(self.model, "flush", None)
        if flush is not None:
            with self.lock:
                flush()

    # -- durability ------------------------------------------------------------------------

    def flush(self, *, wait: bool = True) -> None:
        """Write the archive segments, wait for dead letters, then commit the offsets.

        ``wait=False`` sends the commit without waiting for its answer (inside a rebalance
        listener, which runs on the consumer's network thread and may not block on it).
        """
        self._commit_written(wait=True, commit_wait=wait)  # a write already in flight
        self._start_flush()
        self._commit_written(wait=True, commit_wait=wait)

    def _start_flush(self) -> None:
        """Hand the archive segments to the background writer, with the offsets they complete."""
        held = self.holdings.held
        self._writer.submit([h.take_segment() for h in held.values()],
                            {p: h.position for p, h in held.items() if h.position is not None})
        self._since_flush, self._flushed_at = 0, time.monotonic()

    def _commit_written(self, *, wait: bool, commit_wait: bool = True) -> None:
        """Once the archive write is durable and the dead letters acknowledged, commit its offsets."""
        offsets = self._writer.wait() if wait else self._writer.ready()
        if offsets is None:
            return
        self._dlq.flush()
        # only partitions the group assigned us (and checked): a position restored from a snapshot
        # may belong to another incarnation of the topic until `_on_assigned` has looked
        assigned = set(self.stats.assigned)
        offsets = {p: o for p, o in offsets.items()
                   if self._committed.get(p) != o and p in self.holdings.held and p in assigned}
        if offsets:
            self._commit(offsets, commit_wait)

    def _commit(self, offsets: dict[int, int], wait: bool) -> None:
        from kafka import errors

        commit = self._consumer.commit if wait else self._consumer.commit_async
        fault_point("commit")
        try:
            commit(self._offset_metadata(offsets))
            self._committed.update(offsets)
            self.stats.commits += 1
        except (errors.CommitFailedError, errors.RebalanceInProgressError, errors.IllegalGenerationError,
                errors.UnknownMemberIdError) as exc:  # the group is moving: the next flush retries,
            logger.warning("commit of %s not accepted (%s); retried at the next flush", offsets,  # and
                           type(exc).__name__)  # snapshots, not commits, decide where state resumes

    def _uncommitted(self) -> bool:
        """Whether a position moved past what the group last accepted (e.g. a refused commit)."""
        assigned = self.stats.assigned
        return any(h.position is not None and self._committed.get(p) != h.position
                   for p, h in self.holdings.held.items() if p in assigned)

    def _offset_metadata(self, offsets: dict[int, int]) -> dict:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        return {TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}

    def snapshot(self, *, wait: bool = True) -> None:
        """Flush, then snapshot the model with the offsets and dedup windows it includes."""
        self.flush(wait=wait)
        started = time.perf_counter()
        with self.lock:
            self.holdings.snapshot(self.model)
        self.stats.snapshots += 1
        self.stats.last_snapshot_seconds = time.perf_counter() - started
        self._since_snapshot, self._snapshot_at, self._snapshot_due = 0, time.monotonic(), False

    def forget_users(self, user_ids: list[str], **options: Any) -> None:
        """Forget users for good (a deletion; safe from other threads).

        Their state goes from the model (``model.forget_users(user_ids, **options)``), their
        ids from the partitions' user lists, and the snapshot files are rewritten at the next
        step, so no file keeps what they were.
        """
        with self.lock:
            self.model.forget_users(user_ids, **options)
            self.holdings.forget_users(user_ids)
        self._snapshot_due = True

    # -- partitions ------------------------------------------------------------------------

    # The listener methods run on the consumer's network thread: no blocking consumer calls.

    def _on_assigned(self, partitions: list[int]) -> None:
        from kafka import TopicPartition

        with self.lock:
            resume = self.holdings.assign(partitions, self.model, self._topic_id())
        self.stats.offset_resets = self.holdings.resets
        self._unplaced = {p for p, offset in resume.items() if offset is None}  # placed after the poll
        self._unverified = {p for p, offset in resume.items() if offset}
        for p, offset in resume.items():
            if offset is not None:
                self._consumer.seek(TopicPartition(self.topic, p), offset)
        self._committed = {}
        self.stats.assigned = sorted(resume)
        self.stats.lag = {}
        logger.info("worker %s assigned partitions %s at offsets %s", self.worker_id, sorted(resume),
                    [resume[p] for p in sorted(resume)])

    def _on_revoked(self, partitions: list[int]) -> None:
        if partitions and self.holdings.held and not self._closing:
            self.snapshot(wait=False)
        self.stats.assigned = []

    def _on_lost(self, partitions: list[int]) -> None:
        """The group gave our partitions away already: drop what we did since the last snapshot."""
        logger.warning("worker %s lost partitions %s (session expired); their unsnapshotted work is dropped "
                       "and the next owner resumes from their snapshots", self.worker_id, partitions)
        self._writer.wait()  # land a write in flight now, before the new owner trims the archive
        with self.lock:
            self.holdings.release(partitions, self.model)
        self._unplaced -= set(partitions)
        self.stats.assigned = []

    def _place(self, batch: dict) -> None:
        """Record where the partitions without any state start (now that the consumer knows)."""
        from kafka import TopicPartition

        starts = {tp.partition: records[0].offset for tp, records in batch.items()}
        for p in sorted(self._unplaced):
            offset = starts.get(p)
            if offset is None:
                offset = self._consumer.position(TopicPartition(self.topic, p))
            self.holdings.start_at(p, offset)
        self._unplaced.clear()

    def _topic_id(self) -> str | None:
        """The broker's id of the topic's current incarnation, from the consumer's metadata
        (None when the broker or client does not provide one)."""
        cluster = getattr(getattr(self._consumer, "_client", None), "cluster", None)
        topic_id = getattr(cluster, "topic_id", None)
        found = topic_id(self.topic) if callable(topic_id) else None
        return None if found is None else str(found)

    def _verify_positions(self) -> None:
        """Partitions resumed at a snapshot's offset: once a fetch told the log's end (high
        watermark), one past the end is reset to the committed offset or the log start."""
        from kafka import TopicPartition

        for p in sorted(self._unverified):
            holding = self.holdings.held.get(p)
            tp = TopicPartition(self.topic, p)
            end = self._consumer.highwater(tp)
            if holding is None or holding.position is None:
                self._unverified.discard(p)
                continue
            if end is None:   # no fetch answered for it yet
                continue
            self._unverified.discard(p)
            if holding.position <= end:
                continue
            start = self._consumer.beginning_offsets([tp])[tp]
            committed = self._consumer.committed(tp)
            offset = committed if committed is not None and start <= committed <= end else start
            with self.lock:
                self.holdings.reset(p, "it lies past the log's end (the topic started over)", start, end)
                self.holdings.start_at(p, offset)
            self._consumer.seek(tp, offset)
            self.stats.offset_resets = self.holdings.resets
            logger.warning("partition %d resumes at offset %d (%s)", p, offset,
                           "the group's committed offset" if offset == committed else "the log start")

    def assignment(self) -> list[int]:
        """Partitions this worker owns now (empty until the group join completes)."""
        return sorted(tp.partition for tp in self._consumer.assignment()) if self._consumer else []

    def caught_up(self) -> bool:
        """Whether every assigned partition has been read up to its high watermark."""
        assigned = self.stats.assigned
        return bool(assigned) and all(self.stats.lag.get(p) == 0 for p in assigned)

    def _update_lag(self) -> None:
        from kafka import TopicPartition

        lag = {}
        for p in self.stats.assigned:
            highwater = self._consumer.highwater(TopicPartition(self.topic, p))
            holding = self.holdings.held.get(p)
            if highwater is not None and holding is not None and holding.position is not None:
                lag[p] = highwater - holding.position   # negative: a position past the log end, shown
        self.stats.lag = lag

    def _close_clients(self) -> None:
        for client in (self._consumer, self._producer, self._writer, self._lockfile):
            if client is not None:
                client.close()
        self._consumer = self._producer = self._dlq = self._lockfile = self._writer = None


def _listener(worker: Worker):
    """A ``ConsumerRebalanceListener`` that snapshots on revocation and restores on assignment."""
    from kafka import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            worker._on_revoked(sorted(tp.partition for tp in revoked if tp.topic == worker.topic))

        def on_partitions_assigned(self, assigned):
            worker._on_assigned(sorted(tp.partition for tp in assigned if tp.topic == worker.topic))

        def on_partitions_lost(self, lost):
            worker._on_lost(sorted(tp.partition for tp in lost if tp.topic == worker.topic))

    return Listener()
