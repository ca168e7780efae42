"""Replay sampler: ratio, time spread, determinism, deletions, histories, bounded memory."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from consolidation.sampling import (ReplaySampler, probe_mask, read_deleted_users, record_deleted_user,
                                    sample_replay, split_probes)
from fastslow.errors import ConfigError

DAY_MS = 86_400_000
T0 = 1_714_521_600_000  # 2024-05-01T00:00Z


def _table(times_ms, users, items, first_id: int = 0) -> pa.Table:
    n = len(times_ms)
    return pa.table({
        "event_id": [f"e{first_id + k}" for k in range(n)], "user_id": list(users), "item_id": list(items),
        "timestamp": pa.array(np.asarray(times_ms, dtype=np.int64), pa.int64()).cast(pa.timestamp("ms", "UTC")),
        "event_type": ["click"] * n, "value": [1.0] * n,
    })


def _stream(n: int, days: float, start_ms: int = T0, users: int = 50, items: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    times = np.sort(start_ms + rng.integers(0, int(days * DAY_MS), n))
    return times, [f"u{u}" for u in rng.integers(0, users, n)], [f"i{i}" for i in rng.integers(0, items, n)]


def _chunks(times, users, items, size: int):
    for start in range(0, len(times), size):
        yield _table(times[start:start + size], users[start:start + size], items[start:start + size], start)


def test_recent_share_follows_the_ratio():
    times, users, items = _stream(4000, days=4)
    since = T0 + 2 * DAY_MS
    sample = sample_replay(_chunks(times, users, items, 500), 400, recent_fraction=0.25, since_ms=since)
    assert len(sample) == 400
    assert sample.recent.sum() == 100
    assert (sample.timestamps_ms[sample.recent] > since).all()
    assert (sample.timestamps_ms[~sample.recent] <= since).all()
    assert (np.diff(sample.timestamps_ms) >= 0).all()   # time order


def test_a_short_part_is_filled_by_the_other():
    times, users, items = _stream(2000, days=2)
    since = int(times[-21])   # only the last 20 events are recent
    sample = sample_replay([_table(times, users, items)], 400, recent_fraction=0.5, since_ms=since)
    assert (sample.recent.sum(), (~sample.recent).sum()) == (20, 380)
    everything_old = sample_replay([_table(times, users, items)], 400, recent_fraction=0.5, since_ms=None)
    assert len(everything_old) == 400 and not everything_old.recent.any()


def test_old_events_are_spread_over_time_not_by_volume():
    # 10 old days; the last one holds 90% of the old traffic. A uniform sample would take ~90%
    # of its events from that day; the stratified one takes about a tenth from each day (periods
    # have power-of-two widths, so a period may straddle two days: allow up to a quarter).
    rng = np.random.default_rng(1)
    quiet = np.sort(T0 + rng.integers(0, 9 * DAY_MS, 2000))
    busy = np.sort(T0 + 9 * DAY_MS + rng.integers(0, DAY_MS, 18000))
    recent = np.sort(T0 + 10 * DAY_MS + rng.integers(0, DAY_MS, 1000))
    times = np.concatenate([quiet, busy, recent])
    users = [f"u{u}" for u in rng.integers(0, 100, len(times))]
    items = [f"i{i}" for i in rng.integers(0, 100, len(times))]
    sample = sample_replay(_chunks(times, users, items, 1000), 600, recent_fraction=0.0,
                           since_ms=T0 + 10 * DAY_MS, strata=32)
    days = Counter(((sample.timestamps_ms[~sample.recent] - T0) // DAY_MS).tolist())
    assert sorted(days) == list(range(10))
    assert days[9] < 0.25 * 600
    assert min(days.values()) > 0.05 * 600


def test_same_seed_same_sample_whatever_the_table_sizes():
    times, users, items = _stream(3000, days=3)
    opts = dict(recent_fraction=0.3, since_ms=T0 + 2 * DAY_MS, seed=7)
    a = sample_replay(_chunks(times, users, items, 250), 300, **opts)
    b = sample_replay(_chunks(times, users, items, 1000), 300, **opts)
    c = sample_replay(_chunks(times, users, items, 250), 300, **{**opts, "seed": 8})
    assert a.event_ids.tolist() == b.event_ids.tolist()
    assert a.digest == b.digest == hashlib.sha256("\n".join(a.event_ids.tolist()).encode()).hexdigest()
    assert c.digest != a.digest


def test_deleted_users_are_neither_sampled_nor_counted():
    times, users, items = _stream(3000, days=3, users=20)
    deleted = {"u3", "u7"}
    n_deleted = sum(u in deleted for u in users)
    sample = sample_replay(_chunks(times, users, items, 400), 10_000, since_ms=T0 + DAY_MS, deleted=deleted)
    assert len(sample) == 3000 - n_deleted
    assert not set(sample.users.tolist()) & deleted
    assert sample.stats["deleted_skipped"] == n_deleted


def test_each_event_carries_the_users_history_before_it():
    events = [("a", "x"), ("b", "p"), ("a", "y"), ("a", "z"), ("gone", "q"), ("b", "r"), ("a", "w")]
    table = _table([T0 + k for k in range(len(events))], *zip(*events))
    sample = sample_replay([table.slice(0, 3), table.slice(3)], 100, history=2, deleted={"gone"})
    got = {(u, i): h for u, i, h in zip(sample.users, sample.items, sample.histories())}
    assert got == {("a", "x"): [], ("b", "p"): [], ("a", "y"): ["x"], ("a", "z"): ["x", "y"],
                   ("b", "r"): ["p"], ("a", "w"): ["y", "z"]}   # bounded to the last 2 items
    assert sample.history.shape == (6, 2)


def test_memory_is_bounded_by_the_sample_not_the_archive():
    times, users, items = _stream(60_000, days=30, users=200, items=100)
    size = 200
    sampler = ReplaySampler(size, recent_fraction=0.5, since_ms=T0 + 20 * DAY_MS, history=5)
    peak = 0
    for table in _chunks(times, users, items, 500):   # a generator: never the whole archive
        sampler.add(table)
        peak = max(peak, sampler.held())
    assert peak <= 3 * size
    assert len(sampler.result()) == size
    assert sampler.stats["read"] == 60_000


def test_probes_are_stable_and_disjoint_from_training():
    times, users, items = _stream(3000, days=3)
    sample = sample_replay([_table(times, users, items)], 3000, since_ms=T0 + DAY_MS)
    train, probes = split_probes(sample, 0.1)
    assert len(train) + len(probes) == 3000
    assert not set(train.event_ids) & set(probes.event_ids)
    assert 200 < len(probes) < 400
    assert probe_mask(probes.event_ids, 0.1).all()   # the same ids are probes again
    assert probes.history.shape[0] == len(probes)


def test_invalid_options_are_refused():
    with pytest.raises(ConfigError, match="recent fraction"):
        ReplaySampler(10, recent_fraction=1.5)
    with pytest.raises(ConfigError, match="sample size"):
        ReplaySampler(-1)


def test_deleted_users_file_round_trip(tmp_path):
    path = tmp_path / "state" / "deleted_users.txt"
    assert read_deleted_users(path) == set()
    record_deleted_user(path, "u1")
    record_deleted_user(path, "u2")
    assert read_deleted_users(path) == {"u1", "u2"}
