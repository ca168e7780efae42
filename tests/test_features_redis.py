"""The Redis online store against a real redis-server started here, and the server helper."""

from __future__ import annotations

import os

import pytest
from features_fixtures import (
    applied_repo,
    check_newer_event_time_wins,
    check_replay_after_restart_keeps_newer,
    check_stored_time_precision,
    make_events,
)

from fastslow.errors import ServiceError
from features.store import FeatureStoreClient
from infra.redis import RedisServer


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def repo(tmp_path_factory, redis_server):
    return applied_repo(tmp_path_factory, "redis-store", "redis", redis_server.url)


def test_redis_server_starts_on_loopback_and_stops_cleanly():
    server = RedisServer().start()
    port, pid = server.port, server.pid
    assert server.ping() and server.url == f"redis://127.0.0.1:{port}/0"
    server.stop()
    assert not server.ping() and server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_missing_redis_binary_is_a_service_error():
    with pytest.raises(ServiceError, match="make services"):
        RedisServer(binary="redis-server-that-does-not-exist").start()


@pytest.mark.slow
def test_push_then_read_back_redis(repo):
    client = FeatureStoreClient(repo)
    client.push_events(make_events([("ann", "a", 0), ("ann", "b", 30), ("ben", "a", 40)]))
    context = client.lookup("ann", ["a", "b", "unknown"])
    assert (context.user["events_1h"], context.user["last_item"]) == (2, "b")
    assert context.items["pop_short"].tolist() == [2, 1, 0]
    assert context.items_found["item_stream"].tolist() == [True, True, False]
    assert client.missing["item_stream"] == 1


@pytest.mark.slow
def test_newer_event_time_wins_redis(repo):
    check_newer_event_time_wins(FeatureStoreClient(repo), "dave")


@pytest.mark.slow
def test_replay_after_restart_keeps_newer_values_redis(repo):
    check_replay_after_restart_keeps_newer(repo, "erin")


@pytest.mark.slow
def test_sub_second_updates_redis(repo):
    check_stored_time_precision(repo, "frank", same_second_rejected=False)
