"""The rules an interaction event must follow, as constants, reason texts and scalar checks.

`streaming.events.Interaction` applies these checks to one event at a time and
`streaming.normalize` applies the same patterns and limits to whole columns, so both speak
with the same reason texts. Each ``check_*`` returns the normalized value or raises
`RuleViolation` whose message is the reason ("expected ...").

Rules
-----
- ``user_id``, ``item_id``, ``event_id``: strings (integers are accepted and turned into text),
  spaces trimmed at both ends, non-empty, at most `MAX_ID_LENGTH` characters, no control
  characters. ``event_id`` may be omitted: it is then derived from the content
  (`derive_event_id`), so the same event sent twice gets the same id.
- ``timestamp``: unix seconds, unix milliseconds (numbers above `MS_THRESHOLD`, 1e11, are
  milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973), numeric strings, or an ISO-8601
  date-time **with** a UTC offset (``Z``, ``+HH:MM``, ``+HHMM`` or ``+HH``). A date-time without
  an offset is rejected: it is ambiguous, and guessing UTC would silently shift a local-time
  log by hours (the log readers accept it only with ``assume_utc``). Stored in UTC with
  millisecond precision: ISO fractions are truncated, numeric seconds rounded to the nearest
  millisecond. Times before 1970 or more than `MAX_FUTURE_SKEW` ahead of now are rejected.
- ``event_type``: one of `EVENT_TYPES` (case and surrounding spaces ignored), default click.
- ``value``: a finite number (or numeric string), default 1.0.
- ``context``: optional flat object of at most `MAX_CONTEXT_KEYS` scalar values (string,
  number, boolean, null).
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = [
    "EVENT_TYPES",
    "DEFAULT_EVENT_TYPE",
    "DEFAULT_VALUE",
    "MAX_ID_LENGTH",
    "MAX_CONTEXT_KEYS",
    "MAX_CONTEXT_KEY_LENGTH",
    "MAX_CONTEXT_VALUE_LENGTH",
    "MAX_EVENT_BYTES",
    "MAX_FUTURE_SKEW",
    "MS_THRESHOLD",
    "EVENT_ID_BYTES",
    "FIELDS",
    "ISO_8601_PATTERN",
    "NAIVE_ISO_8601_PATTERN",
    "INTEGER_PATTERN",
    "NUMBER_PATTERN",
    "CONTROL_CHAR_PATTERN",
    "REASON_MISSING",
    "REASON_NOT_TEXT",
    "REASON_EMPTY",
    "REASON_TOO_LONG",
    "REASON_CONTROL",
    "REASON_TIME",
    "REASON_NAIVE",
    "REASON_BAD_DATE",
    "REASON_BEFORE_EPOCH",
    "REASON_EVENT_TYPE",
    "REASON_VALUE",
    "REASON_CONTEXT",
    "REASON_UNKNOWN_FIELD",
    "future_reason",
    "format_timestamp_ms",
    "show_value",
    "RuleViolation",
    "check_text",
    "timestamp_to_ms",
    "check_timestamp_ms",
    "check_value",
    "check_event_type",
    "check_context",
    "check_context_value",
    "event_content",
    "derive_event_id",
]

EVENT_TYPES = ("view", "click", "cart", "purchase", "rating", "skip")
DEFAULT_EVENT_TYPE = "click"
DEFAULT_VALUE = 1.0
MAX_ID_LENGTH = 256
MAX_CONTEXT_KEYS = 32
MAX_CONTEXT_KEY_LENGTH = 64
MAX_CONTEXT_VALUE_LENGTH = 1024
MAX_EVENT_BYTES = 64 * 1024
MAX_FUTURE_SKEW = timedelta(days=1)
"""Default tolerance for clocks running ahead; callers (the worker) pass their own."""
MS_THRESHOLD = 1e11
"""Unix times above this are milliseconds, at or below it seconds."""
EVENT_ID_BYTES = 10
"""Derived ids are this many bytes of BLAKE2b, written as hex (20 characters)."""

FIELDS = ("event_id", "user_id", "item_id", "timestamp", "event_type", "value", "context")
ISO_8601_PATTERN = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)$"
NAIVE_ISO_8601_PATTERN = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?$"
INTEGER_PATTERN = r"^-?\d{1,18}$"
NUMBER_PATTERN = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
CONTROL_CHAR_PATTERN = r"[\x00-\x1f\x7f-\x9f]"

# Reason texts, shared with the column-wise checks in streaming.normalize.
REASON_MISSING = "expected a value (the field is required)"
REASON_NOT_TEXT = "expected a string or an integer"
REASON_EMPTY = "expected a non-empty string (spaces are trimmed)"
REASON_TOO_LONG = f"expected at most {MAX_ID_LENGTH} characters"
REASON_CONTROL = "expected no control characters (tab, newline, NUL, ...)"
REASON_TIME = ("expected unix seconds, unix milliseconds (numbers above 1e11) or an ISO-8601 "
               "date-time with a UTC offset such as 2024-05-01T12:00:00Z")
REASON_NAIVE = "expected an ISO-8601 date-time with a UTC offset (Z or +HH:MM); this one has none"
REASON_BAD_DATE = "expected a real calendar date and time"
REASON_BEFORE_EPOCH = "expected a time on or after 1970-01-01T00:00:00Z"
REASON_EVENT_TYPE = "expected one of " + ", ".join(EVENT_TYPES)
REASON_VALUE = "expected a finite number"
REASON_CONTEXT = "expected a flat JSON object of scalar values (string, number, boolean or null)"
REASON_UNKNOWN_FIELD = "expected no such field (allowed: " + ", ".join(FIELDS) + ")"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


def future_reason(now_ms: int, max_future_skew: timedelta) -> str:
    """The reason text for a timestamp too far ahead of ``now_ms``.

    >>> future_reason(0, timedelta(days=1))
    'expected a time at most 1 day, 0:00:00 after now (1970-01-01T00:00:00.000Z)'
    """
    return f"expected a time at most {max_future_skew} after now ({format_timestamp_ms(now_ms)})"


def format_timestamp_ms(ms: int) -> str:
    """ISO-8601 UTC text with milliseconds for unix milliseconds ``ms``.

    >>> format_timestamp_ms(1714564800123)
    '2024-05-01T12:00:00.123Z'
    """
    moment = _EPOCH + timedelta(milliseconds=ms)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def show_value(value: Any, limit: int = 80) -> str:
    """``repr(value)``, shortened to about ``limit`` characters for messages.

    >>> show_value("x" * 100, limit=10)
    "'xxxxxxxx… (100 characters)"
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return text[: limit - 1] + "…" + size


