"""The prequential (test-then-learn) protocol every quality number in fastslow comes from.

1. Events are sorted by timestamp, stable for ties (`EventStream`).
2. The first `warmup` fraction is learn-only (`Recommender.learn_warmup`).
3. For every later event (u, i, t) the policy ranks its top-k for u over every item it has
   learned (= every item seen before t), excluding the items u already interacted with
   unless `include_seen`. HR@k = 1 if i is in the list; NDCG@k = 1/log2(rank + 2) with rank
   counted from 0. Every post-warm-up event is in the denominator: one whose item was never
   seen, or was already interacted with by u, is a miss.
4. Then the policy learns the event through `learn_one`, the same call the streaming
   worker makes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from evaluation.stream import EventStream
from models.base import Recommender

logger = logging.getLogger(__name__)

#: Called after each evaluated event with (event index, top-k list); used for adaptation metrics.
Observer = Callable[[int, list[str]], None]


@dataclass
class PolicyResult:
    """What one policy scored over the evaluated part of a stream."""

    name: str
    k: int
    hits: np.ndarray
    """1.0/0.0 per evaluated event, in stream order."""
    gains: np.ndarray
    """NDCG@k contribution per evaluated event."""
    seconds: float
    warmup_seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def evaluated(self) -> int:
        return len(self.hits)

    @property
    def hr(self) -> float:
        return float(self.hits.mean()) if len(self.hits) else 0.0

    @property
    def ndcg(self) -> float:
        return float(self.gains.mean()) if len(self.gains) else 0.0

    def summary(self) -> dict:
        """The JSON entry for this policy (keys follow k)."""
        return {f"hr@{self.k}": round(self.hr, 6), f"ndcg@{self.k}": round(self.ndcg, 6),
                "evaluated": self.evaluated,
                "events_per_s": round(self.evaluated / self.seconds, 1) if self.seconds else None,
                "warmup_s": round(self.warmup_seconds, 2), **self.extra}


def warmup_size(n_events: int, warmup: float) -> int:
    """Number of learn-only events: floor(warmup * n).

    >>> warmup_size(100_000, 0.2), warmup_size(10, 0.25)
    (20000, 2)
    """
    return int(math.floor(n_events * warmup))


def gain(rank: int) -> float:
    """NDCG contribution of a hit at 0-based `rank` (one relevant item, so IDCG = 1).

    >>> gain(0), round(gain(1), 4), round(gain(9), 4)
    (1.0, 0.6309, 0.2891)
    """
    return 1.0 / math.log2(rank + 2)


def prequential(stream: EventStream, policy: Recommender, *, k: int = 10, warmup: float = 0.2,
                include_seen: bool = False, observer: Observer | None = None,
                progress: Callable[[int], None] | None = None) -> PolicyResult:
    """Run the protocol for one policy over `stream` and return its per-event results.

    Examples
    --------
    >>> import pyarrow as pa, datetime as dt
    >>> from evaluation.peers import Popularity
    >>> ts = [dt.datetime(2024, 1, 1, 0, 0, s, tzinfo=dt.timezone.utc) for s in range(6)]
    >>> table = pa.table({"user_id": ["a", "b", "c", "c", "d", "d"],
    ...                   "item_id": ["x", "x", "y", "x", "x", "z"],
    ...                   "timestamp": pa.array(ts, pa.timestamp("ms", "UTC")),
    ...                   "event_type": ["click"] * 6, "value": [1.0] * 6})
    >>> r = prequential(EventStream.from_table(table), Popularity(), k=1, warmup=0.5)
    >>> r.hits.tolist()   # c->x: x is top-1; d->x: hit; d->z: never seen before, a miss
    [1.0, 1.0, 0.0]
    """
    n = len(stream)
    n_warm = warmup_size(n, warmup)
    started = time.perf_counter()
    policy.learn_warmup(*stream.slice(0, n_warm).columns())
    warm_seconds = time.perf_counter() - started

    history: dict[str, set[str]] = {}
    for u, i in zip(stream.user_codes[:n_warm], stream.item_codes[:n_warm]):
        history.setdefault(stream.user_names[u], set()).add(stream.item_names[i])

    hits = np.zeros(n - n_warm)
    gains = np.zeros(n - n_warm)
    users, items, type_names = stream.user_names, stream.item_names, stream.type_names
    started = time.perf_counter()
    for pos, n_event in enumerate(range(n_warm, n)):
        user, item = users[stream.user_codes[n_event]], items[stream.item_codes[n_event]]
        seen = history.setdefault(user, set())
        top = policy.recommend(user, k, exclude=() if include_seen else seen)
        if item in top:
            rank = top.index(item)
            hits[pos], gains[pos] = 1.0, gain(rank)
        if observer is not None:
            observer(n_event, top)
        policy.learn_one(user, item, float(stream.timestamps[n_event]),
                         type_names[stream.type_codes[n_event]], float(stream.values[n_event]))
        seen.add(item)
        if progress is not None:
            progress(1)
    return PolicyResult(name=policy.name, k=k, hits=hits, gains=gains,
                        seconds=time.perf_counter() - started, warmup_seconds=warm_seconds)
