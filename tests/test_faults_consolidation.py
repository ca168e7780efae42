"""Consolidation killed (SIGKILL) mid-training and mid-registration while the API serves: the
champion does not move, every request is answered, and the next run succeeds and is served."""

from __future__ import annotations

import pytest
from consolidation_fixtures import fresh_tracking_uri

from consolidation.registry import CHALLENGER, ModelRegistry, default_tracking_uri
from infra.scenario_consolidation import CRASHES, consolidation_crash

pytestmark = [pytest.mark.slow]


def test_killed_consolidations_leave_the_champion_and_serving_alone_and_the_next_run_succeeds(tmp_path):
    fresh_tracking_uri(tmp_path)  # the scenario's registry, already migrated (saves seconds)
    result = consolidation_crash(tmp_path, seed=0)
    details = result.details

    assert [c["at"] for c in details["crashes"]] == list(CRASHES)
    assert all(c["killed"] and c["exit"] == -9 for c in details["crashes"]), details["crashes"]
    first = details["champion_before"]
    assert details["champion_after_each_crash"] == [first] * len(CRASHES)  # neither crash moved the alias

    following = details["next_run"]
    assert following["promoted"], following["reason"]
    assert following["version"] > first
    assert details["served_versions"] == [first, following["version"]]  # picked up without a restart
    assert details["requests_failed"] == 0 and result.lost == 0
    assert result.produced == result.applied > 20  # the API answered throughout
    assert result.passed and result.name == "consolidation_crash"

    registry = ModelRegistry(default_tracking_uri(tmp_path))
    assert registry.champion_version() == following["version"]
    # the run killed mid-training registered nothing; the one killed after registering left its
    # version behind (as challenger, never champion), so the next run registered the one after it
    assert following["version"] == first + 2
    assert registry.version_of(CHALLENGER) in (first + 1, following["version"])
