"""The worker on a real broker, in-process: learning, dead letters, duplicates, archive, commits."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pytest

from evaluation.peers import ItemKNN
from streaming import events as ev
from streaming.archive import archive_dir, iter_archive
from streaming.dlq import DeadLetter
from streaming.kafka import committed_offsets, make_consumer, make_producer
from streaming.producer import event_values, produce_events
from streaming.worker import Worker
from worker_fixtures import BASE_MS, UserItemCounts, event_table, make_topics, replay, unique

pytestmark = pytest.mark.broker


def _worker(broker: str, topic: str, dlq: str, model, data_dir, **options) -> Worker:
    return Worker(model, broker, topic=topic, dlq_topic=dlq, group_id=unique("group"), data_dir=data_dir,
                  worker_id="w1", flush_interval_s=0.2, **options)


def _table(rows: list[tuple[str, str]], start_ms: int = BASE_MS, prefix: str = "e") -> pa.Table:
    n = len(rows)
    return pa.table({"event_id": [f"{prefix}{k}" for k in range(n)], "user_id": [u for u, _ in rows],
                     "item_id": [i for _, i in rows],
                     "timestamp": pa.array([start_ms + 1000 * k for k in range(n)]).cast(pa.timestamp("ms", tz="UTC")),
                     "event_type": ["click"] * n, "value": [1.0] * n, "context": pa.nulls(n, pa.string())})


def _send(broker: str, topic: str, table: pa.Table) -> dict[int, int]:
    producer = make_producer(broker)
    try:
        return produce_events(producer, table, topic).end_offsets
    finally:
        producer.close()


def test_produced_events_change_that_users_recommendations_and_are_archived_and_committed(broker, tmp_path):
    topic, dlq = make_topics(broker)
    history = [(f"a{k}", item) for k in range(20) for item in ("x", "y")]  # x and y go together
    history += [(f"b{k}", item) for k in range(20) for item in ("z", "w")]  # z and w go together
    first = _table(history + [("target", "w")])
    _send(broker, topic, first)
    with _worker(broker, topic, dlq, ItemKNN(), tmp_path) as worker:
        assert worker.run(until=lambda: worker.stats.events_applied >= first.num_rows, timeout=30)
        with worker.lock:
            before = worker.model.recommend("target", 2, exclude={"w"})
        then = _table([("target", "x")], start_ms=BASE_MS + 10**6, prefix="late")
        ends = _send(broker, topic, then)
        assert worker.run(until=lambda: worker.stats.events_applied > first.num_rows, timeout=30)
        with worker.lock:
            after = worker.model.recommend("target", 2, exclude={"w", "x"})
        assert worker.stats.as_dict()["dlq"] == 0
    assert before[0] == "z" and after[0] == "y"  # the new event moved the user towards x's company
    archived = sorted(i for t in iter_archive(archive_dir(tmp_path, topic)) for i in t.column("event_id").to_pylist())
    assert archived == sorted(first.column("event_id").to_pylist() + ["late0"])
    committed = committed_offsets(broker, worker.group_id, topic)
    assert sum(o or 0 for o in committed.values()) == first.num_rows + 1 and committed[next(iter(ends))] is not None


def _good(k: int) -> bytes:
    return json.dumps({"event_id": f"g{k}", "user_id": f"u{k % 5}", "item_id": f"i{k % 7}",
                       "timestamp": BASE_MS + k}).encode()


BAD = [  # (message value, field at fault, start of the reason)
    (b"not json", "(event)", "expected UTF-8 JSON"),
    (b"[1, 2]", "(event)", "expected a JSON object"),
    (None, "(event)", "expected a JSON object"),
    (json.dumps({"item_id": "i1", "timestamp": BASE_MS}).encode(), "user_id", ev.REASON_MISSING),
    (json.dumps({"user_id": ["u1"], "item_id": "i1", "timestamp": BASE_MS}).encode(), "user_id", ev.REASON_NOT_TEXT),
    (json.dumps({"user_id": "u1", "item_id": 1.5, "timestamp": BASE_MS}).encode(), "item_id", ev.REASON_NOT_TEXT),
    (json.dumps({"user_id": "u1", "item_id": "  ", "timestamp": BASE_MS}).encode(), "item_id", ev.REASON_EMPTY),
    (json.dumps({"user_id": "u1", "item_id": "i1", "timestamp": "soon"}).encode(), "timestamp", ev.REASON_TIME),
    (json.dumps({"user_id": "u1", "item_id": "i1", "timestamp": 4102444800}).encode(), "timestamp",
     "expected a time at most"),
    (json.dumps({"user_id": "u1", "item_id": "i1", "timestamp": BASE_MS, "event_type": "like"}).encode(),
     "event_type", ev.REASON_EVENT_TYPE),
    (json.dumps({"user_id": "u1", "item_id": "i1", "timestamp": BASE_MS, "colour": "red"}).encode(),
     "colour", ev.REASON_UNKNOWN_FIELD),
    (json.dumps({"user_id": "u1", "item_id": "i1", "timestamp": BASE_MS, "pad": "x" * 70_000}).encode(),
     "(event)", f"expected at most {ev.MAX_EVENT_BYTES} bytes"),
]


def test_every_malformed_message_lands_in_the_dlq_with_its_reason_and_every_valid_one_is_applied(broker, tmp_path):
    topic, dlq = make_topics(broker)
    producer = make_producer(broker)
    sent = []
    for k in range(60):  # a bad message after every fifth good one
        sent.append(_good(k))
        if k % 5 == 0 and k // 5 < len(BAD):
            sent.append(BAD[k // 5][0])
    for value in sent:
        producer.send(topic, key=b"u-key", value=value, headers=[("trace", b"t-1")])
    producer.flush()
    producer.close()
    with _worker(broker, topic, dlq, UserItemCounts(), tmp_path) as worker:
        assert worker.run(until=lambda: worker.stats.records >= len(sent), timeout=30)
    assert (worker.stats.events_applied, worker.stats.dlq) == (60, len(BAD))
    expected = replay(UserItemCounts(), _decoded_table([_good(k) for k in range(60)]))
    assert worker.model.user_state() == expected.user_state()

    letters = _read_all(broker, dlq, len(BAD))
    assert len(letters) == len(BAD)
    for letter in letters:
        value, field, reason = BAD[[b[0] for b in BAD].index(letter.value)]
        assert (letter.field, letter.source_topic) == (field, topic)
        assert letter.reason.startswith(reason), (letter.reason, reason)
        assert letter.key == b"u-key" and ("trace", b"t-1") in letter.headers
    offsets = sorted(letter.source_offset for letter in letters)
    assert len(set(offsets)) == len(BAD)


def _decoded_table(raws: list[bytes]) -> pa.Table:
    from streaming.decode import decode_batch, now_ms

    return decode_batch(raws, now_ms()).events


def _read_all(broker: str, topic: str, count: int, timeout: float = 15.0) -> list[DeadLetter]:
    from kafka import TopicPartition

    consumer = make_consumer(broker, None)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        letters, deadline = [], time.monotonic() + timeout
        while len(letters) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                letters.extend(DeadLetter.from_record(record) for record in batch)
        return letters
    finally:
        consumer.close()


def test_duplicate_deliveries_are_applied_once(broker, tmp_path):
    topic, dlq = make_topics(broker)
    table = event_table(40, users=6)
    without_ids = [json.dumps({"user_id": "u1", "item_id": f"i{k}", "timestamp": BASE_MS + k}).encode()
                   for k in range(5)]
    producer = make_producer(broker)
    for _ in range(2):  # the log produced twice, and id-less events sent twice (same derived id)
        produce_events(producer, table, topic)
        for value in without_ids:
            producer.send(topic, key=b"u1", value=value)
    producer.flush()
    producer.close()
    with _worker(broker, topic, dlq, UserItemCounts(), tmp_path) as worker:
        assert worker.run(until=lambda: worker.stats.records >= 2 * 45, timeout=30)
    assert (worker.stats.events_applied, worker.stats.duplicates) == (45, 45)
    once = pa.concat_tables([table, _decoded_table(without_ids)])
    assert worker.model.user_state() == replay(UserItemCounts(), once).user_state()
    assert worker.model.global_state() == replay(UserItemCounts(), once).global_state()
    archived = [i for t in iter_archive(archive_dir(tmp_path, topic)) for i in t.column("event_id").to_pylist()]
    assert sorted(archived) == sorted(once.column("event_id").to_pylist())


def test_values_produced_as_unix_ms_decode_to_the_same_events():
    table = event_table(5)
    assert _decoded_table(event_values(table)).select(table.column_names).equals(table)
