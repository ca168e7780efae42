"""Hot reload on a real MLflow store: a running watcher applies each new champion exactly once,
and a registry that fails for a while is counted, reported and retried, never fatal."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from consolidation_fixtures import cluster_events, fresh_tracking_uri, one_torch_thread  # noqa: F401

from consolidation.job import bootstrap_champion
from consolidation.registry import ModelRegistry
from consolidation.reload import ChampionWatcher, apply_to
from consolidation.train import ConsolidationConfig
from models.fastslow import FastSlow
from models.slow import SlowRanker

EVENTS = cluster_events(seed=1)
CONFIG = ConsolidationConfig(fisher_samples=100)


def _ranker() -> SlowRanker:
    return SlowRanker(dim=8, epochs=2, batch_size=64)


def _new_version(registry: ModelRegistry, ranker: SlowRanker) -> int:
    """Register ``ranker`` as a new version, as the consolidation job does (without the gate)."""
    with registry.start_run("test") as run:
        info = registry.log_ranker(ranker)
        return registry.register(info, run.info.run_id)


def _wait(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the watcher did not get there in time")
        time.sleep(0.02)


class Recorder:
    """An apply function that remembers what it was given (and can fail on demand)."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.rankers: list[SlowRanker] = []
        self.fail_next = 0

    def __call__(self, version: int, ranker: SlowRanker) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("item index rebuild failed")
        self.calls.append(version)
        self.rankers.append(ranker)


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    registry = ModelRegistry(fresh_tracking_uri(tmp_path), "reload-under-test")
    bootstrap_champion(registry, EVENTS, _ranker(), CONFIG, show_progress=False)
    return registry


def test_a_running_watcher_applies_each_new_champion_once(registry):
    recorder = Recorder()
    second = _new_version(registry, _ranker())
    with ChampionWatcher(registry, recorder, interval_s=0.05) as watcher:
        _wait(lambda: recorder.calls == [1])
        registry.promote(second)
        _wait(lambda: recorder.calls == [1, 2])
        polls_after = watcher.applied
        time.sleep(0.3)                           # several polls with nothing new
        assert recorder.calls == [1, 2] and watcher.applied == polls_after == 2
        registry.rollback()
        _wait(lambda: recorder.calls == [1, 2, 1])
    assert not watcher.running and watcher.version == 1 and watcher.errors == 0
    assert recorder.rankers[1].items.ids() == registry.load(2).items.ids()


def test_a_started_scorer_swaps_to_the_promoted_model_without_restart(registry):
    _, champion = registry.load_champion()
    model = FastSlow(ranker=champion)
    lock = threading.Lock()
    users, items = EVENTS.column("user_id").to_pylist(), EVENTS.column("item_id").to_pylist()
    for n, (u, i) in enumerate(zip(users, items)):
        model.learn_one(u, i, float(n))
    challenger = registry.load(1)
    challenger.fit(challenger.build_examples(["newcomer"] * 3, ["brand-new", "i0-1", "brand-new"]), epochs=1)
    second = _new_version(registry, challenger)
    with ChampionWatcher(registry, apply_to(model, lock), interval_s=0.05, current=1) as watcher:
        registry.promote(second)
        _wait(lambda: watcher.version == second)
    assert model.slow_model is not champion and "brand-new" in model.slow_model.items
    with lock:
        assert len(model.recommend("u0", 10)) == 10


@pytest.mark.slow   # MLflow retries the missing artifacts with back-off before each error
def test_the_watcher_survives_a_registry_that_fails_for_a_while(registry):
    recorder = Recorder()
    second = _new_version(registry, _ranker())
    stored = Path(unquote(urlparse(registry.client.get_model_version_download_uri(registry.model_name, "2")).path))
    aside = stored.with_name(stored.name + ".away")
    with ChampionWatcher(registry, recorder, interval_s=0.05, current=1) as watcher:
        shutil.move(stored, aside)                 # the artifact store lags behind the registry
        registry.promote(second)
        _wait(lambda: watcher.errors >= 2)
        assert watcher.running and watcher.version == 1 and recorder.calls == []
        assert watcher.last_error is not None
        shutil.move(aside, stored)
        _wait(lambda: recorder.calls == [2])
    assert watcher.version == 2


def test_a_failing_apply_is_retried_and_counted_not_marked_applied(registry):
    recorder = Recorder()
    recorder.fail_next = 2
    with ChampionWatcher(registry, recorder, interval_s=0.05) as watcher:
        _wait(lambda: recorder.calls == [1])
    assert watcher.errors == 2 and isinstance(watcher.last_error, RuntimeError) and watcher.applied == 1
