"""The API with its in-process worker on a real broker, served by uvicorn on a free port:
events posted over HTTP reach Kafka, the worker applies them to the model the API scores
with, deletion holds, metrics count it all, and readiness follows the broker."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from consolidation_fixtures import one_torch_thread  # noqa: F401 (autouse)
from serving_fixtures import CLUSTER_2, clustered_model, clustered_ranker, event, recommended, serving, wait_for
from worker_fixtures import make_topics, unique

from infra.broker import EmbeddedBroker
from serving.runtime import Runtime
from streaming.kafka import make_consumer

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def ranker():
    return clustered_ranker()


def _runtime(ranker, broker: str, data_dir, **options) -> Runtime:
    topic, dlq = make_topics(broker, partitions=2)
    return Runtime(clustered_model(ranker), bootstrap=broker, topic=topic, dlq_topic=dlq, group_id=unique("serve"),
                   data_dir=data_dir, worker_options={"durable": False, "flush_interval_s": 0.2}, **options)


def _history(runtime: Runtime, user: str) -> list[str]:
    with runtime.lock:
        return runtime.model.history(user)


def _kafka_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name == "worker"
            or t.name.startswith(("kafka", "uvicorn", "champion-watcher"))}


@pytest.mark.slow
def test_posted_events_are_produced_applied_and_change_that_users_recommendations(ranker, broker, tmp_path):
    threads_before = _kafka_threads()
    runtime = _runtime(ranker, broker, tmp_path)
    with serving(runtime) as client:
        cold = client.get("/recommend", params={"user_id": "alice", "k": 4}).json()
        assert cold["cold_start"] is True
        batch = [event("alice", item, n + 1, event_type="purchase") for n, item in enumerate(CLUSTER_2[:4])]
        response = client.post("/events", json=batch)
        assert response.status_code == 202, response.text
        ids = response.json()["event_ids"]
        assert response.json()["accepted"] == 4 and len(set(ids)) == 4

        wait_for(lambda: len(_history(runtime, "alice")) == 4, 30, "the worker to apply alice's four events")
        assert _history(runtime, "alice") == CLUSTER_2[:4]
        assert set(recommended(client, "alice")) == set(CLUSTER_2[4:])
        assert [item["item_id"] for item in cold["items"]] != recommended(client, "alice")

        # what reached Kafka: keyed by the user, the ids the API answered
        consumer = make_consumer(broker, None, [runtime.topic], consumer_timeout_ms=3000)
        try:
            records = [r for r in consumer if r.key == b"alice"]
        finally:
            consumer.close()
        assert sorted(r.value for r in records) == sorted(e.to_json_bytes() for e in _validated(batch))

        metrics = client.get("/metrics").text
        assert _value(metrics, "fastslow_events_accepted_total") == 4
        assert _value(metrics, "fastslow_events_applied_total") >= 4
        assert _value(metrics, "fastslow_events_consumed_total") >= 4
        assert _value(metrics, "fastslow_dlq_total") == 0
        assert _value(metrics, "fastslow_freshness_seconds_count") >= 1
        assert _value(metrics, "fastslow_consumer_lag_total") == 0
        assert 'fastslow_consumer_lag{partition="' in metrics
        assert client.get("/readyz").json()["ready"] is True

        deleted = client.delete("/users/alice").json()["removed"]
        assert deleted["fast_state"] == 1 and deleted["memory_entries"] == 4
        assert recommended(client, "alice", k=8) == recommended(client, "nobody-yet", k=8)
    assert _kafka_threads() <= threads_before  # worker, producer and server threads all stopped


def test_events_of_a_deleted_user_applied_after_the_deletion_are_forgotten_again(ranker, broker, tmp_path):
    """Events produced before a DELETE but consumed after it (in flight, or re-read after a
    restart) do not bring the user back."""
    runtime = _runtime(ranker, broker, tmp_path, consume=False)
    with serving(runtime) as client:
        assert client.post("/events", json=[event("bob", "i1-0", 1), event("bob", "i1-1", 2)]).status_code == 202
        assert client.delete("/users/bob").status_code == 200
    worker = _runtime(ranker, broker, tmp_path)
    worker.topic, worker.dlq_topic = runtime.topic, runtime.dlq_topic
    with serving(worker) as client:
        wait_for(lambda: worker.worker is not None and worker.worker.stats.events_applied >= 2, 30,
                 "the worker to consume bob's events")
        assert _history(worker, "bob") == [] and "bob" not in worker.model.users()
        assert recommended(client, "bob", k=8) == recommended(client, "nobody-yet", k=8)


@pytest.mark.slow
def test_a_restarted_server_resumes_its_worker_snapshot_on_the_champion_it_loaded(ranker, broker, tmp_path):
    first = _runtime(ranker, broker, tmp_path)
    with serving(first) as client:
        assert client.post("/events", json=[event("dora", "i2-0", 1), event("dora", "i2-1", 2)]).status_code == 202
        wait_for(lambda: len(_history(first, "dora")) == 2, 30, "dora's events to be applied")
    promoted = clustered_ranker(seed=7)  # a champion promoted while the server was down
    second = Runtime(clustered_model(promoted), bootstrap=broker, topic=first.topic, dlq_topic=first.dlq_topic,
                     group_id=first.group_id, data_dir=tmp_path, worker_options={"durable": False})
    with serving(second):
        assert second.model is second.worker.model and second.model is not second._model  # the snapshot's
        assert _history(second, "dora") == ["i2-0", "i2-1"]
        assert np.array_equal(second.model.slow_model.item_vectors, promoted.item_vectors)
        assert not np.any(second.model._fast.vector("dora", 2.0e9))  # rebased: keep_fast=0


def test_readiness_turns_503_when_the_broker_goes_away(ranker, tmp_path):
    broker = EmbeddedBroker(port=0, data_dir=tmp_path / "broker", partitions=1, stop_timeout=0.5)
    broker.start()
    try:
        runtime = Runtime(clustered_model(ranker), bootstrap=broker.bootstrap, consume=False, data_dir=tmp_path,
                          ack_timeout_s=1.0)
        with serving(runtime) as client:
            assert client.get("/readyz").json() == {"ready": True, "reasons": [], "model_version": None,
                                                    "worker_assigned": None}
            broker.stop()
            wait_for(lambda: client.get("/readyz").status_code == 503, 10, "/readyz to report the broker")
            assert client.get("/readyz").json()["reasons"] == [f"Kafka broker unreachable at {broker.bootstrap}"]
            assert client.get("/healthz").status_code == 200  # alive, just not ready
            assert client.get("/recommend", params={"user_id": "u1"}).status_code == 200
            refused = client.post("/events", json=event("u1", "i0-1", 1))
            assert refused.status_code == 503 and "Kafka did not acknowledge" in refused.json()["detail"]
    finally:
        broker.stop()


def _validated(batch):
    from streaming.events import validate_event

    return [validate_event(e) for e in batch]


def _value(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.slow
def test_the_worker_pushes_applied_events_to_the_online_feature_store(ranker, broker, tmp_path, tmp_path_factory):
    from features_fixtures import applied_repo

    from features.store import FeatureStoreClient

    features = FeatureStoreClient(applied_repo(tmp_path_factory, "serving-push"))
    runtime = _runtime(ranker, broker, tmp_path, features=features)
    with serving(runtime) as client:
        batch = [event("dora", item, n + 1, event_type="cart") for n, item in enumerate(CLUSTER_2[:3])]
        assert client.post("/events", json=batch).status_code == 202
        wait_for(lambda: features.lookup("dora", []).user["events_1h"] == 3, 30,
                 "dora's three events to reach the online store")
        assert client.delete("/users/dora").status_code == 200
        after = [event("dora", CLUSTER_2[5], 10)]  # produced after the deletion: refused at intake
        client.post("/events", json=after)
        wait_for(lambda: runtime.pusher.events >= 3, 10, "the pusher")
        assert features.lookup("dora", []).user_found["user_stream"] is False
    user = features.lookup("dora", [])
    assert user.user["last_item"] == "" and user.user["events_1h"] == 0
