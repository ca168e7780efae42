"""``POST /events`` without a timestamp takes the receive time; with one keeps it, and says which
(issue 15, finding 3). Against a real broker: what reaches Kafka is what the answer says."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from consolidation_fixtures import one_torch_thread  # noqa: F401 (autouse)
from serving_fixtures import clustered_model, clustered_ranker, event, serving
from worker_fixtures import make_topics, unique

from serving.runtime import Runtime
from streaming.kafka import make_consumer

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def ranker():
    return clustered_ranker()


def _produced(broker: str, topic: str, count: int) -> list[dict]:
    consumer = make_consumer(broker, None, [topic], consumer_timeout_ms=5000, auto_offset_reset="earliest")
    try:
        values = []
        for record in consumer:
            values.append(json.loads(record.value))
            if len(values) == count:
                break
        return values
    finally:
        consumer.close()


def test_an_event_without_timestamp_gets_the_receive_time_and_the_answer_says_so(ranker, broker, tmp_path):
    topic, dlq = make_topics(broker, partitions=1)
    runtime = Runtime(clustered_model(ranker), bootstrap=broker, topic=topic, dlq_topic=dlq, consume=False,
                      group_id=unique("time"), data_dir=tmp_path)
    given = event("ann", "i2-1", 5)
    with serving(runtime) as client:
        before = datetime.now(timezone.utc).replace(microsecond=0)
        answer = client.post("/events", json=[{"user_id": "ann", "item_id": "i2-2"}, given])
        after = datetime.now(timezone.utc)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["accepted"] == 2 and body["timestamps"] == ["received", "event"]
    sent = {value["event_id"]: value for value in _produced(broker, topic, 2)}
    assert set(sent) == set(body["event_ids"])
    received = datetime.fromisoformat(sent[body["event_ids"][0]]["timestamp"].replace("Z", "+00:00"))
    assert before <= received <= after                                    # the server's clock at receipt
    assert sent[body["event_ids"][1]]["timestamp"] == given["timestamp"].replace("Z", ".000Z")   # kept as sent


def test_the_openapi_schema_says_timestamp_is_optional_and_which_was_used(ranker, tmp_path):
    with serving(Runtime(clustered_model(ranker), data_dir=tmp_path)) as client:
        spec = client.get("/openapi.json").json()
    post = spec["paths"]["/events"]["post"]
    one, many = post["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert {"user_id", "item_id"} <= set(one["required"]) and "timestamp" not in one["required"]
    assert "received" in one["properties"]["timestamp"]["description"]
    assert many["items"] == one
    answer = post["responses"]["202"]["content"]["application/json"]["schema"]
    ref = answer["$ref"].rsplit("/", 1)[1]
    timestamps = spec["components"]["schemas"][ref]["properties"]["timestamps"]
    assert timestamps["items"]["enum"] == ["event", "received"] and "receive time" in timestamps["description"]
