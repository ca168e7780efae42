"""Freshness: time from producing an event until a recommendation call returns the changed list.

Each trial, for one user at a time:

1. under the worker's lock, ask the model for the user's top-k, excluding what the user already
   had (``model.history(user)``, what serving excludes by default);
2. produce a click on the list's first item, keyed by the user, and start the clock at
   ``producer.send``;
3. from this thread, every ``poll_s`` (1 ms) ask again under the worker's lock, until the list
   differs from the one in step 1; stop the clock when that call returns.

The click provably changes the list: once learnt, the item is in the user's history and so
excluded, whatever else the model does. The measured time therefore covers the producer, the
broker, the worker's fetch, decode, validation and learning (and the vectorised ``flush``, done
by the worker after the batch or by the recommendation call itself, whichever comes first) and
one recommendation call. The list then found is checked against the list once the worker
reports the batch applied (`changed_but_not_settled` counts differences), and
`reranked_beyond_removal` reports how often the new list is more than the old one minus the
clicked item (the fast path re-ranked it, not just the exclusion).

A worker hook (``on_batch``) records when the batch holding each trial's event started and
finished, for the breakdown ``produce_to_consumed_ms`` (send to the end of the poll that
fetched it) and ``consumed_to_visible_ms``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from streaming.bench_setup import summary

logger = logging.getLogger(__name__)


class BatchClock:
    """A worker ``on_batch`` hook: per user, when the latest batch applying them began and ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, float]] = {}

    def __call__(self, report) -> None:
        end = time.perf_counter()
        with self._lock:
            for user in report.users:
                self._seen[user] = (end - report.seconds, end)

    def forget(self, user: str) -> None:
        with self._lock:
            self._seen.pop(user, None)

    def wait(self, user: str, timeout: float) -> tuple[float, float] | None:
        """(batch start, batch end) of the user's batch once applied, None after ``timeout`` s."""
        deadline = time.perf_counter() + timeout
        while True:
            with self._lock:
                seen = self._seen.get(user)
            if seen is not None or time.perf_counter() > deadline:
                return seen
            time.sleep(0.0005)


@dataclass
class FreshnessResult:
    visible_ms: list[float] = field(default_factory=list)
    consumed_ms: list[float] = field(default_factory=list)
    consumed_to_visible_ms: list[float] = field(default_factory=list)
    recommend_ms: list[float] = field(default_factory=list)
    timeouts: int = 0
    skipped: int = 0
    not_settled: int = 0
    reranked: int = 0

    def as_dict(self) -> dict:
        n = len(self.visible_ms)
        return {"freshness_ms": summary(self.visible_ms),
                "max_ms": round(max(self.visible_ms), 3) if n else None,
                "produce_to_consumed_ms": summary(self.consumed_ms),
                "consumed_to_visible_ms": summary(self.consumed_to_visible_ms),
                "recommend_call_ms": summary(self.recommend_ms),
                "timeouts": self.timeouts, "skipped_users_without_list": self.skipped,
                "changed_but_not_settled": self.not_settled,
                "reranked_beyond_removal": round(self.reranked / n, 3) if n else None}


def _ask(worker, user: str, k: int, timings: list[float]) -> list[str]:
    with worker.lock:
        started = time.perf_counter()
        model = worker.model
        top = model.recommend(user, k, exclude=model.history(user))
        timings.append((time.perf_counter() - started) * 1000)
    return top


def measure_freshness(worker, clock: BatchClock, producer, topic: str, users: Sequence[str], trials: int,
                      start_seconds: float, *, k: int = 10, poll_s: float = 0.001, timeout_s: float = 5.0,
                      gap_s: float = 0.005) -> FreshnessResult:
    """Run ``trials`` trials (see the module docstring), cycling through ``users``.

    ``worker`` runs on another thread with ``clock`` as its ``on_batch`` hook; events are
    stamped ``start_seconds`` + trial number (stream time moves on from the warm-up log).
    """
    result = FreshnessResult()
    for n in range(trials):
        user = users[n % len(users)]
        before = _ask(worker, user, k, result.recommend_ms)
        if not before:
            result.skipped += 1
            continue
        value = json.dumps({"event_id": f"fresh-{n}", "user_id": user, "item_id": before[0],
                            "timestamp": int((start_seconds + n) * 1000), "event_type": "click"}).encode()
        clock.forget(user)
        sent = time.perf_counter()
        producer.send(topic, key=user.encode(), value=value)
        while True:
            now = _ask(worker, user, k, result.recommend_ms)
            seen = time.perf_counter()
            if now != before or seen - sent > timeout_s:
                break
            time.sleep(poll_s)
        if now == before:
            result.timeouts += 1
            logger.warning("trial %d: %s's list did not change within %.1f s", n, user, timeout_s)
            continue
        result.visible_ms.append((seen - sent) * 1000)
        batch = clock.wait(user, timeout_s)
        if batch is not None:
            result.consumed_ms.append((batch[0] - sent) * 1000)
            result.consumed_to_visible_ms.append((seen - batch[0]) * 1000)
        if _ask(worker, user, k, []) != now:
            result.not_settled += 1
        result.reranked += now[: k - 1] != before[1:]
        time.sleep(gap_s)
    return result
