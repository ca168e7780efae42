"""Replay an event log into a Kafka topic, keyed by user, at a chosen rate.

`produce_events` sends normalized event tables (`streaming.readers.iter_event_batches`) one
message per event: key = the user id (`streaming.partitioning.user_key`, so each user's events
stay in order on one partition), value = the event as JSON the worker decodes to the same
event (`event_values`), ``event_id`` included so re-sending the log is deduplicated. A
`TokenBucket` holds the rate; ``rate=0`` sends as fast as the client can.

`fastslow produce` (`streaming.cli`) wraps it with a progress bar and a JSON summary.

>>> import pyarrow as pa
>>> from datetime import datetime, timezone
>>> table = pa.table({"event_id": ["e1"], "user_id": ["u1"], "item_id": ["i9"],
...     "timestamp": pa.array([datetime(2024, 5, 1, 12, tzinfo=timezone.utc)], pa.timestamp("ms", "UTC")),
...     "event_type": ["view"], "value": [1.0], "context": ['{"device":"ios"}']})
>>> event_values(table)
[b'{"event_id":"e1","user_id":"u1","item_id":"i9","timestamp":1714564800000,"event_type":"view","value":1.0,"context":{"device":"ios"}}']
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from fastslow.errors import ConfigError, ServiceError
from streaming.event_rules import MS_THRESHOLD
from streaming.partitioning import user_key

if TYPE_CHECKING:
    from kafka import KafkaProducer

logger = logging.getLogger(__name__)

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class TokenBucket:
    """Allow ``rate`` units per second on average, in bursts of at most ``burst`` units.

    `take` sleeps as long as needed to stay within the rate; ``rate <= 0`` never sleeps.

    >>> clock = [0.0]
    >>> bucket = TokenBucket(100, burst=10, clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    >>> bucket.take(10), bucket.take(50)   # the burst is free; 50 more need 0.5 s
    (0.0, 0.5)
    """

    def __init__(self, rate: float, burst: float | None = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate < 0:
            raise ConfigError("rate", rate, "a number of events per second >= 0 (0: unlimited)")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 20)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.burst
        self._last = clock()

    def take(self, n: float) -> float:
        """Spend ``n`` units, sleeping until they are available; return the seconds slept."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - n
        self._last = now
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.rate
        self._sleep(wait)
        return wait


def event_values(table: pa.Table) -> list[bytes]:
    """The message value of each row of a normalized event table (compact UTF-8 JSON).

    Timestamps go as unix milliseconds (the cheapest form to decode); those before 1973-03-03
    (below `streaming.event_rules.MS_THRESHOLD` ms, which would read as seconds) go as ISO-8601.
    """
    ms = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
    iso = None
    if ms and min(ms) <= MS_THRESHOLD:
        iso = pc.strftime(table.column("timestamp"), "%Y-%m-%dT%H:%M:%SZ").to_pylist()
    contexts = (table.column("context").to_pylist() if "context" in table.column_names
                else [None] * table.num_rows)
    columns = [table.column(name).to_pylist() for name in ("event_id", "user_id", "item_id", "event_type", "value")]
    values = []
    for row, (event_id, user, item, event_type, value) in enumerate(zip(*columns)):
        stamp = ms[row] if ms[row] > MS_THRESHOLD else iso[row]
        text = _encode({"event_id": event_id, "user_id": user, "item_id": item, "timestamp": stamp,
                        "event_type": event_type, "value": value})
        if contexts[row] is not None:
            text = f'{text[:-1]},"context":{contexts[row]}}}'
        values.append(text.encode())
    return values


@dataclass
class ProduceReport:
    """What `produce_events` sent: counts, time, and the end offset of each partition written."""

    topic: str
    events: int = 0
    seconds: float = 0.0
    end_offsets: dict[int, int] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        """JSON-ready: topic, events, seconds, events_per_s, end_offsets (partition keys as text)."""
        return {"topic": self.topic, "events": self.events, "seconds": round(self.seconds, 3),
                "events_per_s": round(self.events_per_s, 1),
                "end_offsets": {str(p): o for p, o in sorted(self.end_offsets.items())}}


class _Acks:
    """Collects acknowledgements: the end offset per partition, and the failures."""

    def __init__(self, report: ProduceReport) -> None:
        self.report = report
        self.failures: list[BaseException] = []

    def ok(self, metadata: Any) -> None:
        ends = self.report.end_offsets
        if metadata.offset + 1 > ends.get(metadata.partition, 0):
            ends[metadata.partition] = metadata.offset + 1

    def failed(self, exc: BaseException) -> None:
        self.failures.append(exc)


def produce_events(producer: KafkaProducer, events: pa.Table | Iterable[pa.Table], topic: str,
                   rate: float = 0.0, *, chunk: int | None = None,
                   progress: Callable[[int], None] | None = None) -> ProduceReport:
    """Send every event of ``events`` (a table or an iterable of tables) to ``topic``.

    Parameters
    ----------
    producer
        A ``KafkaProducer`` sending bytes (`streaming.kafka.make_producer`); it is flushed, not
        closed.
    events
        Normalized event tables (`streaming.normalize.EVENT_SCHEMA`), sent in row order.
    rate
        Events per second on average; 0 sends as fast as possible.
    chunk
        Events sent between rate checks and progress calls (default: rate/20, at most 1000).
    progress
        Called with the number of events sent after each chunk.

    Raises
    ------
    ServiceError
        When the broker did not acknowledge some events (after the producer's retries).
    """
    tables = [events] if isinstance(events, pa.Table) else events
    chunk = chunk or max(1, min(1000, int(rate / 20) if rate > 0 else 1000))
    bucket = TokenBucket(rate, burst=chunk)
    report = ProduceReport(topic)
    acks = _Acks(report)
    started = time.perf_counter()
    for table in tables:
        users = table.column("user_id").to_pylist()
        for start in range(0, table.num_rows, chunk):
            piece = table.slice(start, chunk)
            bucket.take(piece.num_rows)
            for user, value in zip(users[start:start + chunk], event_values(piece)):
                producer.send(topic, key=user_key(user), value=value).add_callback(acks.ok).add_errback(acks.failed)
            report.events += piece.num_rows
            if progress is not None:
                progress(piece.num_rows)
    producer.flush()
    report.seconds = time.perf_counter() - started
    if acks.failures:
        raise ServiceError("kafka", f"{len(acks.failures)} of {report.events} events to {topic!r} were not "
                                    f"acknowledged (first: {acks.failures[0]!r})",
                           "check the broker and produce the log again (the worker drops duplicates)")
    return report
