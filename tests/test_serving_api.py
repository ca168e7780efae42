"""The HTTP API on a real uvicorn server, without a broker: recommendations, validation,
deletion, API key and metrics. (Kafka intake and the in-process worker: test_serving_kafka.py.)"""

from __future__ import annotations

import json

import pytest
from consolidation_fixtures import one_torch_thread  # noqa: F401 (autouse)
from serving_fixtures import CLUSTER_2, clustered_model, clustered_ranker, event, recommended, serving

from consolidation.sampling import read_deleted_users
from serving.app import MAX_BATCH_EVENTS, MAX_BODY_BYTES
from serving.runtime import Runtime


@pytest.fixture(scope="module")
def ranker():
    return clustered_ranker()


@pytest.fixture
def runtime(ranker, tmp_path):
    return Runtime(clustered_model(ranker), data_dir=tmp_path)


@pytest.fixture
def client(runtime):
    with serving(runtime) as client:
        yield client


def test_recommend_answers_items_with_score_parts_and_reasons_without_the_users_recent_items(client, runtime):
    body = client.get("/recommend", params={"user_id": "u2", "k": 5}).json()
    assert body["user_id"] == "u2" and body["model_version"] is None and body["cold_start"] is False
    assert len(body["items"]) == 5 and 0.0 <= body["gate"] <= 1.0 and body["took_ms"] > 0
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    for item in body["items"]:
        assert set(item) == {"item_id", "score", "fast", "slow", "reason"} and item["reason"]
    seen = set(runtime.model.history("u2"))
    assert seen and not seen & {item["item_id"] for item in body["items"]}
    with_seen = client.get("/recommend", params={"user_id": "u2", "k": 32, "exclude_seen": "false"}).json()
    assert seen <= {item["item_id"] for item in with_seen["items"]}


def test_unknown_user_gets_a_cold_start_list_not_an_error(client):
    response = client.get("/recommend", params={"user_id": "never-seen-before", "k": 10})
    assert response.status_code == 200
    body = response.json()
    assert body["cold_start"] is True
    items = [item["item_id"] for item in body["items"]]
    assert len(items) == len(set(items)) == 10 and all(i.startswith("i") for i in items)


@pytest.mark.parametrize(("params", "field", "reason"), [
    ({"user_id": "u1", "k": 0}, "k", "expected an integer from 1 to 100"),
    ({"user_id": "u1", "k": 101}, "k", "expected an integer from 1 to 100"),
    ({"user_id": "u1", "k": "ten"}, "k", "expected a valid integer"),
    ({"k": 5}, "user_id", "expected a value (the field is required)"),
    ({"user_id": "   "}, "user_id", "expected a non-empty string (spaces are trimmed)"),
    ({"user_id": "u\x001"}, "user_id", "expected no control characters (tab, newline, NUL, ...)"),
    ({"user_id": "u" * 300}, "user_id", "expected at most 256 characters"),
    ({"user_id": "u1", "exclude_seen": "maybe"}, "exclude_seen", "expected a valid boolean"),
])
def test_bad_recommend_requests_get_422_naming_field_value_and_expectation(client, params, field, reason):
    response = client.get("/recommend", params=params)
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["field"] == field and problem["reason"].startswith(reason)
    assert problem["message"].startswith(f"{field}: {reason}")
    if field in params:
        assert problem["value"] in (params[field], str(params[field]))


def _problems(response) -> list[dict]:
    assert response.status_code == 422, response.text
    return response.json()["detail"]


def test_bad_events_get_422_with_every_problem_per_event(client):
    single = _problems(client.post("/events", json={"user_id": "u1", "timestamp": "2024-05-01T12:00:00"}))
    assert {(p["field"], p.get("index")) for p in single} == {("item_id", None), ("timestamp", None)}
    naive = next(p for p in single if p["field"] == "timestamp")
    assert naive["value"] == "2024-05-01T12:00:00" and "UTC offset" in naive["reason"]

    batch = [event("u1", "i0-1", 1), event("u1", "i0-2", 2, event_type="like"),
             event("u1", "i0-3", 3, colour="red"), "not an event", event("u1", "i0-4", 4, value="lots")]
    problems = _problems(client.post("/events", json=batch))
    assert [(p["index"], p["field"]) for p in problems] == [(1, "event_type"), (2, "colour"), (3, "(event)"),
                                                            (4, "value")]
    assert problems[0]["value"] == "like" and problems[0]["reason"].startswith("expected one of view, click")
    assert problems[0]["message"] == f"[1].event_type: {problems[0]['reason']}, got 'like'"

    assert _problems(client.post("/events", content=b"{not json"))[0]["field"] == "(body)"
    assert _problems(client.post("/events", json=[]))[0]["reason"].startswith("expected an event object")
    assert _problems(client.post("/events", json=42))[0]["reason"].startswith("expected an event object")


