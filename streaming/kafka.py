"""Kafka clients configured the way fastslow uses them, and the topics it needs.

Every component builds its clients here from one bootstrap string, so the settings that
matter (acks, batching, manual commits, short group timeouts) are decided once.

Notes on the embedded Tansu broker (see ``../shared/STACK-NOTES.md``), which also hold for
code meant to run against any Kafka:

- **Lag.** Tansu answers ListOffsets(latest) with the base offset of the last batch, not the
  high watermark, so ``KafkaConsumer.end_offsets`` (and lag computed from it) is wrong. Two
  ways that are right on Tansu and on Kafka: inside a consumer, ``consumer.highwater(tp)``
  after a poll that fetched from ``tp`` (the fetch response carries the true high watermark)
  minus ``consumer.position(tp)``; across processes, the producer's own end offsets
  (``RecordMetadata.offset + 1`` of the last acknowledged send per partition, see
  `end_offsets_of`) minus `committed_offsets`, combined with `consumer_lag`.
- **Committed offsets.** ``KafkaAdminClient.list_consumer_group_offsets`` fails to decode
  Tansu's answer; `committed_offsets` uses ``KafkaConsumer.committed`` which works.
- **Groups.** Tansu holds a JoinGroup for about ``session_timeout_ms / 2``, hence the short
  session timeout below (a join takes ~3 s instead of ~23 s with the 45 s default).
- **Offset reset.** ``auto_offset_reset='latest'`` can re-deliver recent records on Tansu (it
  resets to the last batch's base offset); consumption must be idempotent anyway.
- **Compaction.** The fast-state topic is created with ``cleanup.policy=compact``; Tansu keeps
  every record regardless, so readers must take the last value per key themselves.

Examples
--------
>>> [spec.name for spec in default_topics(partitions=4)]
['interactions', 'interactions.dlq', 'interactions.fast-state']
>>> producer_config("127.0.0.1:9092")["acks"]
'all'
>>> consumer_config("127.0.0.1:9092", "workers", max_poll_records=500)["max_poll_records"]
500
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastslow.errors import ServiceError

if TYPE_CHECKING:  # kafka is imported inside the functions: this module stays import-light
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient

logger = logging.getLogger(__name__)

TOPIC_INTERACTIONS = "interactions"
"""User interactions, keyed by user id (so one user's events stay in order on one partition)."""
TOPIC_DLQ = "interactions.dlq"
"""Messages the worker could not use: original bytes, with the reason in the headers."""
TOPIC_FAST_STATE = "interactions.fast-state"
"""Compacted changelog of fast-state snapshots, co-partitioned with `TOPIC_INTERACTIONS`."""

DEFAULT_PARTITIONS = 4

PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all", "linger_ms": 5, "batch_size": 64 * 1024,
}
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False, "auto_offset_reset": "earliest", "max_poll_records": 2000,
    "session_timeout_ms": 6000, "heartbeat_interval_ms": 2000,
}


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: name, partition count and topic configs (all as strings)."""

    name: str
    partitions: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


def default_topics(partitions: int = DEFAULT_PARTITIONS) -> list[TopicSpec]:
    """The topics fastslow needs: interactions and its changelog with ``partitions`` each, DLQ.

    >>> default_topics(8)[2]
    TopicSpec(name='interactions.fast-state', partitions=8, config={'cleanup.policy': 'compact'})
    """
    return [TopicSpec(TOPIC_INTERACTIONS, partitions),
            TopicSpec(TOPIC_DLQ, 1),
            TopicSpec(TOPIC_FAST_STATE, partitions, {"cleanup.policy": "compact"})]


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``KafkaProducer``: bytes in, acks=all, 5 ms linger, 64 KiB batches.

    >>> producer_config("h:1", linger_ms=0)["linger_ms"], producer_config("h:1")["batch_size"]
    (0, 65536)
    """
    return {"bootstrap_servers": bootstrap, **PRODUCER_DEFAULTS, **overrides}


