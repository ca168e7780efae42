"""A short sustained load (events and /recommend at once, on loopback): every event applied once,
every request answered, and the report's rates, lag and memory series filled in."""

from __future__ import annotations

import pytest

from infra.scenario_load import load

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_a_short_load_applies_every_event_once_and_answers_every_recommend(tmp_path):
    result = load(tmp_path, seconds=8, rate=2000, recommend_rate=10, users=300, champion_events=4000)
    details = result.details

    assert details["errors"] == []
    assert result.produced > 8000 and (result.applied, result.lost, result.duplicated) == (result.produced, 0, 0)
    assert details["archived_not_produced"] == 0 and details["produce_failed"] == 0
    assert details["worker"]["events_applied"] == result.produced and details["worker"]["duplicates"] == 0
    assert details["produce_events_per_s"] > 1000 and details["apply_events_per_s"] > 1000
    assert details["lag"]["drain_seconds"] is not None and len(details["lag"]["samples"]) >= 8

    recommend = details["recommend"]
    assert recommend["failed"] == 0 and recommend["requests"] >= 70
    assert 0 < recommend["p50_ms"] <= recommend["p99_ms"] <= recommend["max_ms"]

    memory = details["memory"]
    assert len(memory["samples_mb"]) >= 8 and memory["q2_mb"] > 100 and memory["growth_fraction"] is not None
    assert isinstance(memory["memory_unbounded"], bool)  # 8 s is warm-up: judged on longer runs, not here
    assert details["model_state"]["end"]["users"] == 300
    assert result.name == "load"
