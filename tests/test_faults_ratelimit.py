"""The per-user rate limit and the fault points: hand-computed buckets, exact pruning, state
that survives snapshots, and a process that really dies at the armed point."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from fastslow.errors import ConfigError
from infra.faults import AppliedLog, parse_faults, slope, tally
from streaming.archive import EventArchive
from streaming.holdings import Holdings
from streaming.ratelimit import RateLimit, UserBuckets, rate_limit_of, rate_limited_error
from streaming.snapshots import SnapshotStore


def test_a_bucket_refills_by_event_time_at_the_rate_up_to_the_burst():
    limit = RateLimit(rate_per_s=2.0, burst=3)
    buckets = UserBuckets()
    # t=0: 3 tokens -> 3 events pass, the 4th not; t=0.25 s: +0.5 -> 0.5, no; t=0.5 s: +0.5 -> 1.0, yes
    assert [limit.allow(buckets, "bot", t) for t in (0, 0, 0, 0, 250, 500, 500)] == \
        [True, True, True, False, False, True, False]
    assert buckets.tokens["bot"] == (0.0, 500)
    assert limit.allow(buckets, "bot", 100_000)  # long after: full again (capped at the burst, not 199 tokens)
    assert buckets.tokens["bot"] == (2.0, 100_000)


def test_an_event_stamped_in_the_past_refills_nothing():
    limit = RateLimit(rate_per_s=1.0, burst=1)
    buckets = UserBuckets()
    assert limit.allow(buckets, "bot", 10_000)
    assert not limit.allow(buckets, "bot", 0)  # older than the partition's watermark: no tokens from it
    assert limit.allow(buckets, "newcomer", 5_000)  # a user seen for the first time has a full bucket
    assert limit.allow(buckets, "bot", 11_000)


def test_pruning_full_buckets_never_changes_a_decision():
    limit = RateLimit(rate_per_s=0.5, burst=4)
    rng = random.Random(1)
    events = [(f"u{rng.randint(0, 3000)}", t * 37) for t in range(20_000)]
    events += [("bot", events[-1][1] + k) for k in range(200)]
    pruned, whole = UserBuckets(), UserBuckets()
    whole.prune_at = 10**9  # never prunes
    got = [limit.allow(pruned, user, t) for user, t in events]
    want = [limit.allow(whole, user, t) for user, t in events]
    assert got == want and got.count(False) > 150
    assert len(pruned) < len(whole) / 2  # memory follows the active users


def test_bucket_state_round_trips_through_the_worker_and_partition_snapshots(tmp_path):
    limit = RateLimit(1.0, 2)
    store = SnapshotStore(tmp_path / "snapshots", durable=False)
    first = Holdings(store, EventArchive(tmp_path / "archive"), topic="t", group_id="g", worker_id="w1",
                     dedup_window=10)
    first.assign([0, 1], AppliedLog())
    first.start_at(0, 0)
    first.start_at(1, 0)
    for t in (0, 0, 0):
        limit.allow(first.held[0].limits, "bot", t)
    first.snapshot(AppliedLog())
    restarted = Holdings(store, EventArchive(tmp_path / "archive"), topic="t", group_id="g", worker_id="w1",
                         dedup_window=10)
    restarted.restore_worker(AppliedLog())
    adopted = Holdings(store, EventArchive(tmp_path / "archive"), topic="t", group_id="g", worker_id="w2",
                       dedup_window=10)
    adopted.assign([0], AppliedLog())
    for holdings in (restarted, adopted):
        buckets = holdings.held[0].limits
        assert buckets.state() == {"clock_ms": 0, "users": {"bot": (0.0, 0)}}
        assert not limit.allow(buckets, "bot", 500) and limit.allow(buckets, "bot", 1000)


def test_limits_and_their_dead_letter_reason_are_stated_plainly():
    error = rate_limited_error("bot", RateLimit(2.0, 50))
    assert (error.field, error.value) == ("user_id", "bot")
    assert error.reason == "rate limited (at most 50 events at once, then 2 per second of event time, per user)"
    assert rate_limit_of(0.0, 50) is None
    with pytest.raises(ConfigError, match="rate_limit_per_s"):
        RateLimit(-1.0, 10)
    with pytest.raises(ConfigError, match="rate_limit_burst"):
        RateLimit(1.0, 0.5)


def test_fault_specs_name_known_points_and_a_hit_count():
    assert parse_faults("apply:3,snapshot:1") == {"apply": 3, "snapshot": 1}
    for bad in ("apply", "apply:0", "apply:x", "elsewhere:2", "apply:1,"):
        with pytest.raises(ConfigError, match="point:n"):
            parse_faults(bad)


def test_an_armed_process_dies_by_sigkill_at_the_nth_time_it_reaches_the_point():
    code = ("from infra.faults import arm, point\n"
            "arm('commit:2')\n"
            "point('apply'); point('commit'); print('after the first commit', flush=True)\n"
            "point('commit'); print('never printed', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -9
    assert "after the first commit" in done.stdout and "never printed" not in done.stdout
    assert "fault injected: SIGKILL at commit #2" in done.stderr


def test_tally_counts_losses_and_double_applications_by_key():
    counted = tally(["a", "b", "c", "d"], ["a", "b", "b", "b", "c", "x"])
    assert counted.as_dict() == {"produced": 4, "applied": 4, "lost": 1, "duplicated": 1}  # x: never produced
    assert slope([0, 1, 2], [5.0, 5.0, 5.0]) == 0.0 and slope([1], [3.0]) == 0.0