def test_oversized_batches_and_bodies_are_refused_with_413(client):
    too_many = [event("u1", f"i0-{n % 8}", n) for n in range(MAX_BATCH_EVENTS + 1)]
    response = client.post("/events", json=too_many)
    assert response.status_code == 413 and f"at most {MAX_BATCH_EVENTS}" in response.json()["detail"]
    response = client.post("/events", content=b"[" + b" " * MAX_BODY_BYTES + b"]")
    assert response.status_code == 413 and f"at most {MAX_BODY_BYTES} bytes" in response.json()["detail"]


def test_valid_events_without_a_broker_get_503_saying_so(client):
    response = client.post("/events", json=event("u1", "i0-1", 1))
    assert response.status_code == 503 and "no Kafka broker configured" in response.json()["detail"]


def test_deleted_user_no_longer_influences_results(client, runtime, tmp_path):
    model = runtime.model
    for n, item in enumerate(CLUSTER_2[:4]):  # a new user who took four items of cluster 2
        model.learn_one("alice", item, float(n + 1) + 1.0e9)
    before = recommended(client, "alice")
    assert set(before) == set(CLUSTER_2[4:])  # the rest of cluster 2
    user_row = model._users.get("alice")
    assert len(model._memory.entries_of(user_row).items) == 4

    response = client.delete("/users/alice")
    assert response.status_code == 200
    body = response.json()
    assert body["removed"] == {"fast_state": 1, "recent_items": 4, "memory_entries": 4, "online_feature_rows": None}
    assert body["slow_model_uses_user_vector"] is False and str(tmp_path) in body["consolidation"]

    alice = client.get("/recommend", params={"user_id": "alice", "k": 8}).json()
    stranger = client.get("/recommend", params={"user_id": "somebody-new", "k": 8}).json()
    assert alice["items"] == stranger["items"] and alice["cold_start"] is True
    assert "alice" not in model.users() and model.history("alice") == []
    assert len(model._memory.entries_of(user_row).items) == 0
    assert read_deleted_users(tmp_path / "deleted_users.txt") == {"alice"}

    refused = _problems(client.post("/events", json=event("alice", "i2-1", 10)))
    assert refused[0]["field"] == "user_id" and "deleted" in refused[0]["reason"]
    again = client.delete("/users/alice").json()  # idempotent, and the tombstone is written once
    assert again["removed"]["fast_state"] == 0
    assert (tmp_path / "deleted_users.txt").read_text() == "alice\n"


def test_api_key_guards_writes_and_deletes_but_not_reads(runtime):
    with serving(runtime, api_key="s3cret") as client:
        body = event("u1", "i0-1", 1, event_type="like")  # invalid: 422 shows the key was accepted
        assert client.post("/events", json=body).status_code == 401
        assert client.post("/events", json=body, headers={"X-API-Key": "guess"}).status_code == 403
        assert client.post("/events", json=body, headers={"X-API-Key": "s3cret"}).status_code == 422
        missing = client.delete("/users/u1")
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        assert client.delete("/users/u1", headers={"X-API-Key": "s3cret!"}).status_code == 403
        assert "u1" in runtime.model.users()
        assert client.delete("/users/u1", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert "u1" not in runtime.model.users()
        assert client.get("/recommend", params={"user_id": "u1"}).status_code == 200
        assert client.get("/metrics").status_code == 200


def test_metrics_count_requests_by_route_and_status(client):
    recommended(client, "u3")
    client.get("/recommend", params={"user_id": "u3", "k": 0})
    client.get("/no/such/path")
    text = client.get("/metrics").text
    assert 'fastslow_http_request_duration_seconds_count{method="GET",route="/recommend",status="200"} 1.0' in text
    assert 'fastslow_http_request_duration_seconds_count{method="GET",route="/recommend",status="422"} 1.0' in text
    assert 'route="(unmatched)",status="404"' in text
    assert 'fastslow_recommendations_total{cold_start="false"} 1.0' in text
    for name in ("fastslow_champion_version 0.0", "fastslow_freshness_seconds_count 0.0",
                 "fastslow_events_accepted_total 0.0", "fastslow_champion_reloads_total 0.0"):
        assert name in text


def test_health_and_readiness_without_a_broker(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reasons"] == ["no Kafka broker configured (events cannot be accepted)"]


def test_recommend_body_is_plain_json(client):
    raw = client.get("/recommend", params={"user_id": "u5", "k": 3}).content
    assert json.loads(raw)["user_id"] == "u5" and b"NaN" not in raw
