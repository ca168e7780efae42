"""The prequential (test-then-learn) protocol every quality number in fastslow comes from.

1. Events are sorted by timestamp, stable for ties (`EventStream`).
2. Consecutive events with equal timestamps are one *step* (``ties="group"``, the default;
   `steps`): none of them informs another's ranking. ``ties="order"`` makes every event its
   own step, for logs whose file order within a timestamp is real.
3. The first `warmup` fraction (an event index) is learn-only (`Recommender.learn_warmup`).
   A step that straddles that index is learned after its post-warm-up events are ranked.
4. For every post-warm-up event (u, i, t) of a step the policy ranks its top-k for u over
   every item it has learned (= every item seen before the step), excluding the items u
   interacted with before the step unless `include_seen`. HR@k = 1 if i is in the list;
   NDCG@k = 1/log2(rank + 2) with rank counted from 0. Every post-warm-up event is in the
   denominator: one whose item was never seen, or was already interacted with by u, is a miss.
5. Then the policy learns the step's events, in file order, through `learn_one`, the same
   call the streaming worker makes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from evaluation.stream import EventStream
from fastslow.errors import ConfigError
from models.base import Recommender

logger = logging.getLogger(__name__)

#: How events that share a timestamp are stepped through (`steps`); the first is the default.
TIES = ("group", "order")

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


def steps(timestamps: np.ndarray, ties: str = "group") -> np.ndarray:
    """Start index of every step of a time-sorted stream, then its length (protocol, point 2).

    ``ties="group"``: consecutive equal timestamps are one step; ``"order"``: one event each.

    >>> steps(np.array([1.0, 1.0, 2.0, 3.0, 3.0, 3.0])).tolist()
    [0, 2, 3, 6]
    >>> steps(np.array([1.0, 1.0, 2.0]), "order").tolist()
    [0, 1, 2, 3]
    """
    if ties not in TIES:
        raise ConfigError("--ties", ties, "one of: " + ", ".join(TIES))
    n = len(timestamps)
    if ties == "order":
        return np.arange(n + 1)
    change = np.flatnonzero(np.diff(np.asarray(timestamps)) != 0) + 1
    return np.concatenate([[0], change, [n]]).astype(np.int64)


def first_learned(timestamps: np.ndarray, n_warm: int, ties: str = "group") -> int:
    """Where the events learned one by one (`learn_one`) start: the first event of the step that
    holds event `n_warm` (its warm-up events are learned with it, after it is ranked).

    >>> first_learned(np.array([1.0, 2.0, 2.0, 2.0, 3.0]), 2), first_learned(np.array([1.0, 2.0, 2.0]), 2, "order")
    (1, 2)
    >>> first_learned(np.array([1.0, 2.0]), 2)   # nothing left to score
    2
    """
    n = len(timestamps)
    if n_warm >= n:
        return n
    bounds = steps(timestamps, ties)
    return int(bounds[np.searchsorted(bounds, n_warm, side="right") - 1])


def prequential(stream: EventStream, policy: Recommender, *, k: int = 10, warmup: float = 0.2,
                include_seen: bool = False, ties: str = "group", observer: Observer | None = None,
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
    bounds = steps(stream.timestamps, ties)
    learn_from = first_learned(stream.timestamps, n_warm, ties)
    first = int(np.searchsorted(bounds, learn_from))   # the step holding event n_warm
    started = time.perf_counter()
    policy.learn_warmup(*stream.slice(0, learn_from).columns())
    warm_seconds = time.perf_counter() - started

    history: dict[str, set[str]] = {}
    for u, i in zip(stream.user_codes[:learn_from], stream.item_codes[:learn_from]):
        history.setdefault(stream.user_names[u], set()).add(stream.item_names[i])

    hits = np.zeros(n - n_warm)
    gains = np.zeros(n - n_warm)
    users, items, type_names = stream.user_names, stream.item_names, stream.type_names
    user_codes, item_codes = stream.user_codes, stream.item_codes
    started = time.perf_counter()
    for start, stop in zip(bounds[first:-1].tolist(), bounds[first + 1:].tolist()):
        for n_event in range(max(start, n_warm), stop):
            user, item = users[user_codes[n_event]], items[item_codes[n_event]]
            seen = history.get(user, ())
            top = policy.recommend(user, k, exclude=() if include_seen else seen)
            if item in top:
                pos = n_event - n_warm
                hits[pos], gains[pos] = 1.0, gain(top.index(item))
            if observer is not None:
                observer(n_event, top)
        for n_event in range(start, stop):
            user, item = users[user_codes[n_event]], items[item_codes[n_event]]
            policy.learn_one(user, item, float(stream.timestamps[n_event]),
                             type_names[stream.type_codes[n_event]], float(stream.values[n_event]))
            history.setdefault(user, set()).add(item)
        if progress is not None and stop > n_warm:
            progress(stop - max(start, n_warm))
    return PolicyResult(name=policy.name, k=k, hits=hits, gains=gains,
                        seconds=time.perf_counter() - started, warmup_seconds=warm_seconds)
