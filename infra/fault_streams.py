"""What the stream fault scenarios share: event streams with countable keys, producing every
event until Kafka acknowledges it, and `fastslow worker` as a child process that can crash.

Every event of `keyed_events` has its own ``(user_id, timestamp_ms)`` pair (event ``n`` is
stamped ``start_ms + n * step_ms``), which is the key `infra.faults.AppliedLog` records, so
a final state can be compared with what was produced event by event.

>>> table = keyed_events(6, users=2, seed=1)
>>> table.num_rows, len(set(event_keys(table)))
(6, 6)
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from fastslow.errors import ServiceError
from streaming.normalize import EVENT_SCHEMA

logger = logging.getLogger(__name__)

BASE_MS = 1714564800000  # 2024-05-01T12:00:00Z
FASTSLOW = Path(sys.executable).parent / "fastslow"


def unique(prefix: str) -> str:
    """``prefix`` with a random suffix: topics and groups of one run never meet another's."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def keyed_events(n: int, *, users: int = 100, items: int = 200, seed: int = 0, start_ms: int = BASE_MS,
                 step_ms: int = 1000, prefix: str = "f") -> pa.Table:
    """``n`` events of ``users`` users over ``items`` items, one every ``step_ms`` (time order)."""
    rng = np.random.default_rng(seed)
    stamps = start_ms + np.arange(n, dtype=np.int64) * step_ms
    return pa.table({
        "event_id": [f"{prefix}{seed}-{k}" for k in range(n)],
        "user_id": [f"u{u}" for u in rng.integers(0, users, n)],
        "item_id": [f"i{i}" for i in rng.integers(0, items, n)],
        "timestamp": pa.array(stamps).cast(pa.timestamp("ms", tz="UTC")),
        "event_type": rng.choice(["view", "click", "purchase"], n).tolist(),
        "value": rng.integers(1, 4, n).astype(np.float64),
        "context": pa.nulls(n, pa.string()),
    }, schema=EVENT_SCHEMA)


def event_keys(table: pa.Table) -> list[tuple[str, int]]:
    """``(user_id, timestamp_ms)`` of every row, the key `infra.faults.AppliedLog` records."""
    return list(zip(table.column("user_id").to_pylist(), table.column("timestamp").cast(pa.int64()).to_pylist()))


def make_topic(bootstrap: str, partitions: int = 4, prefix: str = "faults") -> tuple[str, str]:
    """A fresh interactions topic (named ``prefix-<random>``) and its dead-letter topic."""
    from streaming.kafka import TopicSpec, ensure_topics

    topic = unique(prefix)
    ensure_topics(bootstrap, [TopicSpec(topic, partitions), TopicSpec(topic + ".dlq", 1)])
    return topic, topic + ".dlq"


