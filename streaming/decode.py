"""Decode Kafka message values into events quickly, with exactly the rules of `streaming.events`.

`streaming.events.decode_event` builds a pydantic `Interaction` per message (~20 µs); the
worker decodes tens of thousands of messages a second, so it uses the two paths here, which
reach the same verdicts through the same rules:

- `decode_batch` parses a whole batch with Arrow's JSON reader and validates it column-wise
  with `streaming.normalize.normalize_columns` (the vectorised form of the rules that the log
  readers use, ~2 µs per event). Messages of a shape it does not handle (numbers as ids, ISO
  text mixed with numbers, a context object, duplicate keys, anything unparsable) send their
  chunk to the per-message path; it bisects, so one bad message does not slow a whole batch.
- `decode_record` decodes one message with one ``json.loads`` and the scalar checks of
  `streaming.event_rules` (the very functions the pydantic validators call), ~8 µs.

Whenever either finds something wrong, the message goes to `streaming.events.decode_event`,
which raises `InvalidEventError` with the reasons (should it accept the message after all,
its result is used). So there is one set of rules, and the fast paths can only be faster,
never more lenient; ``tests/test_worker_decode.py`` checks with generated payloads that all
of them agree.

>>> now_ms = 1717200000000  # 2024-06-01T00:00:00Z
>>> event = decode_record(b'{"user_id": "u1", "item_id": "i9", "timestamp": 1714564800}', now_ms)
>>> event.event_id, event.timestamp_ms, event.event_type, event.value, event.context
('29bc30058f4b35d81373', 1714564800000, 'click', 1.0, None)
>>> decode_record(b'{"user_id": "", "item_id": "i9", "timestamp": 1714564800}', now_ms)
Traceback (most recent call last):
...
streaming.events.InvalidEventError: invalid event: user_id: expected a non-empty string (spaces are trimmed), got ''
>>> batch = decode_batch([b'{"user_id": "u1", "item_id": "i9", "timestamp": 1714564800000}', b"oops"], now_ms)
>>> batch.events.column("user_id").to_pylist(), batch.positions.tolist(), batch.rejected[0][1].field
(['u1'], [0], '(event)')
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from streaming.event_rules import (
    _EPOCH,
    _ONE_MS,
    FIELDS,
    MAX_EVENT_BYTES,
    MAX_FUTURE_SKEW,
    RuleViolation,
    check_context,
    check_event_type,
    check_text,
    check_timestamp_ms,
    check_value,
    derive_event_id,
    timestamp_to_ms,
)
from streaming.events import Interaction, InvalidEventError, decode_event
from streaming.normalize import EVENT_SCHEMA, normalize_columns

_ALLOWED = frozenset(FIELDS)
_loads = json.loads
_dumps_compact = json.JSONEncoder(separators=(",", ":")).encode


class DecodedEvent(NamedTuple):
    """A validated event as plain values (``context`` is compact JSON text, or None)."""

    event_id: str
    user_id: str
    item_id: str
    timestamp_ms: int
    event_type: str
    value: float
    context: str | None

    @property
    def timestamp(self) -> float:
        """Unix seconds, as ``learn_one`` takes them."""
        return self.timestamp_ms / 1000


def now_ms() -> int:
    """The current time in unix milliseconds (what `decode_record` compares timestamps with)."""
    return (datetime.now(timezone.utc) - _EPOCH) // _ONE_MS


def from_interaction(event: Interaction) -> DecodedEvent:
    """The `DecodedEvent` of a validated `Interaction`.

    >>> from streaming.events import Interaction
    >>> from_interaction(Interaction(user_id="u", item_id="i", timestamp=1, context={"a": 1})).context
    '{"a":1}'
    """
    context = None if event.context is None else _dumps_compact(event.context)
    return DecodedEvent(event.event_id, event.user_id, event.item_id, event.timestamp_ms,
                        event.event_type, event.value, context)


def decode_record(raw: bytes, now_ms: int, max_future_skew: timedelta = MAX_FUTURE_SKEW) -> DecodedEvent:
    """Decode one message value, or raise `streaming.events.InvalidEventError` with the reasons.

    ``now_ms`` (unix ms) is the time timestamps may not exceed by more than ``max_future_skew``;
    the worker reads the clock once per polled batch.
    """
    if raw is not None and len(raw) <= MAX_EVENT_BYTES:
        try:
            data = _loads(raw)
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            data = None
        if type(data) is dict and data.keys() <= _ALLOWED:
            try:
                return _checked(data, now_ms, max_future_skew)
            except (RuleViolation, KeyError):
                pass
    now = _EPOCH + timedelta(milliseconds=now_ms)
    return from_interaction(decode_event(b"null" if raw is None else raw, now=now,
                                         max_future_skew=max_future_skew))


def _checked(data: dict, now_ms: int, max_future_skew: timedelta) -> DecodedEvent:
    """The fast path: the `streaming.event_rules` checks in the order `Interaction` runs them."""
    user_id = check_text(data["user_id"])
    item_id = check_text(data["item_id"])
    timestamp_ms = check_timestamp_ms(timestamp_to_ms(data["timestamp"]), now_ms, max_future_skew)
    event_type = check_event_type(data.get("event_type"))
    value = check_value(data.get("value"))
    context = data.get("context")
    if context is not None:
        context = _dumps_compact(check_context(context))
    event_id = data.get("event_id")
    if event_id is None:
        event_id = derive_event_id(user_id, item_id, timestamp_ms, event_type, value)
    else:
        event_id = check_text(event_id)
    return DecodedEvent(event_id, user_id, item_id, timestamp_ms, event_type, value, context)


_BATCH_FIELDS = ("event_id", "user_id", "item_id", "timestamp", "event_type", "value")
_PARSE_OPTIONS = [pajson.ParseOptions(  # unix-ms timestamps first, then text ones
    explicit_schema=pa.schema([(name, kind if name == "timestamp" else pa.float64() if name == "value" else pa.string())
                               for name in _BATCH_FIELDS]),
    unexpected_field_behavior="error", newlines_in_values=False) for kind in (pa.int64(), pa.string())]
MIN_CHUNK = 256
"""Fewer messages than this are decoded one by one: Arrow's fixed cost (~1 ms) outweighs its speed."""


