"""The interaction event: its schema, its validation rules and its derived id.

One `Interaction` is one user doing something to one item at one time. This module is the
edge where outside data (Kafka messages, HTTP bodies) becomes a trusted event. The rules
(constants such as `EVENT_TYPES`, `MAX_ID_LENGTH`, `MAX_FUTURE_SKEW`, the reason texts, the
scalar checks and `derive_event_id`) live in `streaming.event_rules` and are re-exported here;
`streaming.readers` applies the same rules to whole columns of an event log.

Every rejected input names the field, the value and what was expected.

>>> event = decode_event(b'{"user_id": "u1", "item_id": "i9", "timestamp": 1714564800}')
>>> event.timestamp.isoformat(), event.event_type, event.value, event.event_id
('2024-05-01T12:00:00+00:00', 'click', 1.0, '29bc30058f4b35d81373')
>>> decode_event(b'{"user_id": " ", "item_id": "i9", "timestamp": 1714564800}')
Traceback (most recent call last):
...
streaming.events.InvalidEventError: invalid event: user_id: expected a non-empty string (spaces are trimmed), got ' '
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_serializer, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fastslow.errors import FastslowError
from streaming import event_rules
from streaming.event_rules import (  # re-exported: the rules are part of this module's API
    _EPOCH,
    _ONE_MS,
    CONTROL_CHAR_PATTERN,
    DEFAULT_EVENT_TYPE,
    DEFAULT_VALUE,
    EVENT_ID_BYTES,
    EVENT_TYPES,
    FIELDS,
    INTEGER_PATTERN,
    ISO_8601_PATTERN,
    MAX_CONTEXT_KEYS,
    MAX_CONTEXT_KEY_LENGTH,
    MAX_CONTEXT_VALUE_LENGTH,
    MAX_EVENT_BYTES,
    MAX_FUTURE_SKEW,
    MAX_ID_LENGTH,
    MS_THRESHOLD,
    NAIVE_ISO_8601_PATTERN,
    NUMBER_PATTERN,
    REASON_BAD_DATE,
    REASON_BEFORE_EPOCH,
    REASON_CONTEXT,
    REASON_CONTROL,
    REASON_EMPTY,
    REASON_EVENT_TYPE,
    REASON_MISSING,
    REASON_NAIVE,
    REASON_NOT_TEXT,
    REASON_TIME,
    REASON_TOO_LONG,
    REASON_UNKNOWN_FIELD,
    REASON_VALUE,
    RuleViolation,
    check_context,
    check_context_value,
    check_event_type,
    check_text,
    check_timestamp_ms,
    check_value,
    derive_event_id,
    event_content,
    format_timestamp_ms,
    future_reason,
    show_value,
    timestamp_to_ms,
)


__all__ = [*event_rules.__all__, "Event", "EventProblem", "Interaction", "InvalidEventError", "decode_event",
           "decode_events", "validate_event"]


@dataclass(frozen=True)
class EventProblem:
    """One thing wrong with an event: which field, the value it had, what was expected.

    ``field`` is a field name, ``(event)`` for a message as a whole (``(row)`` for a log line),
    or, from the log readers, ``context.<key>`` for one context entry.
    """

    field: str
    value: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}, got {show_value(self.value)}"


class InvalidEventError(FastslowError):
    """An event that fails the schema; ``problems`` lists every fault found.

    ``field``, ``value`` and ``reason`` are those of the first problem (what a dead-letter
    record needs).
    """

    def __init__(self, problems: list[EventProblem]) -> None:
        if not problems:
            raise ValueError("InvalidEventError needs at least one problem")
        self.problems = list(problems)
        first = self.problems[0]
        self.field, self.value, self.reason = first.field, first.value, first.reason
        super().__init__("invalid event: " + "; ".join(str(p) for p in self.problems))

    @classmethod
    def from_validation_error(cls, exc: ValidationError) -> InvalidEventError:
        """Translate pydantic's errors into problems with fastslow's reason texts."""
        problems = []
        for err in exc.errors():
            field = ".".join(str(part) for part in err["loc"]) or "(event)"
            reason = {"missing": REASON_MISSING, "extra_forbidden": REASON_UNKNOWN_FIELD,
                      "model_type": "expected a JSON object"}.get(err["type"], err["msg"])
            value = None if err["type"] == "missing" else err.get("input")
            problems.append(EventProblem(field, value, reason))
        return cls(problems)


def _reject(reason: str) -> PydanticCustomError:
    return PydanticCustomError("fastslow_event", "{reason}", {"reason": reason})


class Event(NamedTuple):
    """The plain values ``learn_one`` takes: ``model.learn_one(*event)``."""

    user_id: str
    item_id: str
    timestamp: float
    event_type: str
    value: float


def _checked(check, value: Any, *args: Any) -> Any:
    try:
        return check(value, *args)
    except RuleViolation as exc:
        raise _reject(str(exc)) from None


class Interaction(BaseModel):
    """One validated interaction (see the module docstring for the rules).

    Validation reads ``now`` (datetime), ``max_future_skew`` (timedelta) and ``assume_utc``
    (bool) from the pydantic validation context when given (`validate_event` passes them).

    >>> event = Interaction(user_id="u1", item_id="i9", timestamp="2024-05-01T12:00:00Z")
    >>> event.to_event()
    Event(user_id='u1', item_id='i9', timestamp=1714564800.0, event_type='click', value=1.0)
    >>> event.to_json_bytes()
    b'{"event_id":"29bc30058f4b35d81373","user_id":"u1","item_id":"i9","timestamp":"2024-05-01T12:00:00.000Z","event_type":"click","value":1.0}'
    """

    model_config = ConfigDict(extra="forbid")

    event_id: str | None = None
    user_id: str
    item_id: str
    timestamp: datetime
    event_type: str = DEFAULT_EVENT_TYPE
    value: float = DEFAULT_VALUE
    context: dict[str, str | int | float | bool | None] | None = None

    @field_validator("event_id", mode="before")
    @classmethod
    def _event_id(cls, value: Any) -> str | None:
        return None if value is None else _checked(check_text, value)

    @field_validator("user_id", "item_id", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> str:
        return _checked(check_text, value)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, value: Any, info: ValidationInfo) -> datetime:
        options = info.context or {}
        now = options.get("now") or datetime.now(timezone.utc)
        skew = options.get("max_future_skew", MAX_FUTURE_SKEW)
        ms = _checked(timestamp_to_ms, value, options.get("assume_utc", False))
        ms = _checked(check_timestamp_ms, ms, (now - _EPOCH) // _ONE_MS, skew)
        return _EPOCH + timedelta(milliseconds=ms)

    @field_validator("event_type", mode="before")
    @classmethod
    def _event_type(cls, value: Any) -> str:
        return _checked(check_event_type, value)

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, value: Any) -> float:
        return _checked(check_value, value)

    @field_validator("context", mode="before")
    @classmethod
    def _context(cls, value: Any) -> dict | None:
        return _checked(check_context, value)

    @model_validator(mode="after")
    def _derive_id(self) -> Interaction:
        if self.event_id is None:
            self.event_id = derive_event_id(self.user_id, self.item_id, self.timestamp_ms,
                                            self.event_type, self.value)
        return self

    @field_serializer("timestamp")
    def _timestamp_text(self, value: datetime) -> str:
        return format_timestamp_ms(self.timestamp_ms)

    @property
    def timestamp_ms(self) -> int:
        """Unix milliseconds (UTC)."""
        return (self.timestamp - _EPOCH) // _ONE_MS

    def to_event(self) -> Event:
        """The plain values the learning API takes (timestamp in unix seconds)."""
        return Event(self.user_id, self.item_id, self.timestamp_ms / 1000, self.event_type, self.value)

    def to_json_bytes(self) -> bytes:
        """Compact JSON for a Kafka message; `decode_event` reads it back to an equal event."""
        exclude = {"context"} if self.context is None else None
        return self.model_dump_json(exclude=exclude).encode()


def validate_event(data: Any, *, now: datetime | None = None,
                   max_future_skew: timedelta = MAX_FUTURE_SKEW, assume_utc: bool = False) -> Interaction:
    """An `Interaction` from a mapping, raising `InvalidEventError` listing every problem.

    >>> validate_event({"user_id": "u", "item_id": "i", "timestamp": "2024-05-01T12:00:00"})
    Traceback (most recent call last):
    ...
    streaming.events.InvalidEventError: invalid event: timestamp: expected an ISO-8601 date-time with a UTC offset (Z or +HH:MM); this one has none, got '2024-05-01T12:00:00'
    """
    context = {"now": now, "max_future_skew": max_future_skew, "assume_utc": assume_utc}
    try:
        return Interaction.model_validate(data, context=context)
    except ValidationError as exc:
        raise InvalidEventError.from_validation_error(exc) from None


def decode_event(raw: bytes, *, now: datetime | None = None,
                 max_future_skew: timedelta = MAX_FUTURE_SKEW) -> Interaction:
    """An `Interaction` from JSON bytes (a Kafka message value), or `InvalidEventError`.

    >>> decode_event(b"[1, 2]")
    Traceback (most recent call last):
    ...
    streaming.events.InvalidEventError: invalid event: (event): expected a JSON object, got [1, 2]
    """
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEventError([EventProblem("(event)", f"{len(raw)} bytes",
                                              f"expected at most {MAX_EVENT_BYTES} bytes")])
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidEventError([EventProblem("(event)", bytes(raw[:80]), f"expected UTF-8 JSON ({exc})")]) from None
    if not isinstance(data, dict):
        raise InvalidEventError([EventProblem("(event)", data, "expected a JSON object")])
    return validate_event(data, now=now, max_future_skew=max_future_skew)


def decode_events(raws: Iterable[bytes], *, now: datetime | None = None,
                  max_future_skew: timedelta = MAX_FUTURE_SKEW
                  ) -> tuple[list[Interaction], list[tuple[int, InvalidEventError]]]:
    """Decode a batch: the good events, and (position, error) for each bad one.

    >>> good, bad = decode_events([b'{"user_id":"u","item_id":"i","timestamp":1}', b"{"])
    >>> len(good), bad[0][0], bad[0][1].field
    (1, 1, '(event)')
    """
    now = now or datetime.now(timezone.utc)
    good: list[Interaction] = []
    bad: list[tuple[int, InvalidEventError]] = []
    for position, raw in enumerate(raws):
        try:
            good.append(decode_event(raw, now=now, max_future_skew=max_future_skew))
        except InvalidEventError as exc:
            bad.append((position, exc))
    return good, bad
