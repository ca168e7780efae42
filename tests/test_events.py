"""The event schema: every bad input is refused with field, value and expectation; good
inputs normalise the way the docs say; derived ids are stable and computed as documented."""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from streaming import events as ev
from streaming.events import Interaction, InvalidEventError, decode_event, decode_events, derive_event_id, validate_event

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)
GOOD = {"user_id": "u1", "item_id": "i9", "timestamp": "2024-05-01T12:00:00Z"}
MAY_1_NOON_MS = 1714564800000  # 2024-05-01T12:00:00Z: 19844 days * 86400 s + 12 h, times 1000


def _decode(data) -> Interaction:
    return decode_event(json.dumps(data).encode(), now=NOW)


BAD_FIELDS = [
    # (field, value, expected reason); each replaces one field of GOOD
    ("user_id", "", ev.REASON_EMPTY),
    ("user_id", "   ", ev.REASON_EMPTY),
    ("user_id", None, ev.REASON_MISSING),
    ("user_id", ["u1"], ev.REASON_NOT_TEXT),
    ("user_id", True, ev.REASON_NOT_TEXT),
    ("user_id", 1.5, ev.REASON_NOT_TEXT),
    ("user_id", "u\n1", ev.REASON_CONTROL),
    ("user_id", "u\x001", ev.REASON_CONTROL),
    ("user_id", "x" * 257, ev.REASON_TOO_LONG),
    ("item_id", "", ev.REASON_EMPTY),
    ("item_id", {"id": 1}, ev.REASON_NOT_TEXT),
    ("item_id", "i\t9", ev.REASON_CONTROL),
    ("event_id", "", ev.REASON_EMPTY),
    ("event_id", "e" * 300, ev.REASON_TOO_LONG),
    ("timestamp", "yesterday", ev.REASON_TIME),
    ("timestamp", True, ev.REASON_TIME),
    ("timestamp", {"s": 1}, ev.REASON_TIME),
    ("timestamp", "2024-05-01", ev.REASON_TIME),
    ("timestamp", "2024-05-01T12:00:00", ev.REASON_NAIVE),
    ("timestamp", "2024-05-01 12:00", ev.REASON_NAIVE),
    ("timestamp", "2024-02-30T00:00:00Z", ev.REASON_BAD_DATE),
    ("timestamp", "2024-05-01T25:00:00Z", ev.REASON_BAD_DATE),
    ("timestamp", -1, ev.REASON_BEFORE_EPOCH),
    ("timestamp", "1969-12-31T23:59:59Z", ev.REASON_BEFORE_EPOCH),
    ("timestamp", "2024-06-02T00:00:00.001Z", ev.future_reason(1717200000000, ev.MAX_FUTURE_SKEW)),
    ("timestamp", None, ev.REASON_MISSING),
    ("event_type", "like", ev.REASON_EVENT_TYPE),
    ("event_type", "", ev.REASON_EVENT_TYPE),
    ("event_type", 3, ev.REASON_EVENT_TYPE),
    ("value", "abc", ev.REASON_VALUE),
    ("value", "", ev.REASON_VALUE),
    ("value", True, ev.REASON_VALUE),
    ("value", [1], ev.REASON_VALUE),
    ("value", "1e400", ev.REASON_VALUE),
    ("value", "nan", ev.REASON_VALUE),
    ("context", [1], ev.REASON_CONTEXT),
    ("context", "device=ios", ev.REASON_CONTEXT),
    ("context", {"device": {"os": "ios"}}, ev.REASON_CONTEXT + ", key 'device' holds {'os': 'ios'}"),
    ("context", {"tags": ["a"]}, ev.REASON_CONTEXT + ", key 'tags' holds ['a']"),
    ("context", {f"k{i}": i for i in range(33)}, "expected at most 32 keys, got 33"),
    ("context", {"": 1}, "expected keys of 1 to 64 characters, got ''"),
    ("context", {"q": "x" * 1025}, "expected strings of at most 1024 characters without control characters"),
    ("context", {"q": "a\nb"}, "expected strings of at most 1024 characters without control characters"),
    ("surprise", 1, ev.REASON_UNKNOWN_FIELD),
]


@pytest.mark.parametrize(("field", "value", "reason"), BAD_FIELDS,
                         ids=[f"{f}={str(v)[:20]!r}" for f, v, _ in BAD_FIELDS])
def test_bad_field_is_refused_naming_field_value_and_expectation(field, value, reason):
    with pytest.raises(InvalidEventError) as caught:
        _decode(GOOD | {field: value})
    error = caught.value
    assert (error.field, error.value) == (field, value)
    assert error.reason.startswith(reason)
    assert len(error.problems) == 1
    message = str(error)
    assert message.startswith(f"invalid event: {field}: {reason}")
    assert f", got {ev.show_value(value)}" in message


