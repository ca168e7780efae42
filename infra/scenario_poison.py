"""Scenario: one user floods the stream; the per-user rate limit keeps their share bounded.

`poisoning` streams ``users`` ordinary users (``per_user`` events each over an hour of event
time) and one bot sending ``flood`` events within a minute, through a worker running the
product model (`models.fastslow.FastSlow` over a small slow ranker) with a
`streaming.ratelimit.RateLimit`. It counts what the bot got into each place the system
learns from, and checks nothing was silently lost: every event is either applied (and
archived) or in the dead-letter topic with reason ``rate limited``.

- fast memory: the bot's share of episodic-memory entries (the model also caps each user's
  entries at ``memory_per_user``);
- fast state and stream statistics: the bot's share of the events learned;
- next consolidation sample: the bot's share of `consolidation.sampling.sample_replay` over
  the worker's archive, drawn as ``fastslow consolidate`` draws it. The sampler has no
  per-user cap of its own: what keeps the bot out is that rate-limited events never reach
  the archive (they are dead letters), so the bot's share of the sample follows its share of
  what was learned.

"Cannot dominate" is checked as: the bot holds less than `DOMINANT_SHARE` of the memory
entries and of the sample while it sends most of the stream, and at most the rate limit's
allowance (``burst + rate * 60 s``) of events is learned.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa

from infra.fault_streams import BASE_MS, make_topic, produce_acked, unique, wait_for
from infra.faults import ScenarioResult
from streaming.normalize import EVENT_SCHEMA
from streaming.ratelimit import REASON_RATE_LIMITED, RateLimit, UserBuckets

logger = logging.getLogger(__name__)

BOT = "bot"
HOUR_MS = 3_600_000
DOMINANT_SHARE = 0.25
"""A share of memory or of the sample at or above this counts as the bot dominating it."""


def flood_events(users: int, per_user: int, flood: int, start_ms: int, seed: int = 0) -> pa.Table:
    """Ordinary users over an hour, and `BOT` sending ``flood`` events in its first minute, in time order.

    >>> table = flood_events(3, 2, 4, start_ms=0)
    >>> table.num_rows, table.column("user_id").to_pylist().count("bot")
    (10, 4)
    """
    rng = np.random.default_rng(seed)
    n = users * per_user
    people = rng.permutation(np.repeat(np.arange(users), per_user))
    stamps = np.concatenate([start_ms + np.linspace(0, HOUR_MS, n, endpoint=False).astype(np.int64),
                             start_ms + np.linspace(0, 60_000, flood, endpoint=False).astype(np.int64) + 7])
    who = [f"u{u}" for u in people] + [BOT] * flood
    items = [f"i{i}" for i in rng.integers(0, 100, n)] + [f"spam{k % 3}" for k in range(flood)]
    order = np.argsort(stamps, kind="stable")
    total = n + flood
    return pa.table({
        "event_id": pa.array([f"p{seed}-{k}" for k in range(total)]).take(pa.array(order)),
        "user_id": pa.array(who).take(pa.array(order)), "item_id": pa.array(items).take(pa.array(order)),
        "timestamp": pa.array(stamps[order]).cast(pa.timestamp("ms", tz="UTC")),
        "event_type": ["click"] * total, "value": [1.0] * total, "context": pa.nulls(total, pa.string()),
    }, schema=EVENT_SCHEMA)


def expected_limited(table: pa.Table, limit: RateLimit, partitions: int) -> set[str]:
    """The event ids a worker must rate-limit: `limit` applied to each partition's events in order."""
    from streaming.partitioning import partition_of

    buckets: dict[int, UserBuckets] = {}
    limited = set()
    stamps = table.column("timestamp").cast(pa.int64()).to_pylist()
    for event_id, user, ms in zip(table.column("event_id").to_pylist(), table.column("user_id").to_pylist(), stamps):
        if not limit.allow(buckets.setdefault(partition_of(user, partitions), UserBuckets()), user, ms):
            limited.add(event_id)
    return limited


