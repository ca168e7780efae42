"""The worker's fast decoders reach exactly the verdicts of the pydantic `Interaction` edge."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming import events as ev
from streaming.decode import MIN_CHUNK, DecodedEvent, decode_batch, decode_record, from_interaction

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)
NOW_MS = 1717200000000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i9", "timestamp": 1714564800123,
        "event_type": "view", "value": 2.0}


def _raw(data) -> bytes:
    return json.dumps(data).encode()


def verdict_of_reference(raw: bytes | None):
    """What `decode_event` (pydantic) says: the event, or (field, reason, message)."""
    try:
        return from_interaction(ev.decode_event(b"null" if raw is None else raw, now=NOW))
    except ev.InvalidEventError as error:
        return (error.field, error.reason, str(error))


def verdict_of_fast(raw: bytes | None):
    try:
        return decode_record(raw, NOW_MS)
    except ev.InvalidEventError as error:
        return (error.field, error.reason, str(error))


def verdicts_of_batch(raws: list[bytes | None]) -> list:
    batch = decode_batch(raws, NOW_MS)
    out: list = [None] * len(raws)
    for position, row in zip(batch.positions.tolist(), batch.events.to_pylist()):
        out[position] = DecodedEvent(row["event_id"], row["user_id"], row["item_id"],
                                     (row["timestamp"] - EPOCH) // timedelta(milliseconds=1), row["event_type"], row["value"],
                                     row["context"])
    for position, error in batch.rejected:
        assert out[position] is None, f"message {position} both accepted and rejected"
        out[position] = (error.field, error.reason, str(error))
    return out


CASES = [
    GOOD,
    {"user_id": "u1", "item_id": "i9", "timestamp": 1714564800},  # seconds, derived id, defaults
    {"user_id": 42, "item_id": " i9 ", "timestamp": "2024-05-01T14:00:00.1239+02:00", "event_type": " Purchase "},
    {"user_id": "u1", "item_id": "i9", "timestamp": "1714564800.5", "value": " 2.5 ", "context": {"device": "ios", "n": 1}},
    {"user_id": "u1", "item_id": "i9", "timestamp": 1714564800, "value": None, "event_type": None, "event_id": None},
    # invalid ones
    {"user_id": "", "item_id": "i9", "timestamp": 1714564800},
    {"item_id": "i9", "timestamp": 1714564800},
    {"user_id": ["u"], "item_id": "i9", "timestamp": 1714564800},
    {"user_id": "u1", "item_id": "i9", "timestamp": 4102444800},  # 2100: far in the future
    {"user_id": "u1", "item_id": "i9", "timestamp": NOW_MS + 2 * 86_400_000},  # beyond the 1-day skew
    {"user_id": "u1", "item_id": "i9", "timestamp": NOW_MS + 23 * 3_600_000},  # within it: valid
    {"user_id": "u1", "item_id": "i9", "timestamp": "2024-05-01T12:00:00"},  # no offset
    {"user_id": "u1", "item_id": "i9", "timestamp": 1714564800, "event_type": "like"},
    {"user_id": "u1", "item_id": "i9", "timestamp": 1714564800, "value": float("nan")},
    {"user_id": "u1", "item_id": "i9", "timestamp": 1714564800, "colour": "red"},
    {"user_id": "u\x00", "item_id": "i9", "timestamp": 1714564800},
]
RAW_CASES = [b"not json", b"[1, 2]", b"", None, b"\xff\xfe", b'{"user_id": "a", "user_id": "b"}',
             b'{"user_id": "u1", "item_id": "i9", "timestamp": 1714564800, "x": 1' + b" " * ev.MAX_EVENT_BYTES + b"}",
             b'{"user_id":"u1",\n"item_id":"i9","timestamp":1714564800}']


def test_fast_decoder_agrees_with_pydantic_on_listed_cases():
    for raw in [_raw(case) for case in CASES] + RAW_CASES:
        assert verdict_of_fast(raw) == verdict_of_reference(raw), raw


def _among_good(raw: bytes | None, before: int = MIN_CHUNK // 2, after: int = MIN_CHUNK // 2) -> list:
    """``raw`` between valid messages: Arrow reads the batch unless ``raw`` itself stops it."""
    good = [_raw(GOOD | {"event_id": f"e{k}"}) for k in range(before + after)]
    return good[:before] + [raw] + good[before:]


def test_batch_decoder_agrees_with_pydantic_on_listed_cases():
    for raw in [_raw(case) for case in CASES] + RAW_CASES:
        raws = _among_good(raw)
        assert verdicts_of_batch(raws) == [verdict_of_reference(r) for r in raws], raw


def test_batch_decoder_bisects_around_messages_arrow_cannot_read():
    good = [_raw(GOOD | {"event_id": f"e{k}"}) for k in range(3 * MIN_CHUNK)]
    raws = good[:300] + [_raw(case) for case in CASES] + RAW_CASES + good[300:]
    assert verdicts_of_batch(raws) == [verdict_of_reference(raw) for raw in raws]


def test_batch_decoder_takes_text_timestamps_and_missing_ids():
    raws = [_raw({"user_id": f"u{k}", "item_id": "i", "timestamp": "2024-05-01T12:00:00Z"}) for k in range(MIN_CHUNK)]
    batch = decode_batch(raws, NOW_MS)
    assert batch.events.num_rows == MIN_CHUNK and not batch.rejected
    assert batch.events.column("event_id")[0].as_py() == ev.derive_event_id("u0", "i", 1714564800000, "click", 1.0)


valid_ids = st.one_of(st.sampled_from(["u1", " u2 ", "i-3", "x" * 256, "é"]), st.integers(0, 10**12))
valid_times = st.one_of(st.integers(1_500_000_000, 1_700_000_000), st.integers(1_500_000_000_000, 1_700_000_000_000),
                        st.floats(1.5e9, 1.7e9), st.sampled_from(["2024-05-01T12:00:00Z", "2024-05-01 12:00:00.5+0200",
                                                                   "1714564800", " 1714564800.5 ", "1714564800123"]))
valid_payloads = st.fixed_dictionaries(
    {"user_id": valid_ids, "item_id": valid_ids, "timestamp": valid_times},
    optional={"event_id": valid_ids, "event_type": st.sampled_from([*ev.EVENT_TYPES, " VIEW ", None]),
              "value": st.one_of(st.floats(-1e6, 1e6), st.integers(-1000, 1000), st.just("2.5"), st.none()),
              "context": st.one_of(st.none(), st.dictionaries(st.text("abc", min_size=1, max_size=3),
                                                              st.one_of(st.integers(), st.text(max_size=3), st.none(),
                                                                        st.booleans()), max_size=3))})
wild_values = st.one_of(
    st.sampled_from(["", "  ", "a\nb", "x" * 257, "like", "2024-05-01T12:00:00", "2024-02-30T00:00:00Z", "yesterday",
                     " 1e3 ", "\u0000"]),
    st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True), st.none(), st.booleans(),
    st.text(max_size=4), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
payloads = st.builds(lambda base, changes, dropped: {k: v for k, v in {**base, **changes}.items() if k not in dropped},
                     valid_payloads,
                     st.dictionaries(st.sampled_from([*ev.FIELDS, "extra"]), wild_values, max_size=2),
                     st.sets(st.sampled_from(["user_id", "item_id", "timestamp"]), max_size=1))
messages = st.one_of(payloads.map(lambda d: json.dumps(d).encode()), st.binary(max_size=40),
                     st.sampled_from([b"[]", b"null", b"{}", b'"x"', b'{"user_id": "u1"} {"item_id": "i1"}']))


@settings(max_examples=400, deadline=None)
@given(messages)
def test_fast_decoder_agrees_with_pydantic_on_generated_messages(raw):
    assert verdict_of_fast(raw) == verdict_of_reference(raw)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_batch_decoder_agrees_with_pydantic_on_generated_messages(raw):
    raws = _among_good(raw)
    assert verdicts_of_batch(raws) == [verdict_of_reference(r) for r in raws]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=2, max_size=12), st.integers(0, MIN_CHUNK))
def test_batch_decoder_agrees_with_pydantic_on_generated_batches(mixed, split):
    good = [_raw(GOOD | {"event_id": f"e{k}"}) for k in range(MIN_CHUNK)]
    raws = good[:split] + mixed + good[split:]
    assert verdicts_of_batch(raws) == [verdict_of_reference(raw) for raw in raws]