@dataclass
class DecodedBatch:
    """The verdicts on a batch of message values.

    ``events`` holds the valid events in `streaming.normalize.EVENT_SCHEMA`, in input order;
    ``positions[k]`` is the index in the input of ``events`` row k; ``rejected`` lists
    (index, error) for every invalid message, in input order.
    """

    events: pa.Table
    positions: np.ndarray
    rejected: list[tuple[int, InvalidEventError]]

    def learn_columns(self) -> tuple[list, list, list, list, list, list]:
        """(event ids, users, items, unix ms, event types, values) as Python lists."""
        table = self.events
        ids, users, items, types = (table.column(name).to_pylist()
                                    for name in ("event_id", "user_id", "item_id", "event_type"))
        stamps = table.column("timestamp").cast(pa.int64()).to_pylist()
        return ids, users, items, stamps, types, table.column("value").to_pylist()


class _Verdicts:
    """Accumulates good tables (with input positions) and rejections while a batch is decoded."""

    def __init__(self, now_ms: int, skew: timedelta) -> None:
        self.now_ms, self.skew = now_ms, skew
        self.tables: list[pa.Table] = []
        self.positions: list[np.ndarray] = []
        self.rejected: list[tuple[int, InvalidEventError]] = []

    def good(self, table: pa.Table, positions: np.ndarray) -> None:
        if table.num_rows:
            self.tables.append(table)
            self.positions.append(positions)

    def one_by_one(self, indexed: list[tuple[int, bytes | None]]) -> None:
        good, where = [], []
        for index, value in indexed:
            try:
                good.append(decode_record(value, self.now_ms, self.skew))
                where.append(index)
            except InvalidEventError as error:
                self.rejected.append((index, error))
        if good:
            self.good(decoded_table(good), np.array(where, dtype=np.int64))

    def batch(self) -> DecodedBatch:
        if not self.tables:
            return DecodedBatch(EVENT_SCHEMA.empty_table(), np.zeros(0, dtype=np.int64), self.rejected)
        events, where = pa.concat_tables(self.tables), np.concatenate(self.positions)
        if len(self.tables) > 1:
            order = np.argsort(where, kind="stable")
            events, where = events.take(pa.array(order)), where[order]
        self.rejected.sort(key=lambda item: item[0])
        return DecodedBatch(events, where, self.rejected)


