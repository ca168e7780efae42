"""The broker (durable: Tansu on SeaweedFS S3) is killed and restarted under a consuming
worker: the worker reconnects, resumes, and applies every event exactly once."""

from __future__ import annotations

import pytest

from infra.scenario_broker import broker_restart

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_worker_resumes_after_broker_restarts_and_applies_every_event_exactly_once(tmp_path):
    result = broker_restart(tmp_path, events=3000, restarts=2, seed=4)
    assert result.details["worker_error"] is None
    assert len(result.details["outage_seconds"]) == 2
    assert (result.produced, result.applied, result.lost, result.duplicated) == (3000, 3000, 0, 0)
    assert result.details["lost_by_broker"] == result.details["lost_by_worker"] == 0
    assert result.passed and result.name == "broker_restart"
