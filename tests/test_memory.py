"""EpisodicMemory: payloads stay in step with ids through evictions, removals, rekeying, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fastslow.errors import ConfigError
from models.memory import EpisodicMemory, IndexInputError

D = 8


def _vectors(rng, n, d=D):
    return rng.standard_normal((n, d)).astype(np.float32)


def _fill(mem, rng, n, start_time=0.0, users=5):
    """Add n entries (one key per entry); return {id: (key, item, user, time, type, value)}."""
    keys = _vectors(rng, n)
    items, us = rng.integers(1000, size=n), rng.integers(users, size=n)
    times = start_time + np.arange(n, dtype=np.float64)
    types, values = rng.integers(0, 6, size=n).astype(np.int8), rng.random(n).astype(np.float32)
    ids = mem.add(keys, items, us, times, types, values)
    return {int(i): (keys[j], items[j], us[j], times[j], types[j], values[j]) for j, i in enumerate(ids)}


def _check_hits(hits, ref, query):
    """Every hit's payload and score agree with what was added under its id."""
    for j, i in enumerate(hits.ids.tolist()):
        key, item, user, time, etype, value = ref[i]
        assert (hits.items[j], hits.users[j], hits.times[j], hits.types[j], hits.values[j]) == \
            (item, user, time, etype, value)
        assert hits.scores[j] == pytest.approx(float(key @ query), abs=1e-5)


def test_add_then_search_returns_the_added_payload_with_exact_scores():
    rng = np.random.default_rng(0)
    mem = EpisodicMemory(D, capacity=1000)
    ref = _fill(mem, rng, 200)
    keys = np.stack([ref[i][0] for i in range(200)])
    for query in _vectors(rng, 5):
        hits = mem.search(query, k=10)
        expected = np.argsort(-(keys @ query))[:10]
        assert hits.ids.tolist() == expected.tolist()
        _check_hits(hits, ref, query)
    assert mem.search(keys[17], k=1).items.tolist() == [ref[17][1]]


def test_ids_and_payloads_stay_in_step_across_many_capacity_evictions():
    rng = np.random.default_rng(1)
    mem = EpisodicMemory(D, capacity=100, max_age=None, evict_fraction=0.1)
    mem.train(_vectors(rng, 400))
    ref, t = {}, 0.0
    for step in range(300):  # ~1,500 entries through a memory of 100
        ref.update(_fill(mem, rng, int(rng.integers(1, 10)), start_time=t))
        t += 10.0
        assert len(mem) <= 100 and mem.index.ntotal == len(mem)
        query = _vectors(rng, 1)[0]
        hits = mem.search(query, k=20)
        assert len(hits) > 0
        _check_hits(hits, ref, query)
    # What survives is the newest entries, as a contiguous run of ids.
    live = mem.entries().ids
    newest = max(ref)
    assert live.tolist() == list(range(newest - len(mem) + 1, newest + 1))


def test_capacity_eviction_drops_the_oldest_batch():
    rng = np.random.default_rng(2)
    mem = EpisodicMemory(D, capacity=100, max_age=None, evict_fraction=0.1)
    _fill(mem, rng, 100)
    assert len(mem) == 100
    _fill(mem, rng, 1, start_time=100.0)   # one over: evict down to 100 - 10
    assert len(mem) == 90
    assert mem.entries().ids.tolist() == list(range(11, 101))
    assert np.sort(mem.search(np.zeros(D), k=200).ids).tolist() == list(range(11, 101))
    assert mem.evict() == 0


def test_age_eviction_on_evict_and_automatically_once_overdue():
    rng = np.random.default_rng(3)
    mem = EpisodicMemory(D, capacity=1000, max_age=10.0, evict_fraction=0.1)
    _fill(mem, rng, 31)                     # times 0..30; oldest is overdue by 20 s > 1 s slack
    # add() already evicted everything older than 30 - 10 = 20.
    assert mem.entries().times.tolist() == [float(t) for t in range(20, 31)]
    assert mem.evict(now=35.0) == 5         # times 20..24 are older than 25
    assert len(mem) == 6

    fresh = EpisodicMemory(D, capacity=1000, max_age=10.0, evict_fraction=0.1)
    fresh.add(_vectors(rng, 1), 1, 1, 0.0, 1)
    fresh.add(_vectors(rng, 1), 2, 1, 10.5, 1)  # time 0 is 0.5 s too old, within the 1 s slack
    assert len(fresh) == 2
    assert fresh.evict() == 1                   # an explicit evict cuts exactly
    fresh.add(_vectors(rng, 1), 3, 1, 21.5, 1)  # time 10.5 is 1 s too old: exactly the slack, kept
    assert len(fresh) == 2
    fresh.add(_vectors(rng, 1), 4, 1, 21.6, 1)  # now 1.1 s too old: evicted on add
    assert fresh.entries().items.tolist() == [3, 4]


def test_remove_users_leaves_nothing_of_those_users():
    rng = np.random.default_rng(4)
    mem = EpisodicMemory(D, capacity=10_000)
    ref = _fill(mem, rng, 500, users=6)
    gone = {1, 4}
    owned = [i for i, r in ref.items() if r[2] in gone]
    assert mem.remove_users(gone) == len(owned) > 0
    assert len(mem) == mem.index.ntotal == 500 - len(owned)
    for user in gone:
        assert len(mem.entries_of(user)) == 0
    everything = mem.search(np.zeros(D), k=1000)
    assert len(everything) == len(mem) and not set(everything.users.tolist()) & gone
    for i in owned[:20]:                      # gone from the index itself, not just hidden
        with pytest.raises(RuntimeError):
            mem.index.reconstruct(i)
    live = mem._slots["alive"]                # the payload arrays agree
    assert not np.isin(mem._slots["users"][live], list(gone)).any()
    assert mem.remove_users(gone) == 0
    kept = mem.entries_of(2)
    assert kept.ids.tolist() == sorted(i for i, r in ref.items() if r[2] == 2)


