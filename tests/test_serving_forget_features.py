"""DELETE /users/{id} reaches the online feature store: `FeatureStoreClient.forget_user` on a
real Feast repository (sqlite, and Redis on a redis-server started here), and over HTTP."""

from __future__ import annotations

import pytest
from features_fixtures import applied_repo, make_events
from serving_fixtures import clustered_model, clustered_ranker, serving

from fastslow.settings import Settings
from features.store import FeatureStoreClient
from infra.redis import RedisServer
from serving.runtime import Runtime, _feature_client

pytestmark = pytest.mark.slow  # applying a Feast repository takes seconds

CONTEXT = '{"user_segment": "gold", "user_country": "NL", "category": "shoes"}'


def _forget_and_check(client: FeatureStoreClient) -> None:
    client.push_events(make_events([("gone", "a", 0, "click", CONTEXT), ("gone", "b", 5),
                                    ("kept", "a", 6, "click", CONTEXT)]))
    assert client.lookup("gone", []).user_found == {"user_stream": True, "user_attributes": True}

    assert client.forget_user("gone") == 2

    gone, kept = client.lookup("gone", ["a"]), client.lookup("kept", ["a"])
    assert gone.user_found == {"user_stream": False, "user_attributes": False}
    assert gone.user["events_1h"] == 0 and gone.user["last_item"] == "" and gone.user["segment"] == ""
    assert kept.user_found == {"user_stream": True, "user_attributes": True}
    assert gone.items["pop_long"].tolist() == [2]  # item features are not the user's to delete
    assert client.forget_user("gone") == 0

    # The user's windows are gone too: a new event starts from nothing, and is not refused
    # as older than the deleted rows.
    client.push_events(make_events([("gone", "c", 1)], start_id=100))
    again = client.lookup("gone", [])
    assert again.user["events_1h"] == 1 and again.user["last_item"] == "c"


def test_forget_user_deletes_online_rows_and_windows_sqlite(tmp_path_factory):
    _forget_and_check(FeatureStoreClient(applied_repo(tmp_path_factory, "forget-sqlite")))


def test_forget_user_deletes_online_rows_and_windows_redis(tmp_path_factory):
    with RedisServer() as server:
        repo = applied_repo(tmp_path_factory, "forget-redis", "redis", server.url)
        _forget_and_check(FeatureStoreClient(repo))


def test_delete_user_over_http_removes_online_features_and_metrics_show_feature_reads(tmp_path_factory, tmp_path):
    repo = applied_repo(tmp_path_factory, "forget-http")
    assert _feature_client(Settings(data_dir=tmp_path)) is None  # no <data_dir>/feast: nothing to forget there
    features = FeatureStoreClient(repo)
    features.push_events(make_events([("u1", "i0-1", 0, "click", CONTEXT), ("u2", "i0-2", 1)]))
    runtime = Runtime(clustered_model(clustered_ranker()), data_dir=tmp_path, features=features)
    with serving(runtime) as client:
        body = client.delete("/users/u1").json()
        assert body["removed"]["online_feature_rows"] == 2 and body["removed"]["fast_state"] == 1
        assert features.lookup("u1", []).user_found == {"user_stream": False, "user_attributes": False}
        assert features.lookup("u2", []).user_found["user_stream"] is True
        metrics = client.get("/metrics").text
        assert 'fastslow_feature_reads_total{view="user_stream"} 2.0' in metrics
        assert 'fastslow_feature_missing_total{view="user_stream"} 1.0' in metrics
