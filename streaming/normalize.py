"""Column-wise validation: raw log columns in, the normalized event table out.

The rules are those of `streaming.events` (same patterns, same limits, same reason texts),
applied to whole pyarrow arrays at once, so a 10-million-row log never becomes 10 million
Python objects. A row that breaks a rule is marked bad and described; good rows become the
normalized columns of `EVENT_SCHEMA` (``event_id`` stays null where it must be derived, which
`streaming.event_ids` does next, in file order).

>>> raw = {"user_id": pa.array(["u1", " "]), "item_id": pa.array(["i1", "i2"]),
...        "timestamp": pa.array(["2024-05-01T12:00:00Z", "1714564800"])}
>>> batch = normalize_columns(raw, np.array([2, 3]), now_ms=1714564800000)
>>> batch.table.column("user_id").to_pylist(), batch.rows.tolist(), batch.reasons
(['u1'], [2], [(3, "user_id: expected a non-empty string (spaces are trimmed), got ' '")])
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streaming import events as ev

EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
    ("timestamp", pa.timestamp("ms", tz="UTC")), ("event_type", pa.string()),
    ("value", pa.float64()), ("context", pa.string()),
])
REASON_NAIVE_LOG = ev.REASON_NAIVE + " (pass --assume-utc to read such times as UTC)"
_UNIT_MS = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1000), "ns": (1, 1_000_000)}


@dataclass
class _Check:
    field: str
    mask: np.ndarray  # True where the row breaks this rule
    reason: str
    values: pa.Array  # the raw values, for messages


@dataclass
class NormalizedBatch:
    """Good rows as a table in `EVENT_SCHEMA`, their file row numbers, and the bad rows."""

    table: pa.Table
    rows: np.ndarray
    bad_rows: np.ndarray
    reasons: list[tuple[int, str]]  # (row, reason) for the first ``max_reasons`` bad rows


def _mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _regex(strings: pa.Array, pattern: str) -> np.ndarray:
    return _mask(pc.match_substring_regex(strings, pattern))


def _as_text(values: pa.Array) -> pa.Array | None:
    """``values`` as a string array, or None when its type cannot hold text."""
    kind = values.type
    if pa.types.is_dictionary(kind):
        return _as_text(values.dictionary_decode())
    if pa.types.is_null(kind) or pa.types.is_integer(kind) or pa.types.is_large_string(kind):
        return pc.cast(values, pa.string())
    return values if pa.types.is_string(kind) else None


def _text_field(name: str, values: pa.Array, checks: list[_Check], required: bool = True) -> pa.Array:
    """Trimmed ids; the masks mirror `events.check_text` rule by rule, in its order."""
    text = _as_text(values)
    present = ~_mask(pc.is_null(values))
    if text is None:
        checks.append(_Check(name, present, ev.REASON_NOT_TEXT, values))
        return pa.nulls(len(values), pa.string())
    if required:
        checks.append(_Check(name, ~present, ev.REASON_MISSING, values))
    control = _regex(text, ev.CONTROL_CHAR_PATTERN)
    trimmed = pc.utf8_trim(text, " ")
    length = pc.fill_null(pc.utf8_length(trimmed), 0).to_numpy(zero_copy_only=False)
    checks.append(_Check(name, control, ev.REASON_CONTROL, values))
    checks.append(_Check(name, present & ~control & (length == 0), ev.REASON_EMPTY, values))
    checks.append(_Check(name, ~control & (length > ev.MAX_ID_LENGTH), ev.REASON_TOO_LONG, values))
    return trimmed


def _numbers_to_ms(numbers: np.ndarray) -> np.ndarray:
    """Unix s or ms (above 1e11) to float ms, rounded like `events.timestamp_to_ms`.

    Floats are exact for every time the range check lets through (below 2**53 ms).
    """
    numbers = numbers.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.round(np.where(numbers > ev.MS_THRESHOLD, numbers, numbers * 1000))


def _timestamps_from_text(text: pa.Array, assume_utc: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ms as float, unparsable, impossible date, naive-and-rejected) for strings: numbers or ISO-8601."""
    text = pc.utf8_trim(text, " ")
    count = len(text)
    ms = np.full(count, np.nan)
    aware = _regex(text, ev.ISO_8601_PATTERN)
    integer, number, naive = (np.zeros(count, dtype=bool) for _ in range(3))
    others = np.flatnonzero(~aware)
    if len(others):  # the other patterns only run on rows that are not aware ISO-8601
        rest = pc.take(text, pa.array(others))
        integer[others] = _regex(rest, ev.INTEGER_PATTERN)
        number[others] = _regex(rest, ev.NUMBER_PATTERN) & ~integer[others]
        naive[others] = _regex(rest, ev.NAIVE_ISO_8601_PATTERN)
    for mask, kind in ((integer, pa.int64()), (number, pa.float64())):
        if mask.any():
            parsed = pc.cast(pc.filter(text, mask), kind).to_numpy(zero_copy_only=False)
            ms[mask] = _numbers_to_ms(parsed)
    unparsable, bad_date = ~(integer | number | aware | naive), np.zeros(count, dtype=bool)
    dates = aware | (naive & assume_utc)
    if dates.all():
        ms, bad_date = _iso_to_ms(text, aware, assume_utc)
    elif dates.any():
        ms[dates], bad_date[dates] = _iso_to_ms(pc.filter(text, dates), aware[dates], assume_utc)
    return ms, unparsable, bad_date, naive & (not assume_utc)