def consumer_config(bootstrap: str, group_id: str | None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``KafkaConsumer``: manual commits, earliest, short group timeouts.

    >>> cfg = consumer_config("h:1", "g")
    >>> cfg["enable_auto_commit"], cfg["session_timeout_ms"], cfg["heartbeat_interval_ms"]
    (False, 6000, 2000)
    """
    return {"bootstrap_servers": bootstrap, "group_id": group_id, **CONSUMER_DEFAULTS,
            **overrides}


def make_producer(bootstrap: str, **overrides: Any) -> KafkaProducer:
    """A ``KafkaProducer`` sending ``bytes`` keys and values (see `producer_config`)."""
    from kafka import KafkaProducer

    return KafkaProducer(**producer_config(bootstrap, **overrides))


def make_consumer(bootstrap: str, group_id: str | None, topics: Sequence[str] = (),
                  **overrides: Any) -> KafkaConsumer:
    """A ``KafkaConsumer`` (see `consumer_config`), subscribed to ``topics`` if any are given.

    With no topics the caller assigns partitions itself (``consumer.assign``). Keys and values
    arrive as ``bytes``. The group is joined on the first ``poll`` (~3 s on Tansu).
    """
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**consumer_config(bootstrap, group_id, **overrides))
    if topics:
        consumer.subscribe(list(topics))
    return consumer


def make_admin(bootstrap: str, **overrides: Any) -> KafkaAdminClient:
    """A ``KafkaAdminClient`` for ``bootstrap``."""
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap, **overrides)


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec],
                  admin: KafkaAdminClient | None = None) -> list[str]:
    """Create the topics in ``specs`` that do not exist yet; return the names created.

    Idempotent: existing topics are left as they are (a partition count different from the
    spec is logged as a warning, since Kafka cannot shrink a topic). Pass ``admin`` to reuse a
    client; otherwise one is made and closed here.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    specs = list(specs)
    own = admin is None
    admin = make_admin(bootstrap) if admin is None else admin
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        for spec in missing:  # one by one: a concurrent creator makes only its own fail
            try:
                admin.create_topics([NewTopic(spec.name, spec.partitions, 1,
                                              topic_configs=dict(spec.config))])
            except TopicAlreadyExistsError:
                existing.add(spec.name)
        _warn_partition_mismatch(admin, [s for s in specs if s.name in existing])
    finally:
        if own:
            admin.close()
    created = [s.name for s in specs if s.name not in existing]
    if created:
        logger.info("created topics %s on %s", created, bootstrap)
    return created


def _warn_partition_mismatch(admin: KafkaAdminClient, specs: list[TopicSpec]) -> None:
    if not specs:
        return
    counts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([s.name for s in specs])}
    for spec in specs:
        if counts.get(spec.name, spec.partitions) != spec.partitions:
            logger.warning("topic %s exists with %d partitions, not %d; keeping it as it is",
                           spec.name, counts[spec.name], spec.partitions)


def topic_partitions(bootstrap: str, topic: str, timeout: float = 10.0) -> list[int]:
    """Sorted partition ids of ``topic``, waiting up to ``timeout`` s for its metadata."""
    consumer = make_consumer(bootstrap, None)
    try:
        deadline = time.monotonic() + timeout
        while (parts := consumer.partitions_for_topic(topic)) is None:
            if time.monotonic() >= deadline:
                raise ServiceError("kafka", f"topic {topic!r} not found on {bootstrap}",
                                   "create it first (fastslow broker creates the defaults)")
            time.sleep(0.1)
            consumer.topics()  # refresh metadata
        return sorted(parts)
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group_id: str, topic: str,
                      partitions: Iterable[int] | None = None) -> dict[int, int | None]:
    """The offsets ``group_id`` committed on ``topic``, per partition (None: nothing committed).

    Uses ``KafkaConsumer.committed`` without joining the group, so it does not disturb the
    group's members (and works on Tansu, unlike the admin client's group-offsets call).
    """
    from kafka import TopicPartition

    parts = list(partitions) if partitions is not None else topic_partitions(bootstrap, topic)
    consumer = make_consumer(bootstrap, group_id)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in parts}
    finally:
        consumer.close()