@pytest.mark.parametrize("field", ["user_id", "item_id", "timestamp"])
def test_missing_required_field_is_named(field):
    data = {k: v for k, v in GOOD.items() if k != field}
    with pytest.raises(InvalidEventError) as caught:
        _decode(data)
    assert (caught.value.field, caught.value.reason, caught.value.value) == (field, ev.REASON_MISSING, None)


def test_non_finite_numbers_in_json_are_refused():
    raw = b'{"user_id": "u", "item_id": "i", "timestamp": 1714564800, "value": NaN, "context": {"x": Infinity}}'
    with pytest.raises(InvalidEventError) as caught:
        decode_event(raw, now=NOW)
    assert [(p.field, p.reason) for p in caught.value.problems] == [
        ("value", ev.REASON_VALUE), ("context", "expected finite numbers, key 'x' holds inf")]


@pytest.mark.parametrize(("raw", "reason"), [
    (b"not json", "expected UTF-8 JSON"),
    (b"\xff\xfe", "expected UTF-8 JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'"event"', "expected a JSON object"),
    (b'{"user_id": "' + b"u" * ev.MAX_EVENT_BYTES + b'"}', f"expected at most {ev.MAX_EVENT_BYTES} bytes"),
])
def test_undecodable_message_is_refused_as_a_whole(raw, reason):
    with pytest.raises(InvalidEventError) as caught:
        decode_event(raw, now=NOW)
    assert caught.value.field == "(event)"
    assert caught.value.reason.startswith(reason)


def test_every_problem_of_an_event_is_listed():
    with pytest.raises(InvalidEventError) as caught:
        _decode({"user_id": "", "item_id": "i", "timestamp": "soon", "value": "x", "extra": 1})
    assert [p.field for p in caught.value.problems] == ["user_id", "timestamp", "value", "extra"]


def test_pydantic_errors_carry_field_value_and_expectation_for_http_422():
    with pytest.raises(ValidationError) as caught:
        Interaction(user_id=" ", item_id="i", timestamp="2024-05-01T12:00:00Z")
    (error,) = caught.value.errors()
    assert (error["loc"], error["input"], error["msg"]) == (("user_id",), " ", ev.REASON_EMPTY)


@pytest.mark.parametrize(("value", "expected_ms"), [
    (1714564800, MAY_1_NOON_MS),  # unix seconds
    (1714564800.1234, MAY_1_NOON_MS + 123),  # fractional seconds round to the ms
    (1714564800.1236, MAY_1_NOON_MS + 124),
    (1714564800123, MAY_1_NOON_MS + 123),  # unix milliseconds (> 1e11)
    ("1714564800", MAY_1_NOON_MS),  # numeric strings
    ("1714564800123", MAY_1_NOON_MS + 123),
    (" 1714564800.5 ", MAY_1_NOON_MS + 500),
    ("2024-05-01T12:00:00Z", MAY_1_NOON_MS),  # ISO-8601 with offsets
    ("2024-05-01T14:00:00+02:00", MAY_1_NOON_MS),
    ("2024-05-01T10:30:00-0130", MAY_1_NOON_MS),
    ("2024-05-01T13:00:00+01", MAY_1_NOON_MS),
    ("2024-05-01 12:00Z", MAY_1_NOON_MS),
    ("2024-05-01T12:00:00.1239Z", MAY_1_NOON_MS + 123),  # ISO fractions truncate
    (datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2))), MAY_1_NOON_MS),
    (100000000001, 100000000001),  # just above the threshold: ms (1973-03-03T09:46:40.001Z)
    (0, 0),
])
def test_timestamp_forms_normalise_to_utc_milliseconds(value, expected_ms):
    event = validate_event(GOOD | {"timestamp": value}, now=NOW)
    assert event.timestamp_ms == expected_ms
    assert event.timestamp.utcoffset() == timedelta(0)
    assert event.to_event().timestamp == expected_ms / 1000


def test_threshold_itself_is_seconds():
    # 1e11 s is the year 5138: far in the future, so refused (not read as 1973 in ms).
    with pytest.raises(InvalidEventError, match="expected a time at most"):
        validate_event(GOOD | {"timestamp": 100000000000}, now=NOW)
    assert ev.format_timestamp_ms(100000000001) == "1973-03-03T09:46:40.001Z"


