"""Serving follows the registry: it starts on the champion, hot-swaps a promoted version (and a
rollback) between requests, and refuses to start without a champion, saying how to make one."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from consolidation_fixtures import cluster_events, fresh_tracking_uri, one_torch_thread  # noqa: F401 (autouse)
from serving_fixtures import clustered_ranker, serving, wait_for

from consolidation.registry import ModelRegistry
from fastslow.settings import Settings
from serving.runtime import Runtime, ServingError

pytestmark = pytest.mark.slow  # MLflow: imports and model logging take seconds


def _register(registry: ModelRegistry, ranker) -> int:
    with registry.start_run("serving-test") as run:
        return registry.register(registry.log_ranker(ranker), run.info.run_id)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, mlflow_tracking_uri=fresh_tracking_uri(tmp_path / "mlflow"),
                    model_name="serving-test", champion_poll_s=0.05)


def test_serving_starts_on_the_champion_and_hot_swaps_promotions_and_rollbacks(settings):
    registry = ModelRegistry(settings.mlflow_tracking_uri, settings.model_name)
    v1 = _register(registry, clustered_ranker())
    registry.promote(v1)
    newer = clustered_ranker()
    newer.fit(newer.build_examples(*_columns(cluster_events(users=8, per_user=6, item_prefix="new", seed=1))))
    v2 = _register(registry, newer)

    runtime = Runtime.from_settings(settings, bootstrap=None)
    with serving(runtime) as client:
        assert client.get("/recommend", params={"user_id": "u1"}).json()["model_version"] == v1
        model = runtime.model
        with runtime.lock:
            model.learn_one("carol", "i3-1", 2.0e9)
            model.flush()
        assert np.any(model._fast.vector("carol", 2.0e9))

        registry.promote(v2)
        wait_for(lambda: client.get("/recommend", params={"user_id": "u1"}).json()["model_version"] == v2, 20,
                 "the watcher to swap in the promoted version")
        assert runtime.model is model and "new0-1" in model.slow_model.items
        assert np.array_equal(model.slow_model.item_vectors, registry.load(v2).item_vectors)
        assert not np.any(model._fast.vector("carol", 2.0e9))  # keep_fast=0: the new slow model absorbed it
        assert model.history("carol") == ["i3-1"]
        metrics = client.get("/metrics").text
        assert f"fastslow_champion_version {float(v2)}" in metrics
        assert "fastslow_champion_reloads_total 1.0" in metrics

        registry.rollback()
        wait_for(lambda: runtime.champion_version == v1, 20, "the rollback to be swapped in")
        assert "new0-1" not in model.slow_model.items
    assert not any(t.name.startswith("champion-watcher") for t in threading.enumerate())


def test_serving_without_a_champion_says_how_to_make_one(settings):
    with pytest.raises(ServingError) as failure:
        Runtime.from_settings(settings, bootstrap=None)
    message = str(failure.value)
    assert "no champion version of 'serving-test'" in message
    assert "fastslow consolidate --events LOG" in message and "fastslow demo" in message


def _columns(table):
    return table.column("user_id").to_pylist(), table.column("item_id").to_pylist()



def test_a_failing_registry_is_counted_and_reported_while_serving_goes_on(ranker_model, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    broken = ModelRegistry(f"sqlite:///{tmp_path}/a-file/mlflow.db", "serving-test")  # cannot be opened
    runtime = Runtime(ranker_model, data_dir=tmp_path, registry=broken, champion_version=3, poll_interval_s=0.05)
    with serving(runtime) as client:
        wait_for(lambda: _failures(client.get("/metrics").text) >= 2, 30, "two failed champion polls")
        ready = client.get("/readyz").json()
        assert ready["warnings"][0].startswith("champion watcher: ") and "polls failed so far" in ready["warnings"][0]
        body = client.get("/recommend", params={"user_id": "u1"}).json()
        assert body["model_version"] == 3 and body["items"]


@pytest.fixture
def ranker_model():
    from serving_fixtures import clustered_model

    return clustered_model(clustered_ranker())


def _failures(metrics: str) -> float:
    line = next(line for line in metrics.splitlines() if line.startswith("fastslow_champion_reload_failures_total "))
    return float(line.split()[1])
