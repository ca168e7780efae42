"""The fast path's `recency_knn` and `sequential_rules` signals are the peers' scores: by hand on
the peers' own 6-event example, and equal to `evaluation.peers` on a random log, learned one
event at a time (as replay) or in batches (as the worker)."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.peers import RecencyKNN, SequentialRules
from models.fastslow import FastSlow
from models.gate import FAST_SIGNALS

KNN_LOG = [("u", "p"), ("u", "q"), ("v", "p"), ("v", "r"), ("w", "q"), ("w", "s")]


def _model(events, flush_every: int = 1) -> FastSlow:
    model = FastSlow(flush_every=flush_every)
    for t, (u, i) in enumerate(events):
        model.learn_one(u, i, 100.0 + t)
    model.flush()
    return model


def _signal(model: FastSlow, user: str, name: str) -> dict[str, float]:
    stats = model._stats
    recent = model._recent(user)
    cols, vals = stats.knn_scores(recent) if name == "knn" else stats.sr_scores(recent)
    return {stats.items.id_of(int(c)): float(v) for c, v in zip(cols, vals)}


def _peer(peer, user: str) -> dict[str, float]:
    """The peer's score vector for the user, by item id (non-zero entries)."""
    counts = peer._items
    n = counts.n
    recent = peer._recent.get(user)
    if isinstance(peer, RecencyKNN):
        score = peer._cooc.scores(list(recent), peer._weights[-len(recent):], n=len(n)) / np.sqrt(n + 1.0)
    else:
        score = peer._rules.scores([recent[-1]], n=len(n))
    return {counts.items.id_of(int(j)): float(score[j]) for j in np.flatnonzero(score)}


def test_knn_and_sr_signals_by_hand():
    model = _model(KNN_LOG)
    # u's history [p, q]: q weighs 1, p 0.85; n: p=2, q=2, r=1, s=1 (as tests/test_peers.py)
    assert _signal(model, "u", "knn") == pytest.approx(
        {"s": 1 / np.sqrt(2), "r": 0.85 / np.sqrt(2), "p": 1 / np.sqrt(3), "q": 0.85 / np.sqrt(3)})
    # sr: R[p, q] = 1 (u), R[p, r] = 1 (v), R[q, s] = 1 (w); u's last item is q
    assert _signal(model, "u", "sr") == {"s": 1.0}
    assert _signal(model, "v", "sr") == {}                    # nothing ever followed r
    # z learns p, q, r: R[p, q] += 1, R[q, r] += 1 (d = 1) and R[p, r] += 1/2 (d = 2); y's last is p
    model = _model(KNN_LOG + [("z", "p"), ("z", "q"), ("z", "r"), ("y", "p")])
    assert _signal(model, "y", "sr") == pytest.approx({"q": 2.0, "r": 1.5})


@pytest.mark.parametrize("flush_every", [1, 64])
def test_signals_equal_the_peers_scores_on_a_random_log(flush_every):
    rng = np.random.default_rng(4)
    users = [f"u{n}" for n in range(12)]
    items = [f"i{n}" for n in range(40)]
    # skewed item choice and long user histories, so windows fill (20 and 10) and counts repeat
    weights = 1.0 / np.arange(1, len(items) + 1)
    events = [(users[rng.integers(len(users))], items[rng.choice(len(items), p=weights / weights.sum())])
              for _ in range(600)]
    model = _model(events, flush_every)
    knn, sr = RecencyKNN(), SequentialRules()
    for t, (u, i) in enumerate(events):
        knn.learn_one(u, i, float(t))
        sr.learn_one(u, i, float(t))
    for user in users:
        assert _signal(model, user, "knn") == pytest.approx(_peer(knn, user), rel=1e-12)
        assert _signal(model, user, "sr") == pytest.approx(_peer(sr, user), rel=1e-12)


def test_pinned_to_the_sr_signal_the_fast_path_ranks_as_sr():
    """Gate pinned to the fast path, all weight on sr and a tie-break on all-time popularity,
    no learning: the list is the `sr` peer's (its ties go to n_j, then to the item seen first)."""
    rng = np.random.default_rng(5)
    users = [f"u{n}" for n in range(8)]
    items = [f"i{n}" for n in range(30)]
    events = [(users[rng.integers(len(users))], items[rng.integers(len(items))]) for _ in range(400)]
    weights = np.zeros(len(FAST_SIGNALS))
    weights[FAST_SIGNALS.index("sequential_rules")] = 1.0
    weights[FAST_SIGNALS.index("popularity")] = 1e-6
    model = FastSlow(fixed_gate=1.0, gate={"initial_weights": tuple(weights), "lr": 0.0})
    sr = SequentialRules()
    for t, (u, i) in enumerate(events):
        model.learn_one(u, i, 100.0 + t)
        sr.learn_one(u, i, float(t))
    for user in users:
        # the fast path's candidates hold sr's top items (and the popular ones): compare the top 5
        assert model.recommend(user, 5) == sr.recommend(user, 5), user