def poisoning(bootstrap: str, data_dir: Path, ranker, *, users: int = 200, per_user: int = 20, flood: int = 5000,
              limit: RateLimit = RateLimit(1.0, 100), sample_size: int = 2000, seed: int = 0,
              timeout: float = 120.0) -> ScenarioResult:
    """Flood through a rate-limited worker (see the module docstring); ``ranker`` is the slow model."""
    from models.fastslow import FastSlow
    from streaming.worker import Worker

    data_dir = Path(data_dir)
    table = flood_events(users, per_user, flood, start_ms=BASE_MS, seed=seed)
    topic, dlq = make_topic(bootstrap)
    produce_acked(bootstrap, topic, table)
    worker = Worker(FastSlow(ranker=ranker.clone()), bootstrap, topic=topic, dlq_topic=dlq, group_id=unique("poison"),
                    data_dir=data_dir, flush_interval_s=0.2, rate_limit=limit)
    with worker:
        worker.run(until=lambda: worker.stats.records >= table.num_rows, timeout=timeout)
    model = worker.model
    memory = {u: len(s["memory"]["items"]) for u, s in pickle.loads(model.export_users(model.users())).items()}
    letters = _rate_limited_letters(bootstrap, dlq, worker.stats.rate_limited, timeout)
    archived = _archived(data_dir, topic)
    sample = _sample(data_dir, topic, sample_size, seed)
    applied = len(archived)
    bot_applied = sum(1 for _, user in archived if user == BOT)
    want = expected_limited(table, limit, partitions=4)
    details = {
        "rate_limited": worker.stats.rate_limited, "dead_letters_rate_limited": len(letters),
        "limited_as_expected": letters == want,
        "bot_events": flood, "bot_applied": bot_applied, "bot_applied_bound": int(limit.burst + limit.rate_per_s * 60),
        "bot_share_of_stream": round(flood / table.num_rows, 4),
        "bot_share_of_learned": round(bot_applied / max(applied, 1), 4),
        "bot_share_of_memory": round(memory.get(BOT, 0) / max(sum(memory.values()), 1), 4),
        "bot_memory_entries": memory.get(BOT, 0), "memory_per_user": model.memory_per_user,
        "bot_share_of_sample": round(sample.get(BOT, 0) / max(sum(sample.values()), 1), 4),
        "sample_size": sum(sample.values()), "dominant_share": DOMINANT_SHARE,
    }
    lost = table.num_rows - applied - len(letters)
    passed = (lost == 0 and details["limited_as_expected"] and bot_applied <= details["bot_applied_bound"]
              and details["bot_memory_entries"] <= 2 * model.memory_per_user
              and details["bot_share_of_memory"] < DOMINANT_SHARE and details["bot_share_of_sample"] < DOMINANT_SHARE)
    return ScenarioResult("poison", passed, table.num_rows, applied, max(lost, 0), 0, details)


def _rate_limited_letters(bootstrap: str, dlq: str, expected: int, timeout: float) -> set[str]:
    """Event ids of the dead letters whose reason says rate limited."""
    import json

    from streaming.dlq import DeadLetter
    from streaming.kafka import make_consumer

    found: set[str] = set()
    consumer = make_consumer(bootstrap, None, [dlq], consumer_timeout_ms=2000)
    try:
        def read() -> bool:
            for record in consumer:
                letter = DeadLetter.from_record(record)
                if letter.reason.startswith(REASON_RATE_LIMITED):
                    found.add(json.loads(letter.value)["event_id"])
            return len(found) >= expected

        wait_for(read, timeout, f"{expected} rate-limited dead letters")
    finally:
        consumer.close()
    return found


def _archived(data_dir: Path, topic: str) -> list[tuple[str, str]]:
    from streaming.archive import archive_dir, iter_archive

    return [pair for t in iter_archive(archive_dir(data_dir, topic))
            for pair in zip(t.column("event_id").to_pylist(), t.column("user_id").to_pylist())]


def _sample(data_dir: Path, topic: str, size: int, seed: int) -> dict[str, int]:
    """Events per user in the next consolidation's replay sample drawn from the archive."""
    from collections import Counter

    from consolidation.sampling import sample_replay
    from streaming.archive import archive_dir, iter_archive

    sample = sample_replay(iter_archive(archive_dir(data_dir, topic)), size, seed=seed)
    return dict(Counter(sample.users.tolist()))
