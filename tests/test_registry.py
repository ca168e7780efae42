"""MLflow model registry round trips on a real sqlite tracking store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from consolidation_fixtures import cluster_events, fresh_tracking_uri, one_torch_thread, trained_ranker  # noqa: F401

from consolidation.registry import CHAMPION, ModelRegistry, NoChampionError, RegistryError


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(fresh_tracking_uri(tmp_path), "ranker-under-test")


def _log_version(registry: ModelRegistry, ranker, tags=None, fisher=None) -> int:
    with registry.start_run("test") as run:
        if fisher is not None:
            registry.log_fisher(run.info.run_id, fisher)
        info = registry.log_ranker(ranker)
        return registry.register(info, run.info.run_id, tags)


def test_logged_ranker_loads_back_with_identical_scores(registry, tmp_path):
    events = cluster_events(users=12, per_user=6)
    ranker = trained_ranker(events, epochs=3)
    version = _log_version(registry, ranker)
    registry.promote(version)
    assert registry.champion_version() == version
    loaded_version, loaded = registry.load_champion()
    assert loaded_version == version
    assert loaded.users.ids() == ranker.users.ids() and loaded.items.ids() == ranker.items.ids()
    assert (loaded.dim, loaded.history, loaded.batch_size) == (ranker.dim, ranker.history, ranker.batch_size)
    items = ranker.items.ids()
    for user, history in [("u0", ["i0-1", "i0-2"]), ("u5", []), ("stranger", ["i1-3"])]:
        assert np.array_equal(loaded.score(user, history, items), ranker.score(user, history, items))
    assert np.array_equal(registry.load(version).item_vectors, ranker.item_vectors)
    for name, param in ranker.net.state_dict().items():   # the whole net, spare rows too: it keeps training
        assert torch.equal(loaded.net.state_dict()[name], param)
    assert (tmp_path / "mlartifacts").is_dir()            # artifacts next to the database, not in cwd


def test_promote_rollback_and_listing(registry):
    ranker = trained_ranker(cluster_events(users=8, per_user=4), epochs=1)
    v1 = _log_version(registry, ranker, {"metric.recent_ndcg_at_10": 0.25, "gate.decision": "promoted"})
    v2 = _log_version(registry, ranker)
    v3 = _log_version(registry, ranker)
    assert registry.promote(v1) is None
    assert registry.promote(v2, "better") == v1
    registry.set_alias("challenger", v3)
    listed = {v.version: v for v in registry.versions()}
    assert [v.version for v in registry.versions()] == [v3, v2, v1]
    assert listed[v2].aliases == (CHAMPION,) and listed[v3].aliases == ("challenger",)
    assert listed[v1].metrics == {"recent_ndcg_at_10": 0.25}
    assert listed[v2].tags["promotion.reason"] == "better"
    assert registry.rollback() == v1
    assert registry.champion_version() == v1


def test_watchers_load_only_when_the_champion_changes(registry):
    ranker = trained_ranker(cluster_events(users=8, per_user=4), epochs=1)
    assert registry.load_if_changed(None) is None          # nothing to serve yet
    v1 = _log_version(registry, ranker)
    registry.promote(v1)
    version, loaded = registry.load_if_changed(None)
    assert version == v1 and loaded.items.ids() == ranker.items.ids()
    assert registry.load_if_changed(v1) is None
    v2 = _log_version(registry, ranker)
    assert registry.load_if_changed(v1) is None            # registered is not promoted
    registry.promote(v2)
    assert registry.load_if_changed(v1)[0] == v2


def test_missing_things_are_reported_not_guessed(registry):
    assert registry.champion_version() is None
    assert registry.versions() == []
    with pytest.raises(NoChampionError, match="fastslow consolidate"):
        registry.load_champion()
    ranker = trained_ranker(cluster_events(users=8, per_user=4), epochs=1)
    version = _log_version(registry, ranker)
    with pytest.raises(RegistryError, match="alias 'nope'"):
        registry.load("nope")
    with pytest.raises(RegistryError, match="version 99 does not exist"):
        registry.promote(99)
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback()
    assert registry.load_fisher(version) is None


def test_fisher_round_trip(registry):
    ranker = trained_ranker(cluster_events(users=8, per_user=4), epochs=1)
    fisher = {"item_out.weight": torch.rand(5, 3), "pool.bias": torch.rand(3)}
    version = _log_version(registry, ranker, fisher=fisher)
    loaded = registry.load_fisher(version)
    assert set(loaded) == set(fisher)
    assert all(torch.equal(loaded[name], fisher[name]) for name in fisher)
