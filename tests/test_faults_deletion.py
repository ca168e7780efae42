"""DELETE /users/{id} on a serving process with its worker and online features: afterwards the
user is found nowhere the system learns from, checked by looking into each store directly."""

from __future__ import annotations

import pytest
from serving_fixtures import clustered_ranker

from infra.scenario_deletion import GONE, deletion

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_a_deleted_user_leaves_no_trace_in_fast_state_memory_features_sample_or_snapshots(broker, tmp_path):
    result = deletion(broker, tmp_path, clustered_ranker(), users=20, per_user=6)
    details = result.details

    # before the deletion the user was really there (otherwise "no trace" proves nothing)
    held = details["held_before"]
    assert held["fast_state"] == 1 and held["history"] == 6 and held["memory_entries"] > 0
    assert details["archived_events_of_user"] == 6  # the archive keeps them; tombstones filter them

    assert details["traces_after"] == {"fast_state": 0, "memory_entries": 0, "online_feature_views": 0,
                                       "sample_events": 0, "snapshot_state": 0, "snapshot_user_ids": 0}
    assert details["snapshot_user_ids_where"] == []
    assert details["sample_size"] == 19 * 6  # everyone else's events are still sampled
    assert details["delete_answer"]["online_feature_rows"]  # rows were found and removed
    assert (result.produced, result.applied, result.lost) == (120, 120, 0)
    assert result.passed and result.name == "deletion"
    assert (tmp_path / "deleted_users.txt").read_text().split() == [GONE]
