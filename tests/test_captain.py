"""The "Captain" case: a taste shown only to the fast path survives consolidation + forgetting.

World (seeded): 40 users, each sticking to one of four item clusters (30 items each), learnt
by the champion. The next day, in the fast path only, user u0 (cluster 0) clicks a handful of
cluster-2 items it never touched, while ten newcomers explore brand-new items. The real
consolidation job runs (MLflow on a temporary sqlite store) on an archive sample holding
those events, with every active user's fast-path preferences distilled. Then u0's fast state
is cleared and the new champion is hot-swapped in, as the watcher does.

"The slow model's own top-10" for u0 is `SlowRanker.score` over every item with an *empty*
history: after `forget_users` the FastSlow holds no recent items for u0, so the user id is all
the slow model has left, and that is what it serves the user from. The handful itself is left
out of the ranking (remembering those items is not the point; the category is). The champion
has no cluster-2 item there, so the assertion fails without a consolidation.

Settings: ten epochs (one consolidation must move a single user's id row far enough; in
production the fast path keeps its preferences and every consolidation distils them again)
and a gate tolerance of 1.0 (the forgetting rule has its own tests; the newcomers' items
make the recent slice a fair test of the challenger). What distillation adds at the job level
is checked too: it is what teaches the slow model the newcomers' items.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from consolidation_fixtures import DAY_MS, T0_MS, cluster_events, fresh_tracking_uri, one_torch_thread  # noqa: F401

from consolidation.distill import distiller
from consolidation.job import bootstrap_champion, consolidate
from consolidation.registry import ModelRegistry
from consolidation.reload import ChampionWatcher, apply_to
from consolidation.sampling import sample_replay
from consolidation.train import ConsolidationConfig
from models.fastslow import FastSlow
from models.slow import SlowRanker

SEED = 1
CAPTAIN = "u0"
HANDFUL = [f"i2-{j}" for j in range(5)]
OLD = cluster_events(items=30, per_user=12, seed=SEED)
_NEW = cluster_events(users=10, items=30, per_user=6, start_ms=T0_MS + DAY_MS, item_prefix="n", first_id=10_000,
                      seed=SEED + 100)
NEWCOMERS = _NEW.set_column(1, "user_id", pc.replace_substring(_NEW.column("user_id"), "u", "v"))
CONFIG = ConsolidationConfig(epochs=10, probe_fraction=0.2, tolerance=1.0, seed=SEED)


def _recent() -> pa.Table:
    """The newcomers' day, plus the captain's handful of cluster-2 clicks."""
    start = T0_MS + DAY_MS + 1000
    handful = pa.table({
        "event_id": [f"captain-{j}" for j in range(len(HANDFUL))], "user_id": [CAPTAIN] * len(HANDFUL),
        "item_id": HANDFUL,
        "timestamp": pa.array([start + 60_000 * j for j in range(len(HANDFUL))], pa.int64()).cast(
            pa.timestamp("ms", "UTC")),
        "event_type": ["click"] * len(HANDFUL), "value": [1.0] * len(HANDFUL)})
    return pa.concat_tables([handful, NEWCOMERS]).sort_by("timestamp")


def _learn(model: FastSlow, table: pa.Table) -> None:
    times = pc.cast(table.column("timestamp"), pa.int64()).to_numpy() / 1000.0
    for user, item, t in zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist(), times):
        model.learn_one(user, item, float(t))


def _cluster2_top10(ranker: SlowRanker) -> list[str]:
    """Cluster-2 items (not the handful) in the ranker's own top-10 for the captain."""
    items = [i for i in ranker.items.ids() if i not in HANDFUL]
    scores = ranker.score(CAPTAIN, [], items)
    top = [items[n] for n in np.lexsort((np.arange(len(items)), -scores))[:10]]
    return [i for i in top if i.startswith("i2-")]


def _consolidate_then_forget(tmp_path, distill: bool) -> tuple[FastSlow, SlowRanker, object]:
    registry = ModelRegistry(fresh_tracking_uri(tmp_path), "captain")
    bootstrap_champion(registry, OLD, SlowRanker(dim=16, epochs=20, batch_size=64, seed=SEED), CONFIG,
                       show_progress=False)
    first, champion = registry.load_champion()
    model = FastSlow(ranker=champion)
    _learn(model, OLD)
    recent = _recent()
    _learn(model, recent)
    shown = model.recommend(CAPTAIN, 10, exclude=model.history(CAPTAIN))
    assert sum(i.startswith("i2-") for i in shown) >= 3            # the fast path has it
    since_ms = int(registry.version_info(first).tags["until_ms"])
    sample = sample_replay([OLD, recent], 5000, since_ms=since_ms, recent_fraction=0.5, seed=SEED)
    assert set(HANDFUL) <= set(sample.items.tolist())          # the archive sample holds the handful
    callback = distiller(model, since_ms / 1000.0, k=10) if distill else None
    result = consolidate(registry, sample, CONFIG, distill=callback, show_progress=False)
    lock = threading.Lock()
    with lock:
        model.forget_users([CAPTAIN])
    ChampionWatcher(registry, apply_to(model, lock), current=first).poll()
    assert model.history(CAPTAIN) == []
    return model, champion, result


@pytest.mark.slow
def test_a_fast_path_only_taste_survives_consolidation_and_forgetting(tmp_path):
    model, champion, result = _consolidate_then_forget(tmp_path, distill=True)
    assert result.promoted, result.reason
    assert _cluster2_top10(champion) == []                      # the champion never had it
    assert model.slow_model is not champion
    assert _cluster2_top10(model.slow_model), "the taste was lost with the fast state"


@pytest.mark.slow
def test_distillation_is_what_teaches_the_slow_model_the_newcomers_items(tmp_path):
    _, _, distilled = _consolidate_then_forget(tmp_path / "with", distill=True)
    _, _, replayed = _consolidate_then_forget(tmp_path / "without", distill=False)
    assert distilled.metrics["champion_recent_ndcg_at_10"] == replayed.metrics["champion_recent_ndcg_at_10"] == 0.0
    assert distilled.metrics["challenger_recent_ndcg_at_10"] > 2 * replayed.metrics["challenger_recent_ndcg_at_10"]