def _iso_to_ms(text: pa.Array, aware: np.ndarray, assume_utc: bool) -> tuple[np.ndarray, np.ndarray]:
    """ISO strings (already matching the patterns) to ms; a mask of impossible dates."""
    try:
        if not aware.all():
            text = pc.if_else(pa.array(aware), text, pc.binary_join_element_wise(text, "Z", ""))
        nanos = pc.cast(pc.cast(text, pa.timestamp("ns", tz="UTC")), pa.int64()).to_numpy()
        return (nanos // 1_000_000).astype(np.float64), np.zeros(len(text), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # some string is not a real date or outside 1677..2262: do these few one by one
    ms = np.full(len(text), np.nan)
    for index, value in enumerate(text.to_pylist()):
        try:
            ms[index] = ev.timestamp_to_ms(value, assume_utc=assume_utc)
        except ValueError:
            continue
    return ms, np.isnan(ms)


def _timestamp_field(values: pa.Array, assume_utc: bool, now_ms: int, skew: timedelta,
                     checks: list[_Check]) -> np.ndarray:
    """Unix ms (int64) per row; the masks mirror `events.timestamp_to_ms` and the range check."""
    kind, count = values.type, len(values)
    present = ~_mask(pc.is_null(values))
    naive, bad_date = np.zeros(count, dtype=bool), np.zeros(count, dtype=bool)
    text = _as_text(values) if not pa.types.is_integer(kind) else None
    if pa.types.is_null(kind):
        ms, unparsable = np.zeros(count), np.zeros(count, dtype=bool)
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        numbers = pc.fill_null(pc.cast(values, pa.float64(), safe=False), 0).to_numpy(zero_copy_only=False)
        ms = _numbers_to_ms(numbers)
        unparsable = ~np.isfinite(ms)
    elif pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        if pa.types.is_date(kind):
            raw, (mul, div) = pc.cast(pc.cast(values, pa.date32()), pa.int32()), (86_400_000, 1)
        else:
            raw, (mul, div) = pc.cast(values, pa.int64()), _UNIT_MS[kind.unit]
        ms = (pc.fill_null(raw, 0).to_numpy(zero_copy_only=False).astype(np.int64) * mul // div).astype(np.float64)
        naive = np.full(count, (pa.types.is_date(kind) or kind.tz is None) and not assume_utc)
        unparsable = np.zeros(count, dtype=bool)
    elif text is not None:
        ms, unparsable, bad_date, naive = _timestamps_from_text(text, assume_utc)
    else:
        ms, unparsable = np.zeros(count), np.ones(count, dtype=bool)
    ok = present & ~unparsable & ~bad_date & ~naive
    limit = now_ms + skew // timedelta(milliseconds=1)
    checks.append(_Check("timestamp", ~present, ev.REASON_MISSING, values))
    checks.append(_Check("timestamp", present & unparsable, ev.REASON_TIME, values))
    checks.append(_Check("timestamp", present & bad_date, ev.REASON_BAD_DATE, values))
    checks.append(_Check("timestamp", present & naive, REASON_NAIVE_LOG, values))
    checks.append(_Check("timestamp", ok & (ms < 0), ev.REASON_BEFORE_EPOCH, values))
    checks.append(_Check("timestamp", ok & (ms > limit), ev.future_reason(now_ms, skew), values))
    return np.where(ok & (ms >= 0) & (ms <= limit), ms, 0).astype(np.int64)


def _value_field(values: pa.Array, checks: list[_Check]) -> np.ndarray:
    kind = values.type
    present = ~_mask(pc.is_null(values))
    result = np.full(len(values), ev.DEFAULT_VALUE)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        result[present] = pc.drop_null(values).cast(pa.float64()).to_numpy(zero_copy_only=False)
        parsed = present
    elif _as_text(values) is not None and not pa.types.is_integer(kind):
        text = pc.utf8_trim(_as_text(values), " ")
        parsed = _regex(text, ev.NUMBER_PATTERN)
        result[parsed] = pc.cast(pc.filter(text, parsed), pa.float64()).to_numpy(zero_copy_only=False)
    else:
        parsed = np.zeros(len(values), dtype=bool)
    bad = present & (~parsed | ~np.isfinite(result))
    checks.append(_Check("value", bad, ev.REASON_VALUE, values))
    return np.where(bad, ev.DEFAULT_VALUE, result) + 0.0


def _event_type_field(values: pa.Array, checks: list[_Check]) -> pa.Array:
    text = _as_text(values)
    if text is None or pa.types.is_integer(values.type):
        checks.append(_Check("event_type", ~_mask(pc.is_null(values)), ev.REASON_EVENT_TYPE, values))
        return pa.array(np.full(len(values), ev.DEFAULT_EVENT_TYPE, dtype=object), pa.string())
    lowered = pc.fill_null(pc.utf8_lower(pc.utf8_trim(text, " ")), ev.DEFAULT_EVENT_TYPE)
    known = _mask(pc.is_in(lowered, value_set=pa.array(ev.EVENT_TYPES)))
    checks.append(_Check("event_type", ~known, ev.REASON_EVENT_TYPE, values))
    return lowered


def _context_json(name: str, values: pa.Array, checks: list[_Check]) -> pa.Array:
    """One context value per row as JSON text (``null`` for missing)."""
    kind, field = values.type, f"context.{name}"
    present = ~_mask(pc.is_null(values))
    if _as_text(values) is not None and not pa.types.is_integer(kind) and not pa.types.is_null(kind):
        text = _as_text(values)
        long = pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False) > ev.MAX_CONTEXT_VALUE_LENGTH
        checks.append(_Check(field, long | _regex(text, ev.CONTROL_CHAR_PATTERN),
                             f"expected strings of at most {ev.MAX_CONTEXT_VALUE_LENGTH} characters "
                             "without control characters", values))
        escaped = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), '"', '\\"')
        rendered = pc.binary_join_element_wise('"', escaped, '"', "")
    elif pa.types.is_floating(kind):
        finite = _mask(pc.is_finite(values))
        checks.append(_Check(field, present & ~finite, "expected finite numbers", values))
        rendered = pc.cast(values, pa.string())
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_null(kind):
        rendered = pc.cast(values, pa.string())
    else:
        checks.append(_Check(field, present, ev.REASON_CONTEXT, values))
        rendered = pa.nulls(len(values), pa.string())
    return pc.fill_null(rendered, "null")