def produce_acked(bootstrap: str, topic: str, table: pa.Table, rate: float = 0.0, timeout: float = 120.0,
                  progress: Callable[[int], None] | None = None) -> int:
    """Produce every event until Kafka acknowledged it, sending again what failed; return sends.

    The producer survives broker outages: an event whose send fails (broker away longer than
    the client retries) is sent again, so it may reach the topic twice; the worker's dedup by
    ``event_id`` must apply it once. ``rate`` events/s (0: as fast as possible) paces the first
    sends; ``progress(1)`` is called (on the client's thread) for each acknowledgement.
    """
    from kafka.errors import KafkaError

    from streaming.kafka import make_producer
    from streaming.partitioning import user_key
    from streaming.producer import TokenBucket, event_values

    values, users = event_values(table), table.column("user_id").to_pylist()
    producer = make_producer(bootstrap, delivery_timeout_ms=15_000, request_timeout_ms=5_000, max_block_ms=15_000)
    bucket, pending, sends = TokenBucket(rate, burst=max(1.0, rate / 50)), list(range(len(values))), 0
    deadline = time.monotonic() + timeout
    try:
        while pending:
            if time.monotonic() > deadline:
                raise ServiceError("kafka", f"{len(pending)} events not acknowledged within {timeout:.0f} s")
            futures = []
            for n in pending:
                bucket.take(1)
                try:
                    future = producer.send(topic, key=user_key(users[n]), value=values[n])
                    if progress is not None:
                        future.add_callback(lambda _: progress(1))
                    futures.append((n, future))
                except KafkaError:  # metadata unavailable for max_block_ms: retried below
                    futures.append((n, None))
                sends += 1
            failed = []
            for n, future in futures:
                try:
                    if future is None:
                        raise KafkaError("not sent")
                    future.get(timeout=max(1.0, deadline - time.monotonic()))
                except KafkaError:
                    failed.append(n)
            if failed:
                logger.info("%d of %d sends failed (broker away?); sending them again", len(failed), len(futures))
                time.sleep(0.5)
            pending = failed
    finally:
        producer.close(timeout=5)
    return sends


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Offsets the group committed on ``topic``, summed over partitions (0 if it cannot ask)."""
    from kafka.errors import KafkaError

    from streaming.kafka import committed_offsets

    try:
        return sum(o or 0 for o in committed_offsets(bootstrap, group, topic).values())
    except (KafkaError, ServiceError):
        return 0


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``condition()`` until true; ServiceError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ServiceError("fault scenario", f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class WorkerProcess:
    """``fastslow worker`` as a child process with its output in ``log``."""

    process: subprocess.Popen
    log: Path
    log_start: int = 0
    """Size of the log when this process started (earlier runs wrote what comes before)."""

    @classmethod
    def start(cls, bootstrap: str, topic: str, group: str, data_dir: Path, *, model: str | None,
              fault: str | None = None, worker_id: str = "w1", env: dict[str, str] | None = None,
              options: tuple[str, ...] = ()) -> WorkerProcess:
        """Start a worker (``model=None``: the champion FastSlow), armed with ``fault`` if given."""
        log = Path(data_dir) / f"worker-{worker_id}.log"
        argv = [str(FASTSLOW), "worker", "--bootstrap-servers", bootstrap, "--topic", topic,
                "--dlq-topic", topic + ".dlq", "--group", group, "--worker-id", worker_id,
                "--data-dir", str(data_dir), "--stats-interval", "0.5", *options]
        if model is not None:
            argv += ["--model", model]
        environment = {**os.environ, "FASTSLOW_LOG_LEVEL": "INFO", **(env or {})}
        environment.pop("FASTSLOW_FAULT", None)
        if fault:
            environment["FASTSLOW_FAULT"] = fault
        with open(log, "ab") as out:
            out.write(f"--- start (fault {fault})\n".encode())
            out.flush()
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=environment)
            start = out.tell()
        return cls(process, log, start)

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_joined(self, timeout: float) -> None:
        """Wait until the worker has its partitions (or has exited: a crash may come first).

        Until then it may still be importing, and a SIGTERM would find no handler installed.
        """
        wait_for(lambda: not self.alive() or "assigned partitions" in self.output(), timeout,
                 f"the worker to join its group (log {self.log})")

    def output(self) -> str:
        """What this process wrote to the log so far."""
        with open(self.log, "rb") as f:
            f.seek(self.log_start)
            return f.read().decode(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (finish the batch, commit, snapshot) and wait; SIGKILL after ``timeout``."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def register_champion(data_dir: Path, table: pa.Table, *, dim: int = 16, epochs: int = 2, seed: int = 0):
    """Train a small slow ranker on ``table`` and make it the champion of ``data_dir``'s registry.

    That registry (``sqlite:///<data_dir>/mlflow.db``, model ``fastslow-ranker``) is where
    ``fastslow worker`` and ``fastslow serve`` look for the champion by default.
    """
    import torch

    from consolidation.registry import ModelRegistry, default_tracking_uri
    from models.slow import SlowRanker

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ranker = SlowRanker(dim=dim, epochs=epochs, batch_size=256, seed=seed)
        ranker.fit(ranker.build_examples(table.column("user_id").to_pylist(), table.column("item_id").to_pylist()))
    finally:
        torch.set_num_threads(threads)
    registry = ModelRegistry(default_tracking_uri(data_dir))
    with registry.start_run("champion for a fault scenario") as run:
        version = registry.register(registry.log_ranker(ranker), run.info.run_id)
    registry.promote(version)
    return ranker
