"""Ingest: events per second through the whole worker path vs a plain kafka-python consumer.

Both read the same topic of the same broker in the same run, each as a fresh consumer group
from the beginning, and each is timed from the moment its first records arrive (joining the
group is not ingest) to the last event:

- `raw_consume`: a ``KafkaConsumer`` polling batches and touching every value, nothing else;
- `worker_ingest`: a `streaming.worker.Worker` with a model: decode and validate, dead letters,
  dedup, ``learn_one`` per event and ``flush()`` per batch, archive (Parquet, fsync) and
  commit, timed until the last archive write and commit are done.

`profile_worker` runs the worker path once more under cProfile and reports where the time
goes per event, for the functions of this repository.
"""

from __future__ import annotations

import cProfile
import logging
import pstats
import tempfile
import time
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


class NoOp:
    """A model that learns nothing: what the worker path costs without any model work.

    >>> NoOp().learn_one("u", "i", 0.0), NoOp().recommend("u", 3)
    (None, [])
    """

    name = "noop"

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        return None

    def recommend(self, user_id, k, exclude=()) -> list[str]:
        return []


def raw_consume(bootstrap: str, topic: str, count: int, max_poll_records: int = 2000,
                timeout_s: float = 600.0) -> dict:
    """Read ``count`` records of ``topic`` with a plain consumer; events/s and CPU µs per event."""
    from streaming.kafka import make_consumer

    consumer = make_consumer(bootstrap, f"bench-raw-{uuid.uuid4().hex[:8]}", [topic],
                             max_poll_records=max_poll_records, fetch_max_wait_ms=10)
    try:
        seen, started, cpu = 0, None, None
        deadline = time.monotonic() + timeout_s
        while seen < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the raw consumer read {seen} of {count} records in {timeout_s} s")
            batch = consumer.poll(timeout_ms=200, max_records=max_poll_records)
            if batch and started is None:
                started, cpu = time.perf_counter(), time.process_time()
            seen += sum(1 for records in batch.values() for record in records if record.value is not None)
        seconds = time.perf_counter() - started
        return {"events_per_s": round(count / seconds, 1), "seconds": round(seconds, 3),
                "cpu_us_per_event": round((time.process_time() - cpu) / count * 1e6, 2)}
    finally:
        consumer.close()


def worker_ingest(bootstrap: str, topic: str, count: int, model, *, data_dir: str | Path | None = None,
                  timeout_s: float = 900.0, profiler: cProfile.Profile | None = None, **options) -> dict:
    """Run a worker (fresh group) over ``topic`` until ``count`` records are applied and committed."""
    from streaming.worker import Worker

    first: list[float] = []

    def on_batch(report) -> None:
        if not first:
            first.extend([time.perf_counter() - report.seconds, time.process_time(), report.records])

    with tempfile.TemporaryDirectory(prefix="fastslow-ingest-") as tmp:
        worker = Worker(model, bootstrap, topic=topic, dlq_topic=topic + ".dlq",
                        group_id=f"bench-worker-{uuid.uuid4().hex[:8]}", data_dir=data_dir or tmp,
                        on_batch=on_batch, **options)
        with worker:
            if profiler is not None:
                profiler.enable()
            try:
                done = worker.run(until=lambda: worker.stats.records >= count, timeout=timeout_s)
                worker.flush()  # the last archive write and commit are part of ingest
            finally:
                if profiler is not None:
                    profiler.disable()
            seconds, cpu = time.perf_counter() - first[0], time.process_time() - first[1]
            if not done:
                raise TimeoutError(f"the worker applied {worker.stats.records} of {count} records in {timeout_s} s")
    stats = worker.stats
    return {"events_per_s": round(count / seconds, 1), "seconds": round(seconds, 3),
            "cpu_us_per_event": round(cpu / max(count - first[2], 1) * 1e6, 2),
            "events_applied": stats.events_applied, "dlq": stats.dlq, "duplicates": stats.duplicates,
            "batches": stats.batches, "commits": stats.commits, "snapshots": stats.snapshots,
            "last_snapshot_seconds": stats.last_snapshot_seconds}


def profile_worker(bootstrap: str, topic: str, count: int, model, top: int = 15, **options) -> dict:
    """`worker_ingest` under cProfile: per-event µs of this repository's costliest functions.

    ``self_us_per_event`` ranks by time spent in the function itself, ``cumulative_us_per_event``
    by time including its callees; cProfile slows Python code down, so compare the numbers
    with each other, not with the unprofiled run.
    """
    profiler = cProfile.Profile()
    run = worker_ingest(bootstrap, topic, count, model, profiler=profiler, **options)
    stats = pstats.Stats(profiler).stats
    ours = {f"{Path(path).relative_to(REPO_ROOT)}:{line}({name})": (calls, tottime, cumtime)
            for (path, line, name), (_, calls, tottime, cumtime, _) in stats.items()
            if path.startswith(str(REPO_ROOT)) and "/.venv/" not in path}

    def ranked(column: int) -> dict:
        best = sorted(ours.items(), key=lambda kv: -kv[1][column])[:top]
        return {name: {"us_per_event": round(v[column] / count * 1e6, 2), "calls": v[0]} for name, v in best}

    return {"profiled_events_per_s": run["events_per_s"], "self_us_per_event": ranked(1),
            "cumulative_us_per_event": ranked(2)}