def _context_field(context: dict[str, pa.Array], count: int, checks: list[_Check]) -> pa.Array:
    if not context:
        return pa.nulls(count, pa.string())
    parts: list = ["{"]
    for position, (name, values) in enumerate(context.items()):
        parts += [("," if position else "") + json.dumps(name) + ":", _context_json(name, values, checks)]
    return pc.binary_join_element_wise(*parts, "}", "")


def _describe(checks: list[_Check], index: int) -> str:
    return "; ".join(str(ev.EventProblem(check.field, check.values[index].as_py(), check.reason))
                     for check in checks if check.mask[index])


def normalize_columns(raw: dict[str, pa.Array | None], rows: np.ndarray, *, now_ms: int,
                      max_future_skew: timedelta = ev.MAX_FUTURE_SKEW, assume_utc: bool = False,
                      context: dict[str, pa.Array] | None = None, max_reasons: int = 20) -> NormalizedBatch:
    """Validate raw columns (keys: event fields; None or absent = not in the log).

    ``rows`` holds each input row's number in the file; ``context`` maps context keys to
    their columns. Missing optional fields take their defaults.
    """
    count = len(rows)
    checks: list[_Check] = []

    def column(name: str) -> pa.Array:
        values = raw.get(name)
        if values is None:
            return pa.nulls(count)
        return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values

    columns = {
        "event_id": _text_field("event_id", column("event_id"), checks, required=False),
        "user_id": _text_field("user_id", column("user_id"), checks),
        "item_id": _text_field("item_id", column("item_id"), checks),
        "timestamp": pa.array(_timestamp_field(column("timestamp"), assume_utc, now_ms, max_future_skew, checks),
                              pa.int64()).cast(EVENT_SCHEMA.field("timestamp").type),
        "event_type": _event_type_field(column("event_type"), checks),
        "value": pa.array(_value_field(column("value"), checks), pa.float64()),
        "context": _context_field({k: (v.combine_chunks() if isinstance(v, pa.ChunkedArray) else v)
                                   for k, v in (context or {}).items()}, count, checks),
    }
    bad = np.zeros(count, dtype=bool)
    for check in checks:
        bad |= check.mask
    bad_index = np.flatnonzero(bad)
    reasons = [(int(rows[i]), _describe(checks, i)) for i in bad_index[:max_reasons]]
    table = pa.table(columns, schema=EVENT_SCHEMA)
    if bad_index.size:
        table = table.filter(pa.array(~bad))
    return NormalizedBatch(table, rows[~bad], rows[bad], reasons)


def interactions_to_table(interactions: Iterable[ev.Interaction]) -> pa.Table:
    """A table in `EVENT_SCHEMA` from validated interactions (e.g. for an archive).

    >>> event = ev.Interaction(user_id="u", item_id="i", timestamp=1714564800, context={"a": 1})
    >>> interactions_to_table([event]).to_pylist()[0]["context"]
    '{"a":1}'
    """
    interactions = list(interactions)
    return pa.table({
        "event_id": [e.event_id for e in interactions], "user_id": [e.user_id for e in interactions],
        "item_id": [e.item_id for e in interactions],
        "timestamp": pa.array([e.timestamp_ms for e in interactions], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "event_type": [e.event_type for e in interactions], "value": [e.value for e in interactions],
        "context": [None if e.context is None else json.dumps(e.context, separators=(",", ":")) for e in interactions],
    }, schema=EVENT_SCHEMA)
