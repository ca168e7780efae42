"""DELETE /users/{id} reaches the online feature store: `FeatureStoreClient.forget_user` on a
real Feast repository (sqlite, and Redis on a redis-server started here)."""

from __future__ import annotations

import pytest
from features_fixtures import applied_repo, make_events

from features.store import FeatureStoreClient
from infra.redis import RedisServer

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
