"""What is popular right now across the *whole* interactions topic: `TopicPopularity`.

A worker learns only the partitions the consumer group gives it, so the item counts in its
model cover those partitions' users. "Trending now" (the cold-start list's main ingredient,
and the popularity signal every request's gate reads) must not depend on which partitions a
process happens to own: two `fastslow serve` processes would show an unknown user different
lists, and a process owning few partitions would call niche items trending.

`TopicPopularity` reads every partition of the topic with its own consumer (no consumer
group: it never takes part in the assignment, so it needs no routing and changes nothing for
the workers) and keeps recency-weighted counts per item with the fast path's own definition
(`models.stream_stats.StreamStats`: each event weighs ``0.5 ** (age / half_life)``, age
measured from the newest event time seen on the topic). On start it reads back at most
``backlog`` records per partition, so "right now" is warm at once without reading a long log
from its beginning. Duplicate deliveries (same ``event_id``) count once; invalid messages not
at all (the rules of `streaming.decode`).

A `models.fastslow.FastSlow` reads it through its ``popularity`` attribute (`item_scores`,
`top`); the source answers from its own lock, so requests never wait on the consumer.

Examples
--------
>>> source = TopicPopularity("127.0.0.1:1", half_life=10.0)   # not started: counted by hand
>>> source.count(["a", "b", "a"], [0.0, 0.0, 10.0])
>>> [(item, round(score, 3)) for item, score in source.top(2)]
[('a', 1.5), ('b', 0.5)]
>>> source.item_scores(["b", "nothing"]).round(3).tolist()
[0.5, 0.0]
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np

from models.stream_stats import StreamStats
from streaming.decode import decode_batch, now_ms
from streaming.dedup import DedupWindow
from streaming.kafka import TOPIC_INTERACTIONS

logger = logging.getLogger(__name__)

DEFAULT_BACKLOG = 100_000
"""Records per partition read back at start (the last ones)."""


class TopicPopularity:
    """Recency-weighted item counts over every partition of ``topic`` (see the module docstring).

    Parameters
    ----------
    bootstrap, topic
        Where the interactions are.
    half_life
        Seconds of event time after which an event counts half (the fast path's
        ``popularity_half_life``).
    backlog
        Records per partition read back at start.
    poll_timeout_s
        How long one poll waits for records.
    """

    def __init__(self, bootstrap: str, topic: str = TOPIC_INTERACTIONS, *, half_life: float = 86400.0,
                 backlog: int = DEFAULT_BACKLOG, poll_timeout_s: float = 0.2) -> None:
        self.bootstrap, self.topic, self.half_life = bootstrap, topic, half_life
        self.backlog, self.poll_timeout_s = backlog, poll_timeout_s
        self.events = 0
        """Events counted so far."""
        self.error: BaseException | None = None
        """What stopped the reading thread, if anything did."""
        self._stats = StreamStats(popularity_half_life=half_life)   # only its counts are used
        self._dedup = DedupWindow(backlog)
        self._clock = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._top: tuple[int, list[tuple[str, float]]] | None = None   # (events when computed, ranking)

    # -- reading the topic ------------------------------------------------------------------

    def start(self) -> TopicPopularity:
        """Start reading every partition on a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="topic-popularity", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reading (joins the thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> TopicPopularity:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        from streaming.kafka import make_consumer

        consumer = None
        try:
            consumer = make_consumer(self.bootstrap, None)
            assigned: set[int] = set()
            while not self._stop.is_set():
                assigned = self._follow_partitions(consumer, assigned)
                batch = consumer.poll(timeout_ms=int(self.poll_timeout_s * 1000), max_records=5000)
                values = [record.value for records in batch.values() for record in records]
                if values:
                    self._count_values(values)
        except BaseException as exc:  # noqa: BLE001 - recorded and logged; serving goes on with what was counted
            self.error = exc
            logger.exception("popularity reader of %s stopped; trending lists keep the counts so far", self.topic)
        finally:
            if consumer is not None:
                consumer.close()

    def _follow_partitions(self, consumer, assigned: set[int]) -> set[int]:
        """Assign every partition of the topic (again when partitions were added), each placed
        `backlog` records before its end."""
        from kafka import TopicPartition

        partitions = consumer.partitions_for_topic(self.topic) or set()
        if partitions <= assigned:
            return assigned
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        positions = {tp: consumer.position(tp) for tp in consumer.assignment()}
        consumer.assign(tps)
        new = [tp for tp in tps if tp.partition not in assigned]
        starts, ends = consumer.beginning_offsets(new), consumer.end_offsets(new)
        for tp in tps:
            if tp in positions:
                consumer.seek(tp, positions[tp])
            else:   # end offsets may fall short of the log end (Tansu): a little more is read, never less
                consumer.seek(tp, max(starts[tp], ends[tp] - self.backlog))
        logger.info("popularity reader follows %d partitions of %s", len(partitions), self.topic)
        return set(partitions)

    def _count_values(self, values: list[bytes]) -> None:
        decoded = decode_batch(values, now_ms())
        ids, _, items, stamps, _, _ = decoded.learn_columns()
        fresh = [n for n, event_id in enumerate(ids) if self._dedup.add(event_id)]
        if fresh:
            self.count([items[n] for n in fresh], [stamps[n] / 1000 for n in fresh])

    # -- counting and answering -----------------------------------------------------------

    def count(self, items: Sequence[str], timestamps: Sequence[float]) -> None:
        """Count events of ``items`` at ``timestamps`` (unix seconds)."""
        with self._lock:
            rows = np.fromiter((self._stats.register(item) for item in items), dtype=np.int64, count=len(items))
            times = np.asarray(timestamps, dtype=np.float64)
            self._stats.count(rows, times)
            self._clock = max(self._clock, float(times.max()))
            self.events += len(rows)

    @property
    def clock(self) -> float:
        """The newest event time counted (unix seconds): "now" for the popularity."""
        return self._clock

    def item_scores(self, item_ids: Sequence[str]) -> np.ndarray:
        """Each item's recency-weighted count as of `clock` (0 for items never seen)."""
        with self._lock:
            rows = self._stats.items.lookup(item_ids)
            scores = np.zeros(len(rows))
            known = rows >= 0
            if known.any():
                scores[known] = self._stats.recent_popularity(self._clock, rows[known])
            return scores

    def top(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` most popular items right now with their scores, best first (ties: first seen).

        Recomputed when events were counted since the last call."""
        with self._lock:
            if self._top is None or self._top[0] != self.events or len(self._top[1]) < n:
                scores = self._stats.recent_popularity(self._clock)
                order = np.argsort(-scores, kind="stable")[: max(n, 1)]
                order = order[scores[order] > 0]
                self._top = (self.events, list(zip(self._stats.items.ids_of(order), scores[order].tolist())))
            return self._top[1][:n]
