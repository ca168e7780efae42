"""kill -9 of the worker at chosen points of its batch loop, again and again: afterwards the
fast state is exactly what an uninterrupted replay gives, and so is the event archive."""

from __future__ import annotations

import pytest
from consolidation_fixtures import fresh_tracking_uri

from infra.fault_streams import event_keys, keyed_events, register_champion
from infra.scenario_crash import final_model, worker_crash
from streaming.archive import archive_dir, iter_archive
from streaming.kafka import committed_offsets

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_worker_killed_during_apply_commit_and_snapshot_ends_with_every_event_applied_once(broker, tmp_path):
    result = worker_crash(broker, tmp_path, events=8000, users=300, kills=3, seed=1)
    faults = result.details["faults"]
    assert [f["fault"].split(":")[0] for f in faults] == ["apply", "commit", "snapshot"]
    assert all(f["exit"] == -9 for f in faults), faults  # each one really died by SIGKILL mid-stream
    assert all(f["committed_at_exit"] < 8000 for f in faults)
    assert (result.produced, result.applied, result.lost, result.duplicated) == (8000, 8000, 0, 0)
    assert result.passed

    topic, group = result.details["topic"], result.details["group"]
    table = keyed_events(8000, users=300, seed=1)
    got = final_model(tmp_path, topic, group)
    # each user's events, once each, in the order they were produced (what a replay learns)
    assert got.keys() == sorted(event_keys(table), key=lambda key: key[0])
    archived = [e for t in iter_archive(archive_dir(tmp_path, topic)) for e in t.column("event_id").to_pylist()]
    assert sorted(archived) == sorted(table.column("event_id").to_pylist())  # the archive, too: once each
    assert sum(committed_offsets(broker, group, topic).values()) == 8000


def test_fastslow_worker_killed_mid_snapshot_matches_an_uninterrupted_replay(broker, tmp_path):
    fresh_tracking_uri(tmp_path)  # an empty MLflow store where the worker command looks for the champion
    champion = register_champion(tmp_path, keyed_events(2000, users=150, items=120, seed=7), dim=8, epochs=1)
    result = worker_crash(broker, tmp_path, events=5000, users=150, kills=1, seed=2, champion=champion,
                          points=("snapshot",))
    assert [f["exit"] for f in result.details["faults"]] == [-9]
    assert result.details["model"] == "FastSlow"
    assert result.details["state_matches_replay"], result.details.get("mismatch")
    assert (result.produced, result.applied, result.lost, result.duplicated) == (5000, 5000, 0, 0)
    got = final_model(tmp_path, result.details["topic"], result.details["group"])
    assert got.events == 5000 and len(got.users()) == len(set(keyed_events(5000, users=150, seed=2)
                                                              .column("user_id").to_pylist()))