def test_rekey_replaces_keys_and_keeps_ids_and_payloads():
    rng = np.random.default_rng(5)
    old_space, new_space = _vectors(rng, 50), _vectors(rng, 50)
    mem = EpisodicMemory(D, capacity=1000)
    mem.train(old_space)
    items = rng.integers(50, size=300)
    ids = mem.add(old_space[items], items, rng.integers(9, size=300), np.arange(300.0), 2, 1.0)
    before = mem.entries_of(3)
    mem.rekey(lambda e: new_space[e.items], train_vectors=new_space)
    assert mem.entries_of(3) == before and len(mem) == 300
    query = _vectors(rng, 1)[0]
    hits = mem.search(query, k=30)
    assert np.allclose(hits.scores, new_space[hits.items] @ query, atol=1e-5)
    assert set(hits.ids.tolist()) <= set(ids.tolist())
    with pytest.raises(IndexInputError):
        mem.rekey(lambda e: new_space[e.items][:-1])


def test_training_moves_entries_and_a_young_memory_still_searches_exactly():
    rng = np.random.default_rng(6)
    mem = EpisodicMemory(D, capacity=100_000, nprobe=2)
    ref = _fill(mem, rng, 400)
    queries = _vectors(rng, 10)
    before = mem.search(queries, k=15)
    mem.train(_vectors(rng, 2000))
    assert mem.is_trained and mem.index.nlist == 2000 // 39 and len(mem) == 400
    after = mem.search(queries, k=15)        # 400 of 100k: all lists are scanned
    for b, a, q in zip(before, after, queries):
        assert a.ids.tolist() == b.ids.tolist()
        _check_hits(a, ref, q)


def test_training_on_its_own_keys_puts_each_key_in_the_list_a_query_for_it_probes():
    rng = np.random.default_rng(10)
    mem = EpisodicMemory(D, capacity=800, nprobe=1)   # full: one list scanned per query
    keys = _vectors(rng, 800)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    ids = mem.add(keys, np.arange(800), 0, 0.0, 1)
    mem.train()
    assert mem.is_trained and mem.index.nlist == 800 // 39 and len(mem) == 800
    for i in rng.integers(800, size=50).tolist():
        hits = mem.search(keys[i], k=1)       # a unit key is its own best match
        assert hits.ids.tolist() == [ids[i]] and hits.items.tolist() == [i]
        assert hits.scores[0] == pytest.approx(1.0, abs=1e-5)


def test_pickle_round_trip_gives_identical_results_and_continues_identically():
    rng = np.random.default_rng(7)
    mem = EpisodicMemory(D, capacity=300, max_age=400.0, nprobe=2)
    mem.train(_vectors(rng, 1000))
    _fill(mem, rng, 700)
    mem.remove_users([0])
    copy = pickle.loads(pickle.dumps(mem))
    queries = _vectors(rng, 20)
    for a, b in zip(mem.search(queries, 25), copy.search(queries, 25)):
        assert a == b
    more = _vectors(rng, 50)
    assert (mem.add(more, 1, 1, 800.0, 1).tolist() == copy.add(more, 1, 1, 800.0, 1).tolist())
    assert len(mem) == len(copy)
    assert all(a == b for a, b in zip(mem.search(queries, 25), copy.search(queries, 25)))


def test_same_inputs_give_the_same_memory():
    def build():
        rng = np.random.default_rng(8)
        mem = EpisodicMemory(D, capacity=200, max_age=None, nprobe=1)
        mem.train(_vectors(rng, 800))
        _fill(mem, rng, 500)
        return mem, _vectors(rng, 10)

    (a, queries), (b, _) = build(), build()
    assert all(x == y for x, y in zip(a.search(queries, 10), b.search(queries, 10)))


def test_batch_search_equals_single_searches_and_empty_memory_finds_nothing():
    rng = np.random.default_rng(9)
    mem = EpisodicMemory(D)
    assert len(mem.search(np.ones(D), 5)) == 0
    _fill(mem, rng, 50)
    queries = _vectors(rng, 3)
    assert mem.search(queries, 7) == [mem.search(q, 7) for q in queries]
    assert len(mem.search(queries[0], 500)) == 50


def test_bad_inputs_are_refused_with_what_was_wrong():
    mem = EpisodicMemory(D)
    with pytest.raises(IndexInputError, match="keys"):
        mem.add(np.ones((2, D + 1)), [1, 2], 0, 0.0, 1)
    with pytest.raises(IndexInputError, match="items"):
        mem.add(np.ones((2, D)), [1, 2, 3], 0, 0.0, 1)
    with pytest.raises(IndexInputError, match="times"):
        mem.add(np.ones((1, D)), 1, 0, float("nan"), 1)
    with pytest.raises(IndexInputError, match="query"):
        mem.search(np.ones(D - 1), 3)
    assert len(mem) == 0 and mem.index.ntotal == 0
    for bad in ({"capacity": 0}, {"max_age": 0.0}, {"evict_fraction": 1.0}, {"nprobe": 0}):
        with pytest.raises(ConfigError):
            EpisodicMemory(D, **bad)
