"""The fast path's promises: a preference shows up in the very next list, state stays bounded,
and the gate learns which path to trust."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from evaluation.synth import SynthConfig, generate
from evaluation.stream import EventStream
from models.fastslow import FastSlow, fast_only
from models.slow import SlowRanker


@pytest.fixture(scope="module")
def world():
    """A small synthetic stream and a slow ranker trained on it."""
    stream = generate(SynthConfig.preset("small", n_events=8_000, shift_fraction=0.0, seed=3))
    events = EventStream.from_table(stream.events_table())
    truth = stream.truth()
    ranker = SlowRanker(dim=32, epochs=4, seed=0)
    users, items, _, _, _ = events.columns()
    ranker.fit(ranker.build_examples(users, items))
    return events, truth, ranker


def _learned(world, **kwargs) -> FastSlow:
    events, _, ranker = world
    model = FastSlow(ranker=ranker.clone(), **kwargs)
    model.learn_warmup(*events.columns())
    return model


def _history(events: EventStream) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    users, items, _, _, _ = events.columns()
    for u, i in zip(users, items):
        seen.setdefault(u, set()).add(i)
    return seen


def test_a_handful_of_events_shows_up_in_that_users_next_top10_and_not_in_anothers(world):
    events, truth, _ = world
    model = _learned(world)
    seen = _history(events)
    cats_of = {u: {truth.item_category[i] for i in items} for u, items in seen.items()}
    active = sorted(seen, key=lambda u: -len(seen[u]))
    alice, bob = active[0], active[1]
    # a category neither of them ever touched, with enough items to show a preference
    by_size = sorted(set(truth.item_category.values()), key=lambda c: -len(truth.category_items(c)))
    new_cat = next(c for c in by_size if c not in cats_of[alice] | cats_of[bob])
    cat_items = sorted(truth.category_items(new_cat) & set(model._stats.items.ids()))
    chosen, rest = cat_items[:5], set(cat_items[5:])
    bob_before = model.recommend(bob, 10, exclude=seen[bob])
    alice_before = model.recommend(alice, 10, exclude=seen[alice])
    assert not rest & set(alice_before)

    t = float(events.timestamps[-1])
    for n, item in enumerate(chosen):
        model.learn_one(alice, item, t + 60.0 * (n + 1), "click")

    alice_after = model.recommend(alice, 10, exclude=seen[alice] | set(chosen))
    bob_after = model.recommend(bob, 10, exclude=seen[bob])
    assert len(rest & set(alice_after)) >= 2, alice_after
    assert len(rest & set(bob_after)) <= len(rest & set(bob_before))


def test_fast_state_expires_idle_users_and_ages_out_memory(world):
    events, _, ranker = world
    model = FastSlow(ranker=ranker.clone(), fast={"ttl": 3600.0}, memory_max_age=3600.0, expire_every=10)
    model.learn_one("early", "x1", 1_000.0)
    model.learn_one("early", "x2", 1_010.0)
    model.flush()
    assert "early" in model._fast and len(model._memory) == 2
    for n in range(10):
        model.learn_one(f"late{n}", f"y{n}", 10_000.0 + n)
    assert "early" not in model._fast
    assert model._fast.expired == 1
    assert model._memory.entries_of(model._users.get("early")).ids.size == 0


def test_user_cap_evicts_the_least_recently_active(world):
    _, _, ranker = world
    model = FastSlow(ranker=ranker.clone(), fast={"max_users": 3})
    for n, user in enumerate(["a", "b", "c", "a", "d"]):
        model.learn_one(user, "x", 100.0 + n)
    assert sorted(model._fast.users()) == ["a", "c", "d"]


def test_gate_moves_toward_the_fast_path_when_the_stream_is_a_fixed_item_chain(world):
    events, _, ranker = world
    model = FastSlow(ranker=ranker.clone(), gate={"initial_gate": 0.5})   # from neutral
    items = sorted(set(events.columns()[1]))[:60]
    rng = np.random.default_rng(0)
    order = rng.permutation(items).tolist()
    nxt = {order[n]: order[(n + 1) % len(order)] for n in range(len(order))}
    gates, t = [], float(events.timestamps[-1])
    for session in range(120):
        user, item = f"chain{session % 40}", order[rng.integers(len(order))]
        for step in range(6):
            t += 30.0
            scored = model.score(user)
            gates.append(scored.gate)
            model.recommend(user, 10)           # what was shown; the next event teaches the gate
            model.learn_one(user, item, t)
            item = nxt[item]
    assert np.mean(gates[-100:]) > np.mean(gates[:100]) + 0.05


def test_fast_only_pins_the_gate_and_snapshots_round_trip(world):
    events, _, ranker = world
    model = fast_only()
    assert model.name == "fast-only" and model._gate.value(np.ones(8)) == 1.0
    full = _learned(world)
    user = events.user(len(events) - 1)
    copy = pickle.loads(pickle.dumps(full))
    assert copy.recommend(user, 10) == full.recommend(user, 10)


def test_a_deleted_user_the_slow_model_knew_gets_a_strangers_list(world):
    events, _, ranker = world
    model = _learned(world)
    user = events.user(len(events) - 1)
    assert model.slow_knows(user)
    model.forget_users([user], deleted=True)
    assert not model.slow_knows(user) and user not in model.users()
    assert model.recommend(user, 10) == model.recommend("never-seen-anyone", 10)
    model.use_ranker(ranker.clone())          # a new champion still knows the old vector: not used
    assert model.recommend(user, 10) == model.recommend("never-seen-anyone", 10)


@pytest.mark.parametrize("adaptive", [False, True])
def test_gate_step_follows_the_gradient_of_its_loss(adaptive):
    """One `Gate.learn` step is the finite-difference gradient d of -log softmax(score)[positive]
    in theta, w and v (l2 off) times lr (plain SGD) or, AdaGrad's first step, times
    lr / sqrt(start + d**2) per parameter."""
    from models.gate import _SQUARES_START, FAST_SIGNALS, REQUEST_FEATURES, Gate

    rng = np.random.default_rng(3)
    slow, fast = rng.random(6), rng.random((6, len(FAST_SIGNALS)))
    request = np.concatenate([[1.0], rng.random(len(REQUEST_FEATURES))])
    gate = Gate(lr=0.01, l2=0.0, adaptive=adaptive)
    gate.v = 0.3

    def loss(theta, w, v):
        probe = Gate(l2=0.0)
        probe.theta, probe.w, probe.v = theta, w, v
        score = probe.scores(slow, fast, request)
        return float(-(score[2] - score.max() - np.log(np.exp(score - score.max()).sum())))

    def numeric(f, x, eps=1e-6):
        out = np.zeros_like(x)
        for i in range(len(x)):
            up, down = x.copy(), x.copy()
            up[i] += eps
            down[i] -= eps
            out[i] = (f(up) - f(down)) / (2 * eps)
        return out

    theta, w, v = gate.theta.copy(), gate.w.copy(), gate.v
    d_theta = numeric(lambda t: loss(t, w, v), theta)
    d_w = numeric(lambda x: loss(theta, x, v), w)
    d_v = numeric(lambda x: loss(theta, w, x[0]), np.array([v]))[0]
    before = gate.learn(slow, fast, request, positive=2)

    def step(d):
        return 0.01 * d / np.sqrt(_SQUARES_START + d * d) if adaptive else 0.01 * d

    assert before == pytest.approx(loss(theta, w, v))
    assert gate.theta == pytest.approx(theta - step(d_theta), abs=1e-8)
    assert gate.w == pytest.approx(w - step(d_w), abs=1e-8)
    assert gate.v == pytest.approx(v - step(d_v), abs=1e-8)
    assert Gate().value(np.concatenate([[1.0], np.zeros(len(REQUEST_FEATURES))])) == pytest.approx(0.8)


def test_one_event_paths_equal_the_batch_paths_bit_for_bit(world):
    """A replay applies one event per flush; the shortcuts it takes (slow user vector, BPR step,
    counts, links) give exactly what the batch code gives for the same event."""
    from models.fast import FastWeights
    from models.stream_stats import StreamStats

    _, _, ranker = world
    history = np.array([3, -1, 7, 2, 9, 4], dtype=np.int64)
    for user_row in (-1, 0, 5, len(ranker.users) + 10):
        one = ranker.user_vector_rows(user_row, history)
        batch = ranker.user_vectors_rows(np.array([user_row]), [history])[0]   # (a batch of 2 multiplies differently)
        assert one.tobytes() == batch.tobytes()

    rng = np.random.default_rng(0)
    args = (rng.standard_normal((1, 8)).astype(np.float32), rng.standard_normal((1, 8)).astype(np.float32),
            np.array([0.1], np.float32), rng.standard_normal((1, 3, 8)).astype(np.float32),
            np.array([[0.2, -0.1, 0.0]], np.float32))
    single, pair = FastWeights(dim=8, half_life=50.0), FastWeights(dim=8, half_life=50.0)
    for fw in (single, pair):
        fw.remember("u", 1, 0.0)
        fw.get("u").vec[:] = rng.standard_normal(8).astype(np.float32) if fw is single else single.get("u").vec
    pair.remember("v", 2, 0.0)
    out_one = single.learn_batch(["u"], np.array([30.0]), *args)
    out_two = pair.learn_batch(["u", "v"], np.array([30.0, 30.0]), *(np.concatenate([a, a]) for a in args))
    assert out_one[0].tobytes() == out_two[0].tobytes()

    a, b = StreamStats(), StreamStats()
    for st in (a, b):
        for item in "abcdefgh":
            st.register(item)
    hist = [np.array([0, 1, 2, 3], dtype=np.int64)]
    for n, t in enumerate([10.0, 500.0, 90_000.0]):
        a.count(np.array([n + 4]), np.array([t]))
        a.link(hist, [n + 4])
        b.count(np.array([n + 4, 7]), np.array([t, t]))   # a second event on an untouched row
        b.link(hist + [np.zeros(0, np.int64)], [n + 4, 7])
    assert a.counts[:7].tobytes() == b.counts[:7].tobytes() and a._pop[:7].tobytes() == b._pop[:7].tobytes()
    for m in ("cooccurrence", "transitions"):
        for h in range(8):
            assert getattr(a, m).scores([h], n=8)[:7].tobytes() == getattr(b, m).scores([h], n=8)[:7].tobytes()


def test_unit_rows_equal_the_masked_division_bit_for_bit():
    """`_unit` tests one row's norm as a scalar; it gives what dividing by
    ``np.where(norms > 0, norms, 1.0)`` gives, zero and non-finite rows included."""
    from models.fastslow import _unit

    rng = np.random.default_rng(1)
    rows = [rng.standard_normal((1, 16)).astype(np.float32) * s for s in (1e-3, 1.0, 1e3)]
    rows += [np.zeros((1, 16), np.float32), np.full((1, 16), np.nan, np.float32)]
    with np.errstate(invalid="ignore"):
        for x in rows + [np.concatenate(rows), rng.standard_normal((3, 16))]:
            norms = np.sqrt(np.add.reduce(x * x, axis=1, keepdims=True))
            expected = (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)
            assert _unit(x).tobytes() == expected.tobytes()


def test_a_model_pickled_before_the_peer_signals_loads_scores_and_learns_them(world):
    """A snapshot from before `models.signals`: its stream statistics lack the peers' matrices
    and its gate has one weight per old signal and no AdaGrad state."""
    from models.gate import FAST_SIGNALS

    events, _, _ = world
    model = _learned(world)
    old = pickle.loads(pickle.dumps(model))
    del old._stats.__dict__["peers"]
    old._gate.w = old._gate.w[:5]
    del old._gate.__dict__["adaptive"], old._gate.__dict__["_squares"]
    restored = pickle.loads(pickle.dumps(old))
    user = events.user(len(events) - 1)
    assert len(restored._gate.w) == len(FAST_SIGNALS) and not restored._gate.w[5:].any()
    assert len(restored.recommend(user, 10)) == 10
    restored.learn_one(user, events.item(0), float(events.timestamps[-1]) + 1.0)
    restored.learn_one(user, events.item(1), float(events.timestamps[-1]) + 2.0)
    restored.flush()
    assert restored._stats.peers.sr.cells and restored._stats.peers.knn.cells
