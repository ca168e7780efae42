"""What the streaming benchmarks share: a synthetic log, a small champion, a worker thread, numbers.

The benchmarks (`streaming.bench`) run against a real broker they start themselves
(`infra.broker.EmbeddedBroker`) with a real `streaming.worker.Worker`; only the data is
synthetic (`evaluation.synth`), and the slow model is a small `models.slow.SlowRanker` trained
on the start of it, standing in for the MLflow champion a deployment would load.

>>> summary([3.0, 1.0, 2.0])
{'p50': 2.0, 'p99': 2.98, 'n': 3}
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

logger = logging.getLogger(__name__)


def summary(values: Sequence[float], digits: int = 3) -> dict:
    """``{"p50", "p99", "n"}`` of ``values`` (rounded), the shape every latency number takes."""
    if not len(values):
        return {"p50": None, "p99": None, "n": 0}
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 99])
    return {"p50": round(float(p50), digits), "p99": round(float(p99), digits), "n": len(values)}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (timings on a shared machine need them next to them)."""
    return [round(x, 2) for x in os.getloadavg()]


def synthetic_events(n_events: int, preset: str = "default", seed: int = 0) -> pa.Table:
    """A synthetic interaction log of ``n_events`` (`evaluation.synth`), in time order."""
    from evaluation.synth import SynthConfig, generate

    stream = generate(SynthConfig.preset(preset, n_events=n_events, shift_fraction=0.0, seed=seed))
    return stream.events_table()


def train_champion(events: pa.Table, dim: int = 32, epochs: int = 2, seed: int = 0):
    """A small `SlowRanker` trained on ``events``: the slow model the benchmarks' FastSlow uses."""
    from models.slow import SlowRanker

    started = time.perf_counter()
    ranker = SlowRanker(dim=dim, epochs=epochs, seed=seed)
    ranker.fit(ranker.build_examples(events.column("user_id").to_pylist(), events.column("item_id").to_pylist()))
    logger.info("champion: %d users, %d items, dim %d, trained on %d events in %.1f s", len(ranker.users),
                len(ranker.items), dim, events.num_rows, time.perf_counter() - started)
    return ranker


def learn_table(model, events: pa.Table) -> None:
    """Learn every event of ``events`` in row order (what the worker would have applied), then flush."""
    stamps = events.column("timestamp").cast(pa.int64()).to_pylist()
    columns = [events.column(name).to_pylist() for name in ("user_id", "item_id", "event_type", "value")]
    for (user, item, kind, value), stamp in zip(zip(*columns), stamps):
        model.learn_one(user, item, stamp / 1000, kind, value)
    flush = getattr(model, "flush", None)
    if flush is not None:
        flush()


class WorkerThread:
    """Run a `streaming.worker.Worker` on a thread; `wait_assigned`, then `stop` (which closes it)."""

    def __init__(self, worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"worker-{worker.worker_id}", daemon=True)

    def _run(self) -> None:
        try:
            with self.worker:
                self.worker.run()
        except BaseException as exc:  # handed to the benchmark thread by `check`
            self.error = exc

    def start(self) -> WorkerThread:
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise the worker thread's error, if it failed."""
        if self.error is not None:
            raise RuntimeError(f"the worker thread failed: {self.error!r}") from self.error

    def wait_assigned(self, timeout: float = 60.0) -> None:
        """Block until the group gave the worker its partitions."""
        deadline = time.monotonic() + timeout
        while not self.worker.stats.assigned:
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker got no partitions within {timeout} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> None:
        self.worker.stop()
        self._thread.join(timeout)
        self.check()
