"""`produce_events` and `fastslow produce` on a real broker: keys, values, order, partitions, rate."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fastslow.cli import app
from streaming.decode import decode_record, now_ms
from streaming.kafka import make_consumer, make_producer
from streaming.partitioning import partition_of
from streaming.producer import TokenBucket, event_values, produce_events
from worker_fixtures import event_table, make_topics

pytestmark = pytest.mark.broker
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _consume_all(bootstrap: str, topic: str, count: int, timeout: float = 20.0) -> list:
    consumer = make_consumer(bootstrap, None)
    try:
        from kafka import TopicPartition

        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        records, deadline = [], time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def test_events_arrive_keyed_by_user_on_its_partition_in_order_with_their_ids(broker):
    topic, _ = make_topics(broker)
    table = event_table(300, users=30)
    producer = make_producer(broker)
    try:
        report = produce_events(producer, [table.slice(0, 100), table.slice(100)], topic)
    finally:
        producer.close()
    records = _consume_all(broker, topic, 300)
    assert report.events == len(records) == 300
    assert report.end_offsets == {p: n for p, n in _counts(records).items()}
    rows = table.to_pylist()
    by_user = defaultdict(list)
    for record in records:
        event = decode_record(record.value, now_ms())
        assert record.key == event.user_id.encode()
        assert record.partition == partition_of(event.user_id, 4)
        by_user[event.user_id].append(event)
    for user, events in by_user.items():
        expected = [r for r in rows if r["user_id"] == user]
        assert [e.event_id for e in events] == [r["event_id"] for r in expected]  # per-user order kept
        assert [(e.item_id, e.timestamp_ms, e.event_type, e.value) for e in events] == [
            (r["item_id"], (r["timestamp"] - EPOCH) // timedelta(milliseconds=1), r["event_type"], r["value"])
            for r in expected]


def _counts(records) -> dict[int, int]:
    counts: dict[int, int] = defaultdict(int)
    for record in records:
        counts[record.partition] += 1
    return dict(counts)


def test_old_timestamps_and_context_survive_the_round_trip():
    table = event_table(2, start_ms=86_400_000)  # 1970-01-02: below the ms threshold
    table = table.set_column(6, "context", pa.array(['{"device":"ios","n":1}', None]))
    first, second = [decode_record(v, now_ms()) for v in event_values(table)]
    assert (first.timestamp_ms, first.context, second.timestamp_ms) == (86_400_000, '{"device":"ios","n":1}', 86_401_000)
    assert b'"timestamp":"1970-01-02T00:00:00.000Z"' in event_values(table)[0]


def test_rate_is_held_on_average(broker):
    topic, _ = make_topics(broker)
    producer = make_producer(broker)
    try:
        started = time.perf_counter()
        report = produce_events(producer, event_table(300), topic, rate=1000)
        elapsed = time.perf_counter() - started
    finally:
        producer.close()
    assert report.events == 300
    assert elapsed >= 0.25  # 300 events at 1000/s, the first burst of 50 free
    assert report.events_per_s <= 1200


def test_token_bucket_sleeps_for_the_debt_only():
    clock = [0.0]
    bucket = TokenBucket(200, burst=20, clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    assert bucket.take(20) == 0.0
    assert bucket.take(40) == pytest.approx(0.2)
    clock[0] += 1.0  # an idle second refills only up to the burst
    assert bucket.take(20) == 0.0 and bucket.take(2) == pytest.approx(0.01)
    assert TokenBucket(0).take(10**6) == 0.0


def test_produce_command_streams_a_log_and_prints_a_json_summary(broker, tmp_path):
    topic, _ = make_topics(broker)
    log = tmp_path / "events.parquet"
    pq.write_table(event_table(120), log)
    result = CliRunner().invoke(app, ["produce", str(log), "--topic", topic, "--rate", "0",
                                      "--bootstrap-servers", broker])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["events"] == 120 and summary["topic"] == topic and summary["skipped"] == 0
    assert sum(summary["end_offsets"].values()) == 120


def test_produce_command_without_a_broker_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTSLOW_KAFKA_BOOTSTRAP", raising=False)
    log = tmp_path / "events.parquet"
    pq.write_table(event_table(3), log)
    result = CliRunner().invoke(app, ["produce", str(log)])
    assert result.exit_code == 2
    assert "fastslow broker" in result.stderr and "--bootstrap-servers" in result.stderr