def end_offsets_of(metadata: Iterable[Any]) -> dict[int, int]:
    """End offset per partition from acknowledged sends (``RecordMetadata`` of ``future.get()``).

    >>> from types import SimpleNamespace as M
    >>> end_offsets_of([M(partition=0, offset=4), M(partition=1, offset=0), M(partition=0, offset=2)])
    {0: 5, 1: 1}
    """
    ends: dict[int, int] = {}
    for meta in metadata:
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    return ends


def consumer_lag(end_offsets: Mapping[int, int],
                 committed: Mapping[int, int | None]) -> dict[int, int]:
    """Records not yet committed, per partition: end offset minus committed (0 if none).

    >>> consumer_lag({0: 10, 1: 5, 2: 3}, {0: 7, 1: None})
    {0: 3, 1: 5, 2: 3}
    """
    return {p: max(0, end - (committed.get(p) or 0)) for p, end in end_offsets.items()}


class FetchWait:
    """A consumer's fetch max wait, raised while the broker answers empty although data waits.

    The worker asks the broker to hold a fetch at most a few milliseconds, so that an idle
    stream is learnt within milliseconds of a produce. Tansu 0.6.0 (``memory://``) lists every
    stored batch of a partition on each fetch and answers *empty* when that takes longer than
    the fetch's max wait. Measured here (4 partitions of 600k events in 25-event batches):
    at 10 ms every fetch returned 0 records, at any offset and for as long as we asked; at
    500 ms each returned 34k records in about 0.1 s. So a worker with a short wait stops
    receiving anything once the partitions are that long, with no error anywhere.

    `after_poll` is told after each poll how many records came and whether an assigned
    partition is behind its high watermark. After `patience` empty polls in a row while
    behind, the wait doubles, up to `maximum_ms`, and stays there: the broker's reading cost
    grows with its log. A broker that answers as soon as data is there (Kafka does, since
    ``fetch_min_bytes`` is 1) never triggers it, and there the wait costs nothing anyway.

    kafka-python reads the wait from its fetcher's config each time it builds a request; that
    is where it is set (checked by ``tests/test_kafka_fetch_wait.py`` against a real broker).

    >>> class Fetcher: config = {"fetch_max_wait_ms": 10}
    >>> class Consumer: _fetcher = Fetcher()
    >>> wait = FetchWait(Consumer(), patience=2, maximum_ms=30)
    >>> [wait.after_poll(0, behind=True) for _ in range(6)], Fetcher.config["fetch_max_wait_ms"]
    ([None, 20, None, 30, None, None], 30)
    >>> wait.after_poll(0, behind=False), wait.after_poll(5, behind=True), wait.wait_ms
    (None, None, 30)
    """

    def __init__(self, consumer: Any, *, patience: int = 3, maximum_ms: int = 2000) -> None:
        self._config = consumer._fetcher.config
        self.wait_ms = int(self._config["fetch_max_wait_ms"])
        self.patience, self.maximum_ms = patience, maximum_ms
        self._empty_behind = 0

    def after_poll(self, records: int, *, behind: bool) -> int | None:
        """Count an empty poll while behind; return the new wait when it was raised, else None."""
        if records or not behind:
            self._empty_behind = 0
            return None
        self._empty_behind += 1
        if self._empty_behind < self.patience or self.wait_ms >= self.maximum_ms:
            return None
        self._empty_behind = 0
        self.wait_ms = min(2 * self.wait_ms, self.maximum_ms)
        self._config["fetch_max_wait_ms"] = self.wait_ms
        return self.wait_ms
