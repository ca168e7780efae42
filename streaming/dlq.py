"""The dead-letter topic: messages the worker could not use, kept byte for byte with the reason.

A rejected message is re-published to ``interactions.dlq`` with its original key, value and
headers, plus headers that say what was wrong and where it came from:

============================  ===============================================================
``fastslow.error.field``      the field at fault (``user_id``, ``timestamp``, ``(event)``...)
``fastslow.error.reason``     what was expected ("expected a non-empty string ...")
``fastslow.error.message``    the full message, every problem found (at most 4 KiB)
``fastslow.source.topic``     topic, partition and offset of the original message, and its
``fastslow.source.partition`` Kafka timestamp (ms); together they identify it uniquely, so a
``fastslow.source.offset``    DLQ reader can drop the copies a restarted worker re-sends
``fastslow.source.timestamp``
``fastslow.worker``           the worker id that rejected it
============================  ===============================================================

Header values are UTF-8 text. `DeadLetter.from_record` reads one back.

>>> from types import SimpleNamespace
>>> from streaming.events import InvalidEventError, EventProblem
>>> record = SimpleNamespace(topic="interactions", partition=2, offset=41, timestamp=1714564800000,
...                          key=b"u1", value=b"{}", headers=[("trace", b"x")])
>>> error = InvalidEventError([EventProblem("user_id", None, "expected a value (the field is required)")])
>>> headers = dead_letter_headers(record, error, worker_id="w1")
>>> headers[0], headers[1]
(('trace', b'x'), ('fastslow.error.field', b'user_id'))
>>> letter = DeadLetter.from_record(SimpleNamespace(key=b"u1", value=b"{}", headers=headers))
>>> letter.field, letter.source_partition, letter.source_offset
('user_id', 2, 41)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastslow.errors import ServiceError
from streaming.events import InvalidEventError

if TYPE_CHECKING:
    from kafka import KafkaProducer

logger = logging.getLogger(__name__)

HEADER_PREFIX = "fastslow."
MAX_MESSAGE_BYTES = 4096


def _text(value: object, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    data = str(value).encode("utf-8", errors="replace")
    return data if len(data) <= limit else data[: limit - 3] + b"..."


def dead_letter_headers(record: Any, error: InvalidEventError, worker_id: str) -> list[tuple[str, bytes]]:
    """The original headers (except fastslow's own) followed by the error and source headers."""
    original = [(k, v) for k, v in (record.headers or []) if not k.startswith(HEADER_PREFIX)]
    return original + [
        ("fastslow.error.field", _text(error.field)),
        ("fastslow.error.reason", _text(error.reason)),
        ("fastslow.error.message", _text(error)),
        ("fastslow.source.topic", _text(record.topic)),
        ("fastslow.source.partition", _text(record.partition)),
        ("fastslow.source.offset", _text(record.offset)),
        ("fastslow.source.timestamp", _text(record.timestamp)),
        ("fastslow.worker", _text(worker_id)),
    ]


@dataclass(frozen=True)
class DeadLetter:
    """A dead-letter record read back: original key/value and the error headers."""

    key: bytes | None
    value: bytes | None
    field: str
    reason: str
    message: str
    source_topic: str
    source_partition: int
    source_offset: int
    headers: Sequence[tuple[str, bytes]]

    @classmethod
    def from_record(cls, record: Any) -> DeadLetter:
        """Parse a record consumed from the dead-letter topic."""
        found = {k: v.decode() for k, v in record.headers if k.startswith(HEADER_PREFIX)}
        return cls(record.key, record.value, found["fastslow.error.field"], found["fastslow.error.reason"],
                   found["fastslow.error.message"], found["fastslow.source.topic"],
                   int(found["fastslow.source.partition"]), int(found["fastslow.source.offset"]),
                   list(record.headers))


class DeadLetterQueue:
    """Sends rejected records to the dead-letter topic; `flush` makes them durable.

    Parameters
    ----------
    producer
        A ``KafkaProducer`` with ``acks='all'`` (`streaming.kafka.make_producer`).
    topic
        The dead-letter topic.
    worker_id
        Written into each record's headers.
    """

    def __init__(self, producer: KafkaProducer, topic: str, worker_id: str) -> None:
        self.producer = producer
        self.topic = topic
        self.worker_id = worker_id
        self._pending: list[Any] = []

    def send(self, record: Any, error: InvalidEventError) -> None:
        """Queue ``record`` (a consumed ``ConsumerRecord``) for the dead-letter topic."""
        headers = dead_letter_headers(record, error, self.worker_id)
        self._pending.append(self.producer.send(self.topic, key=record.key, value=record.value,
                                                headers=headers))

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until every queued record is acknowledged; return how many were sent.

        Raises
        ------
        ServiceError
            If any record could not be written (offsets must then not be committed).
        """
        if not self._pending:
            return 0
        self.producer.flush(timeout)
        pending, self._pending = self._pending, []
        failed = [f for f in pending if not f.succeeded()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "not acknowledged in time"
            raise ServiceError("kafka", f"{len(failed)} of {len(pending)} dead letters to {self.topic!r} "
                                        f"were not written (first: {first})",
                               "check the broker; the worker resumes from its last snapshot")
        return len(pending)
