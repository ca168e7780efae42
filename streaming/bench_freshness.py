"""Freshness: time from producing an event until a recommendation call returns the changed list.

Each trial, for one user at a time:

1. under the worker's lock, ask the model for the user's top-k, excluding what the user already
   had (``model.history(user)``, what serving excludes by default);
2. produce a click on the list's first item, keyed by the user, and start the clock at
   ``producer.send``;
3. from this thread, every ``poll_s`` (1 ms) ask again under the worker's lock, until the call
   is made on a model that has learnt the click (the item is in ``model.history(user)``, read
   under the same lock hold); stop the clock when that call returns.

The click provably changes the list: once learnt, the item is in the user's history and so
excluded from the list, whatever else the model does; and since the check is on the history,
a list changed by anything else (other users' events moving global statistics) does not stop
the clock early. The measured time covers the producer, the broker, the worker's fetch,
decode, validation and learning (and the vectorised ``flush``, done by the worker after the
batch or by the recommendation call itself, whichever comes first) and one recommendation
call. `reranked_beyond_removal` reports how often the new list is more than the old one minus
the clicked item (the fast path re-ranked it, not just the exclusion).

With ``--background-rate`` other users' events stream in meanwhile (`Background`), so the
worker is ingesting while the trials are timed.

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

import pyarrow as pa

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
    reranked: int = 0

    def as_dict(self) -> dict:
        n = len(self.visible_ms)
        return {"freshness_ms": summary(self.visible_ms),
                "max_ms": round(max(self.visible_ms), 3) if n else None,
                "produce_to_consumed_ms": summary(self.consumed_ms),
                "consumed_to_visible_ms": summary(self.consumed_to_visible_ms),
                "recommend_call_ms": summary(self.recommend_ms),
                "timeouts": self.timeouts, "skipped_users_without_list": self.skipped,
                "reranked_beyond_removal": round(self.reranked / n, 3) if n else None}


def _ask(worker, user: str, k: int, timings: list[float]) -> tuple[list[str], list[str]]:
    """(top-k excluding the user's history, that history), both read in one hold of the lock."""
    with worker.lock:
        started = time.perf_counter()
        model = worker.model
        history = model.history(user)
        top = model.recommend(user, k, exclude=history)
        timings.append((time.perf_counter() - started) * 1000)
    return top, history


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
        before, history = _ask(worker, user, k, result.recommend_ms)
        if not before:
            result.skipped += 1
            continue
        clicked, had = before[0], history.count(before[0])  # 0: it is excluded, so not in the history
        value = json.dumps({"event_id": f"fresh-{n}", "user_id": user, "item_id": clicked,
                            "timestamp": int((start_seconds + n) * 1000), "event_type": "click"}).encode()
        clock.forget(user)
        sent = time.perf_counter()
        producer.send(topic, key=user.encode(), value=value)
        while True:
            now, history = _ask(worker, user, k, result.recommend_ms)
            seen = time.perf_counter()
            if history.count(clicked) > had or seen - sent > timeout_s:
                break
            time.sleep(poll_s)
        if history.count(clicked) == had:
            result.timeouts += 1
            logger.warning("trial %d: %s's click on %s was not learnt within %.1f s", n, user, clicked, timeout_s)
            continue
        result.visible_ms.append((seen - sent) * 1000)
        result.reranked += now[: k - 1] != before[1:]
        batch = clock.wait(user, timeout_s)
        if batch is not None:
            result.consumed_ms.append((batch[0] - sent) * 1000)
            result.consumed_to_visible_ms.append((seen - batch[0]) * 1000)
        time.sleep(gap_s)
    return result


class Background:
    """Produce other users' interactions at ``rate`` per second on a thread until stopped.

    Cycles through ``events`` as often as needed, each pass with fresh event ids (``bg-``) and
    timestamps moving on from ``start_seconds`` at the same rate, so the trials and the
    background share one stream time. Uses its own producer.
    """

    def __init__(self, bootstrap: str, topic: str, events, rate: float, start_seconds: float) -> None:
        self._events = events.select(["event_id", "user_id", "item_id", "timestamp", "event_type", "value"])
        self.bootstrap, self.topic, self.rate, self.start_seconds = bootstrap, topic, rate, start_seconds
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background-events", daemon=True)

    def _pass(self, number: int) -> tuple[list[str], list[bytes]]:
        """Keys and values of pass ``number`` over the events."""
        import numpy as np

        from streaming.producer import event_values

        n = self._events.num_rows
        stamps = ((self.start_seconds + (number * n + np.arange(n)) / self.rate) * 1000).astype(np.int64)
        moved = self._events.set_column(0, "event_id", pa.array([f"bg-{number}-{k}" for k in range(n)]))
        moved = moved.set_column(3, "timestamp", pa.array(stamps).cast(pa.timestamp("ms", tz="UTC")))
        return moved.column("user_id").to_pylist(), event_values(moved)

    def _run(self) -> None:
        from streaming.kafka import make_producer
        from streaming.partitioning import user_key
        from streaming.producer import TokenBucket

        chunk = max(1, int(self.rate / 100))
        bucket = TokenBucket(self.rate, burst=chunk)
        producer = make_producer(self.bootstrap, linger_ms=0)
        try:
            number = 0
            while not self._stop.is_set():
                users, values = self._pass(number)
                for start in range(0, len(values), chunk):
                    if self._stop.is_set():
                        return
                    bucket.take(chunk)
                    for user, value in zip(users[start:start + chunk], values[start:start + chunk]):
                        producer.send(self.topic, key=user_key(user), value=value)
                    self.sent += len(values[start:start + chunk])
                number += 1
        finally:
            producer.close()

    def __enter__(self) -> Background:
        if self._events.num_rows:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
