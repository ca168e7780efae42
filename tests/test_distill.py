"""Distillation turns the fast path's per-user preferences into weighted slow-model examples.

World: users stick to one of four item clusters and a slow ranker learned that. Then, in the
fast path only, user u0 (cluster 0) clicks two cluster-2 items, and two other users click a
brand-new item right after one of them, so the fast path also prefers the new item for u0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from consolidation_fixtures import cluster_events, one_torch_thread, trained_ranker  # noqa: F401

from consolidation.distill import distill_examples, distiller
from consolidation.job import run_consolidation
from consolidation.sampling import sample_replay
from consolidation.train import ConsolidationConfig
from fastslow.errors import ConfigError
from models.fastslow import FastSlow

OLD = cluster_events(seed=1)


@pytest.fixture(scope="module")
def world():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ranker = trained_ranker(OLD)
    finally:
        torch.set_num_threads(threads)
    model = FastSlow(ranker=ranker.clone())
    times = OLD.column("timestamp").cast("int64").to_numpy() / 1000.0
    model.learn_warmup(OLD.column("user_id").to_pylist(), OLD.column("item_id").to_pylist(), times,
                       ["click"] * len(times), [1.0] * len(times))
    since = float(times[-1]) + 60.0
    for user in ("u4", "u8"):
        model.learn_one(user, "i2-1", since)
        model.learn_one(user, "fresh", since + 1.0)
    model.learn_one("u0", "i2-1", since + 10.0)
    model.learn_one("u0", "i2-3", since + 11.0)
    return model, since + 5.0


def test_weights_follow_the_fast_scores_and_sum_to_the_weight_per_user(world):
    model, since = world
    preferences = model.fast_preferences(since, 10)
    assert set(preferences) == {"u0"}           # u4 and u8 were last active before `since`
    clone = model.slow_model.clone()
    examples = distill_examples(model, clone, since, k=10, weight=3.0, id_share=0.0)
    items = [item for item, score in preferences["u0"] if score > 0]
    scores = [score for _, score in preferences["u0"] if score > 0]
    assert [clone.items.id_of(int(t)) for t in examples.targets] == items
    assert all(clone.users.id_of(int(u)) == "u0" for u in examples.users)
    for w, score in zip(examples.weights.tolist(), scores):
        assert math.isclose(w, 3.0 * score / sum(scores), rel_tol=1e-6)
    assert math.isclose(float(examples.weights.sum()), 3.0, rel_tol=1e-6)
    assert sum(item.startswith("i2-") for item in items[:5]) >= 4   # the fast path's new taste


def test_every_example_reads_the_users_fast_history_most_recent_first(world):
    model, since = world
    clone = model.slow_model.clone()
    examples = distill_examples(model, clone, since, k=5, id_share=0.0)
    expected = [clone.items.get(i) + 1 for i in reversed(model.history("u0"))][: clone.history]
    for row in examples.history:
        assert row[: len(expected)].tolist() == expected
        assert not row[len(expected):].any()


def test_id_share_moves_that_part_of_the_weight_onto_copies_without_history(world):
    model, since = world
    clone = model.slow_model.clone()
    plain = distill_examples(model, clone, since, k=10, weight=3.0, id_share=0.0)
    split = distill_examples(model, clone, since, k=10, weight=3.0, id_share=0.25)
    n = len(plain)
    assert len(split) == 2 * n
    np.testing.assert_array_equal(split.targets, np.r_[plain.targets, plain.targets])
    np.testing.assert_array_equal(split.history[:n], plain.history)
    assert not split.history[n:].any()                                  # the user id alone
    np.testing.assert_allclose(split.weights[:n], 0.75 * plain.weights, rtol=1e-6)
    np.testing.assert_allclose(split.weights[n:], 0.25 * plain.weights, rtol=1e-6)
    assert math.isclose(float(split.weights.sum()), 3.0, rel_tol=1e-6)


def test_new_ids_land_in_the_clone_and_never_in_the_serving_model(world):
    model, since = world
    champion = model.slow_model
    clone = champion.clone()
    examples = distill_examples(model, clone, since)
    assert "fresh" not in champion.items
    assert "fresh" in {clone.items.id_of(int(t)) for t in examples.targets}
    assert clone.net.n_items >= len(clone.items) > len(champion.items)


def test_distiller_feeds_the_consolidation_and_the_challenger_learns_the_new_item(world):
    model, since = world
    champion = model.slow_model
    sample = sample_replay([OLD], 400, seed=0)
    config = ConsolidationConfig(epochs=2, fisher_samples=200, probe_fraction=0.2)
    with_fast = run_consolidation(champion, sample, config, distill=distiller(model, since, k=10))
    assert with_fast.distill_examples == len(distill_examples(model, champion.clone(), since, k=10))
    assert "fresh" in with_fast.challenger.items and "fresh" not in champion.items
    assert run_consolidation(champion, sample, config).distill_examples == 0


def test_nobody_active_since_gives_no_examples_and_bad_knobs_are_refused(world):
    model, _ = world
    clone = model.slow_model.clone()
    assert len(distill_examples(model, clone, since=model.clock + 1.0)) == 0
    with pytest.raises(ConfigError):
        distill_examples(model, clone, since=0.0, weight=-1.0)
    with pytest.raises(ConfigError):
        distill_examples(model, clone, since=0.0, id_share=1.5)
    np.testing.assert_array_equal(distill_examples(model, clone, 0.0, users=["nobody"]).targets, [])