def test_naive_times_are_refused_unless_assumed_utc():
    naive = datetime(2024, 5, 1, 12)
    for value in (naive, "2024-05-01T12:00:00"):
        with pytest.raises(InvalidEventError, match="with a UTC offset"):
            validate_event(GOOD | {"timestamp": value}, now=NOW)
        assert validate_event(GOOD | {"timestamp": value}, now=NOW, assume_utc=True).timestamp_ms == MAY_1_NOON_MS


def test_future_skew_can_be_set_by_the_caller():
    two_hours_ahead = (NOW + timedelta(hours=2)).isoformat()
    assert validate_event(GOOD | {"timestamp": two_hours_ahead}, now=NOW).timestamp == NOW + timedelta(hours=2)
    with pytest.raises(InvalidEventError) as caught:
        validate_event(GOOD | {"timestamp": two_hours_ahead}, now=NOW, max_future_skew=timedelta(hours=1))
    assert caught.value.reason == "expected a time at most 1:00:00 after now (2024-06-01T00:00:00.000Z)"


def test_defaults_and_normalisation():
    event = _decode({"user_id": 42, "item_id": "  i9 ", "timestamp": 1714564800, "event_type": " Purchase"})
    assert (event.user_id, event.item_id, event.event_type, event.value, event.context) == ("42", "i9", "purchase", 1.0, None)
    assert _decode(GOOD | {"value": "2.5", "event_type": None}).to_event()[3:] == ("click", 2.5)


def test_derived_id_is_blake2b_of_the_documented_content():
    content = b"u1\x1fi9\x1fclick\x1f" + struct.pack("<qd", MAY_1_NOON_MS, 1.0)
    expected = hashlib.blake2b(content, digest_size=10).hexdigest()
    assert derive_event_id("u1", "i9", MAY_1_NOON_MS, "click", 1.0) == expected
    assert _decode(GOOD).event_id == expected
    assert _decode(GOOD | {"timestamp": MAY_1_NOON_MS}).event_id == expected  # same content, other form
    repeat = hashlib.blake2b(content + b"\x1f2", digest_size=10).hexdigest()
    assert derive_event_id("u1", "i9", MAY_1_NOON_MS, "click", 1.0, occurrence=2) == repeat


def test_derived_id_changes_with_any_content_field_and_not_with_negative_zero():
    base = derive_event_id("u1", "i9", MAY_1_NOON_MS, "click", 0.0)
    assert derive_event_id("u1", "i9", MAY_1_NOON_MS, "click", -0.0) == base
    variants = [("u2", "i9", MAY_1_NOON_MS, "click", 0.0), ("u1", "i8", MAY_1_NOON_MS, "click", 0.0),
                ("u1", "i9", MAY_1_NOON_MS + 1, "click", 0.0), ("u1", "i9", MAY_1_NOON_MS, "view", 0.0),
                ("u1", "i9", MAY_1_NOON_MS, "click", 1.0), ("u1", "i9", MAY_1_NOON_MS, "click", 0.0, 1)]
    ids = {derive_event_id(*variant) for variant in variants}
    assert len(ids) == len(variants) and base not in ids


def test_given_event_id_is_kept():
    assert _decode(GOOD | {"event_id": " order-7 "}).event_id == "order-7"


def test_json_bytes_round_trip_to_an_equal_event():
    event = _decode(GOOD | {"value": 3, "event_type": "cart", "context": {"device": "ios", "hour": 9, "new": True,
                                                                           "ref": None, "score": 0.5}})
    assert decode_event(event.to_json_bytes(), now=NOW) == event
    assert json.loads(event.to_json_bytes())["timestamp"] == "2024-05-01T12:00:00.000Z"
    assert "context" not in json.loads(_decode(GOOD).to_json_bytes())


def test_to_event_gives_learn_one_arguments():
    event = _decode(GOOD | {"event_type": "rating", "value": 4})
    assert tuple(event.to_event()) == ("u1", "i9", 1714564800.0, "rating", 4.0)
    assert event.to_event()._asdict()["timestamp"] == 1714564800.0


def test_decode_events_splits_good_and_bad_with_positions():
    raws = [json.dumps(GOOD).encode(), b"{", json.dumps(GOOD | {"item_id": ""}).encode()]
    good, bad = decode_events(raws, now=NOW)
    assert [e.item_id for e in good] == ["i9"]
    assert [(position, error.field) for position, error in bad] == [(1, "(event)"), (2, "item_id")]


def test_long_values_are_shortened_in_messages():
    with pytest.raises(InvalidEventError) as caught:
        _decode(GOOD | {"user_id": "x" * 10_000})
    assert len(str(caught.value)) < 300
    assert "(10000 characters)" in str(caught.value)