def decode_batch(values: Sequence[bytes | None], now_ms: int,
                 max_future_skew: timedelta = MAX_FUTURE_SKEW) -> DecodedBatch:
    """Decode a batch of message values (see the module docstring for how)."""
    verdicts = _Verdicts(now_ms, max_future_skew)
    plain = [index for index, value in enumerate(values) if _plain(value)]
    if len(plain) < MIN_CHUNK:
        verdicts.one_by_one(list(enumerate(values)))
        return verdicts.batch()
    if len(plain) < len(values):
        chosen = set(plain)
        verdicts.one_by_one([(k, v) for k, v in enumerate(values) if k not in chosen])
    _decode_chunk(np.array(plain, dtype=np.int64), [values[k] for k in plain], verdicts)
    return verdicts.batch()


def _plain(value: bytes | None) -> bool:
    """Whether Arrow can take the message: one JSON object on one line, without a context."""
    return (value is not None and len(value) <= MAX_EVENT_BYTES and value[:1] == b"{" and value[-1:] == b"}"
            and b"\n" not in value and b"\r" not in value and b'"context"' not in value)


def _decode_chunk(indices: np.ndarray, values: list[bytes], verdicts: _Verdicts) -> None:
    """Decode ``values`` (at input ``indices``) with Arrow, bisecting when it cannot parse them."""
    if len(values) < MIN_CHUNK:
        verdicts.one_by_one(list(zip(indices.tolist(), values)))
        return
    table = _parse(values)
    if table is None:
        half = len(values) // 2
        _decode_chunk(indices[:half], values[:half], verdicts)
        _decode_chunk(indices[half:], values[half:], verdicts)
        return
    raw = {name: table.column(name).combine_chunks() for name in _BATCH_FIELDS}
    batch = normalize_columns(raw, np.arange(len(values)), now_ms=verdicts.now_ms,
                              max_future_skew=verdicts.skew, max_reasons=0)
    verdicts.good(_fill_event_ids(batch.table), indices[batch.rows])
    # the per-message path gives the reasons (and the verdict, should the two ever differ)
    verdicts.one_by_one([(int(indices[row]), values[row]) for row in batch.bad_rows.tolist()])


def _parse(values: list[bytes]) -> pa.Table | None:
    """One Arrow table with a row per value, or None when some value needs the per-message path."""
    data = b"\n".join(values)
    read_options = pajson.ReadOptions(use_threads=False, block_size=len(data) + 1)
    for parse_options in _PARSE_OPTIONS:
        try:
            table = pajson.read_json(pa.BufferReader(data), read_options=read_options,
                                     parse_options=parse_options)
            table.validate(full=True)  # Arrow does not check UTF-8 while parsing
        except pa.ArrowInvalid as exc:
            if "timestamp" in str(exc):
                continue
            return None
        return table if table.num_rows == len(values) else None
    return None


def _fill_event_ids(table: pa.Table) -> pa.Table:
    """Derive the ids of events sent without one (as `Interaction` does)."""
    ids = table.column("event_id")
    if not ids.null_count:
        return table
    users, items, types = (table.column(n).to_pylist() for n in ("user_id", "item_id", "event_type"))
    stamps, values = table.column("timestamp").cast(pa.int64()).to_pylist(), table.column("value").to_pylist()
    filled = [event_id if event_id is not None else derive_event_id(users[k], items[k], stamps[k], types[k], values[k])
              for k, event_id in enumerate(ids.to_pylist())]
    return table.set_column(0, "event_id", pa.array(filled, pa.string()))


def decoded_table(events: Sequence[DecodedEvent]) -> pa.Table:
    """`DecodedEvent` values as a table in `streaming.normalize.EVENT_SCHEMA`.

    >>> decoded_table([DecodedEvent("e", "u", "i", 1000, "click", 1.0, None)]).column("timestamp")[0]
    <pyarrow.TimestampScalar: '1970-01-01T00:00:01.000+0000'>
    """
    ids, users, items, stamps, types, values, contexts = zip(*events)
    return pa.table({
        "event_id": pa.array(ids, pa.string()), "user_id": pa.array(users, pa.string()),
        "item_id": pa.array(items, pa.string()),
        "timestamp": pa.array(stamps, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "event_type": pa.array(types, pa.string()), "value": pa.array(values, pa.float64()),
        "context": pa.array(contexts, pa.string())}, schema=EVENT_SCHEMA)