class RuleViolation(ValueError):
    """A single value broke a rule; the message is the reason text ('expected ...')."""


def check_text(value: Any) -> str:
    """Validate an id-like value; return it trimmed of spaces.

    >>> check_text("  u1 "), check_text(42)
    ('u1', '42')
    """
    if value is None:
        raise RuleViolation(REASON_MISSING)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RuleViolation(REASON_NOT_TEXT)
    if re.search(CONTROL_CHAR_PATTERN, value):
        raise RuleViolation(REASON_CONTROL)
    value = value.strip(" ")
    if not value:
        raise RuleViolation(REASON_EMPTY)
    if len(value) > MAX_ID_LENGTH:
        raise RuleViolation(REASON_TOO_LONG)
    return value


def _number_to_ms(number: int | float) -> int:
    if isinstance(number, float) and not math.isfinite(number):
        raise RuleViolation(REASON_TIME)
    if number > MS_THRESHOLD:
        return round(number)
    return number * 1000 if isinstance(number, int) else round(number * 1000)


def timestamp_to_ms(value: Any, assume_utc: bool = False) -> int:
    """Unix milliseconds (UTC) for a timestamp in any accepted form (no range checks).

    >>> timestamp_to_ms(1714564800), timestamp_to_ms(1714564800123), timestamp_to_ms("1714564800.5")
    (1714564800000, 1714564800123, 1714564800500)
    >>> timestamp_to_ms("2024-05-01T14:00:00.1239+02:00")
    1714564800123
    """
    if value is None:
        raise RuleViolation(REASON_MISSING)
    if isinstance(value, bool):
        raise RuleViolation(REASON_TIME)
    if isinstance(value, int | float):
        return _number_to_ms(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            if not assume_utc:
                raise RuleViolation(REASON_NAIVE)
            value = value.replace(tzinfo=timezone.utc)
        return (value - _EPOCH) // _ONE_MS
    if not isinstance(value, str):
        raise RuleViolation(REASON_TIME)
    text = value.strip(" ")
    if re.match(INTEGER_PATTERN, text):
        return _number_to_ms(int(text))
    if re.match(NUMBER_PATTERN, text):
        return _number_to_ms(float(text))
    naive = re.match(NAIVE_ISO_8601_PATTERN, text)
    if not (naive or re.match(ISO_8601_PATTERN, text)):
        raise RuleViolation(REASON_TIME)
    if naive and not assume_utc:
        raise RuleViolation(REASON_NAIVE)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RuleViolation(REASON_BAD_DATE) from None
    return timestamp_to_ms(moment, assume_utc=assume_utc)


def check_timestamp_ms(ms: int, now_ms: int, max_future_skew: timedelta) -> int:
    """Return ``ms`` when it lies between 1970 and ``now_ms + max_future_skew``."""
    if ms < 0:
        raise RuleViolation(REASON_BEFORE_EPOCH)
    if ms > now_ms + max_future_skew // _ONE_MS:
        raise RuleViolation(future_reason(now_ms, max_future_skew))
    return ms


def check_value(value: Any) -> float:
    """A finite float from a number or numeric string; None means the default 1.0.

    >>> check_value(None), check_value(3), check_value(" 2.5 ")
    (1.0, 3.0, 2.5)
    """
    if value is None:
        return DEFAULT_VALUE
    if isinstance(value, str) and re.match(NUMBER_PATTERN, value.strip(" ")):
        value = float(value.strip(" "))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleViolation(REASON_VALUE)
    value = float(value)
    if not math.isfinite(value):
        raise RuleViolation(REASON_VALUE)
    return value + 0.0  # turns -0.0 into 0.0, so equal values derive equal ids


def check_event_type(value: Any) -> str:
    """The event type in lower case; None means the default, click.

    >>> check_event_type(" Purchase "), check_event_type(None)
    ('purchase', 'click')
    """
    if value is None:
        return DEFAULT_EVENT_TYPE
    if not isinstance(value, str) or value.strip(" ").lower() not in EVENT_TYPES:
        raise RuleViolation(REASON_EVENT_TYPE)
    return value.strip(" ").lower()


def check_context(value: Any) -> dict[str, str | int | float | bool | None] | None:
    """A flat dict of scalars, at most `MAX_CONTEXT_KEYS` keys; None stays None.

    >>> check_context({"device": "ios", "hour": 9})
    {'device': 'ios', 'hour': 9}
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RuleViolation(REASON_CONTEXT)
    if len(value) > MAX_CONTEXT_KEYS:
        raise RuleViolation(f"expected at most {MAX_CONTEXT_KEYS} keys, got {len(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or not key or len(key) > MAX_CONTEXT_KEY_LENGTH:
            raise RuleViolation(f"expected keys of 1 to {MAX_CONTEXT_KEY_LENGTH} characters, got {show_value(key)}")
        check_context_value(key, item)
    return dict(value)


def check_context_value(key: str, item: Any) -> None:
    """Reject a context value that is not a finite scalar or a short, clean string."""
    if isinstance(item, float) and not math.isfinite(item):
        raise RuleViolation(f"expected finite numbers, key {key!r} holds {item!r}")
    if isinstance(item, str) and (len(item) > MAX_CONTEXT_VALUE_LENGTH or re.search(CONTROL_CHAR_PATTERN, item)):
        raise RuleViolation(f"expected strings of at most {MAX_CONTEXT_VALUE_LENGTH} characters without control "
                      f"characters, key {key!r} holds {show_value(item)}")
    if item is not None and not isinstance(item, str | int | float):
        raise RuleViolation(f"{REASON_CONTEXT}, key {key!r} holds {show_value(item)}")


def event_content(user_id: str, item_id: str, timestamp_ms: int, event_type: str, value: float) -> bytes:
    """The canonical bytes an event id is derived from (ids cannot contain the separator)."""
    fixed = struct.pack("<qd", timestamp_ms, value + 0.0)
    return b"\x1f".join((user_id.encode(), item_id.encode(), event_type.encode(), fixed))


def derive_event_id(user_id: str, item_id: str, timestamp_ms: int, event_type: str, value: float,
                    occurrence: int = 0) -> str:
    """A stable 20-hex-digit id from an event's content (BLAKE2b over `event_content`).

    ``occurrence`` counts earlier identical events in the same log: the n-th repeat of a row
    gets a different id, so logs with legitimately repeated rows are not deduplicated.

    >>> derive_event_id("u1", "i9", 1714564800000, "click", 1.0)
    '29bc30058f4b35d81373'
    >>> derive_event_id("u1", "i9", 1714564800000, "click", 1.0, occurrence=1)
    '16a88652b79e179b8431'
    """
    content = event_content(user_id, item_id, timestamp_ms, event_type, value)
    if occurrence:
        content += b"\x1f" + str(occurrence).encode()
    return hashlib.blake2b(content, digest_size=EVENT_ID_BYTES).hexdigest()
