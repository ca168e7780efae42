"""Scenario: sustained load, bounded in time, on loopback: events in at a target rate while
``/recommend`` is asked at a steady rate.

`load` starts its own embedded broker (in memory), trains a small champion on a synthetic
log and serves it as one serving process does: a `serving.runtime.Runtime` with its
in-process worker (the same `models.fastslow.FastSlow` object learns and answers) behind
the real HTTP API (`serving.app.create_app` on uvicorn, `serving.server.BackgroundServer`).
Load comes from two spawned processes, so their interpreters do not share the server's lock:

- a **producer** sending events at ``rate`` per second for ``seconds`` (keyed by user, a fixed
  population of ``users``, items drawn with the popularity they have in the synthetic log the
  champion learnt (Zipf-like), or uniformly with ``items="uniform"``, stamped with the wall
  clock, unique ids), counting Kafka's acknowledgements as they come;
- a **prober** asking ``GET /recommend?user_id=…&k=10`` ``recommend_rate`` times per second
  on a fixed schedule (a late request goes at once; none is skipped), timing each answer.

Meanwhile this process samples, every ``sample_interval_s``: events acknowledged, records the
worker consumed, the consumer lag (acknowledged minus consumed: Tansu's end offsets cannot be
trusted, see ``STACK-NOTES.md``), the worker's events applied, and the resident memory (RSS)
of this process (runtime, worker and server: the producer and prober are elsewhere) and of
the broker. After ``seconds`` the producer stops, the worker gets up to ``drain_s`` to catch
up, and the runtime stops (committing and archiving).

What it reports: produce and apply rates over the run, lag over time (samples, max, at end
of the run, time to drain), ``/recommend`` p50/p99 (and per quarter of the run), RSS over
time with its growth from the second quarter (mean of its samples) to the end (mean of the
last quarter's), as bytes, a fraction and a least-squares slope over the second half, and
``memory_unbounded`` when the growth exceeds `MAX_MEMORY_GROWTH`. Produced, applied, lost
and duplicated are counted by event id against the worker's archive (every applied event is
archived exactly once when nothing is lost or applied twice).

It passes when nothing is lost or applied twice, every ``/recommend`` is answered with 200,
the worker drained the backlog within ``drain_s``, and memory did not grow unboundedly.
Throughput and latency are reported, not judged: a shared 2-core machine runs the broker,
the producer, the worker, the server and the prober at once.

Where memory goes: FastSlow's state is bounded per user (memory entries, recent items) and
by the catalogue (item counts), except its item co-occurrence and transition matrices
(`models.cooccurrence.Cooccurrence`, "can grow without limit"), which gain a cell for every
new pair of items seen together: bounded only by items squared. ``model_state`` reports
their stored cells at the start and the end of the load. Measured here (2,000 users, 4,538
items drawn with the log's popularity): 60 s at ~4,700 events/s grew RSS ~140 MB a minute,
with 3.5M co-occurrence cells at the end; the same model learning 3.6M such events in one
process went from 3.7M to 16.7M co-occurrence cells (bound 4,538^2 = 20.6M) and from 682 to
962 MB, still growing. On a real catalogue (10^5 to 10^6 items) that bound is out of reach,
so over long runs this is the growth ``memory_unbounded`` is there to catch. It does: the
default run (60 s at the ingest target: ~15,400 events/s produced, ~12,900 applied, 926k
events) ends with 8.3M co-occurrence cells and RSS 11% above the second quarter's, flagged.

Run it alone: ``python -m infra.scenario_load --seconds 600`` (prints the result as JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import queue
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from infra.faults import ScenarioResult, rss_bytes, slope

logger = logging.getLogger(__name__)

INGEST_TARGET_EVENTS_PER_S = 20_000.0
"""The ingest target (`streaming.bench.INGEST_TARGET_EVENTS_PER_S`): the default produce rate."""
MAX_MEMORY_GROWTH = 0.1
"""RSS growing by more than this fraction from the second quarter to the end counts as unbounded."""
EVENT_PREFIX = "load-"


def load(data_dir: Path | None = None, *, seconds: float = 60.0, rate: float = INGEST_TARGET_EVENTS_PER_S,
         recommend_rate: float = 20.0, users: int = 2000, items: str = "log", champion_events: int = 10_000,
         dim: int = 16, sample_interval_s: float = 1.0, drain_s: float = 120.0, seed: int = 0,
         progress=None) -> ScenarioResult:
    """Run the load for ``seconds`` (see the module docstring); ``data_dir`` None: a temporary one.

    ``progress(text)``, if given, is called with a line now and then (the bench shows it).
    """
    if data_dir is None:
        with tempfile.TemporaryDirectory(prefix="fastslow-load-") as tmp:
            return load(Path(tmp), seconds=seconds, rate=rate, recommend_rate=recommend_rate, users=users,
                        items=items, champion_events=champion_events, dim=dim, sample_interval_s=sample_interval_s,
                        drain_s=drain_s, seed=seed, progress=progress)
    from infra.broker import EmbeddedBroker
    from infra.fault_streams import make_topic
    from models.fastslow import FastSlow
    from serving.app import create_app
    from serving.runtime import Runtime
    from serving.server import BackgroundServer
    from streaming.bench_setup import synthetic_events

    say = progress or (lambda text: logger.info("%s", text))
    data_dir = Path(data_dir)
    log = synthetic_events(champion_events, seed=seed)
    ranker = _champion(log, dim, seed)
    catalogue, cum_weights = _item_draw(log, sorted(ranker.items.ids()), items)
    people = [f"lu{k}" for k in range(users)]
    with EmbeddedBroker(port=0, data_dir=data_dir / "broker", topics=[]) as broker:
        topic, dlq = make_topic(broker.bootstrap)
        runtime = Runtime(FastSlow(ranker=ranker), bootstrap=broker.bootstrap, topic=topic, dlq_topic=dlq,
                          group_id=topic + "-serve", data_dir=data_dir / "serve",
                          worker_options={"flush_interval_s": 0.5, "snapshot_interval_s": 20.0})
        with runtime, BackgroundServer(create_app(runtime)) as server:
            _wait(lambda: bool(runtime.worker.stats.assigned), 60, "the worker to join its group")
            say(f"load: {rate:.0f} events/s and {recommend_rate:.0f} /recommend per s for {seconds:.0f} s")
            state = [_model_state(runtime)]
            run = _Load(broker.bootstrap, topic, server.url, people, catalogue, cum_weights, rate, recommend_rate,
                        seconds, seed)
            samples = _sample(run, runtime, broker, seconds, sample_interval_s, say)
            produced = run.producer_result(timeout=60)
            drained_s = _drain(runtime, produced["acked"], drain_s)
            probed = run.prober_result(timeout=60)
            worker_error = runtime.worker_error
            stats = runtime.worker.stats.as_dict()
            state.append(_model_state(runtime))
        archived = _archived_ids(data_dir / "serve", topic)
    result = _result(samples, produced, probed, archived, drained_s, stats, worker_error, seconds, rate,
                     recommend_rate, users, len(catalogue))
    result.details["items_drawn"] = items
    result.details["model_state"] = {"start": state[0], "end": state[1]}
    return result


def _item_draw(log, catalogue: list[str], how: str) -> tuple[list[str], list[float] | None]:
    """The items events are drawn from, and their cumulative weights (None: uniform)."""
    if how == "uniform":
        return catalogue, None
    if how != "log":
        raise ValueError(f"items={how!r}: expected 'log' (the synthetic log's popularity) or 'uniform'")
    counts = Counter(log.column("item_id").to_pylist())
    return catalogue, np.cumsum([counts.get(i, 0) + 0.01 for i in catalogue]).tolist()


def _model_state(runtime) -> dict:
    """Sizes of what the serving model holds: users, memory entries, co-occurrence cells."""
    with runtime.lock:
        model = runtime.model
        stats = model._stats
        return {"users": len(model.users()), "memory_entries": len(model._memory),
                "cooccurrence_cells": _cells(stats.cooccurrence), "transition_cells": _cells(stats.transitions)}


def _cells(matrix) -> int:
    return sum(getattr(getattr(matrix, name, None), "nnz", 0) for name in ("_base", "_delta"))


def _champion(events, dim: int, seed: int):
    import torch

    from streaming.bench_setup import train_champion

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_champion(events, dim=dim, epochs=1, seed=seed)
    finally:
        torch.set_num_threads(threads)


class _Load:
    """The producer and prober processes (spawned), and the shared counter of acknowledgements."""

    def __init__(self, bootstrap, topic, url, users, items, cum_weights, rate, recommend_rate, seconds, seed) -> None:
        context = multiprocessing.get_context("spawn")
        self.acked = context.Value("q", 0, lock=False)
        self._produced, self._probed = context.Queue(), context.Queue()
        self.producer = context.Process(target=produce_for, name="load-producer", daemon=True,
                                        args=(bootstrap, topic, users, items, cum_weights, rate, seconds, seed,
                                              self.acked, self._produced))
        self.prober = context.Process(target=probe_for, name="load-prober", daemon=True,
                                      args=(url, users, recommend_rate, seconds, self._probed))
        self.producer.start()
        self.prober.start()

    def producer_result(self, timeout: float) -> dict:
        return _get(self._produced, self.producer, timeout, "producer")

    def prober_result(self, timeout: float) -> dict:
        return _get(self._probed, self.prober, timeout, "prober")


def _get(results, process, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = results.get(timeout=1.0)
            break
        except queue.Empty:
            if not process.is_alive() or time.monotonic() > deadline:
                process.kill()
                return {"error": f"the load {what} exited {process.exitcode} without a result"}
    process.join(10)
    return result


def _sample(run: _Load, runtime, broker, seconds: float, interval: float, say) -> list[dict]:
    """One sample per ``interval`` while the producer runs (at least ``seconds``)."""
    samples, started = [], time.monotonic()
    broker_pid = broker._process.pid if broker._process is not None else None
    while True:
        elapsed = time.monotonic() - started
        stats = runtime.worker.stats
        acked, consumed = run.acked.value, stats.records
        samples.append({"t": round(elapsed, 2), "acked": acked, "consumed": consumed,
                        "applied": stats.events_applied, "lag": max(acked - consumed, 0),
                        "rss_mb": round(rss_bytes() / 2**20, 1),
                        "broker_rss_mb": round(rss_bytes(broker_pid) / 2**20, 1) if broker_pid else None})
        if len(samples) % max(1, round(10 / interval)) == 0:
            say(f"load: {elapsed:.0f} s, {acked} acknowledged, {consumed} consumed, lag {acked - consumed}, "
                f"RSS {samples[-1]['rss_mb']} MB")
        if elapsed >= seconds and not run.producer.is_alive():
            return samples
        if elapsed >= seconds + 60:  # the producer should have stopped by now; its result says why not
            return samples
        time.sleep(max(0.0, started + len(samples) * interval - time.monotonic()))


def _drain(runtime, acked: int, drain_s: float) -> float | None:
    """Seconds until the worker consumed ``acked`` records (None: not within ``drain_s``)."""
    started = time.monotonic()
    while runtime.worker.stats.records < acked:
        if time.monotonic() - started > drain_s or runtime.worker_error is not None:
            return None
        time.sleep(0.05)
    return round(time.monotonic() - started, 2)


def _archived_ids(data_dir: Path, topic: str) -> Counter:
    from streaming.archive import archive_dir, iter_archive

    seen: Counter = Counter()
    for table in iter_archive(archive_dir(data_dir, topic)):
        seen.update(table.column("event_id").to_pylist())
    return seen


def _result(samples, produced, probed, archived: Counter, drained_s, stats, worker_error, seconds, rate,
            recommend_rate, users, items) -> ScenarioResult:
    sent = produced.get("sent", 0)
    wanted = {f"{EVENT_PREFIX}{k}" for k in range(sent)} - set(produced.get("failed_ids", []))
    applied = sum(1 for e in wanted if e in archived)
    duplicated = sum(1 for e, n in archived.items() if n > 1)
    strangers = sum(1 for e in archived if e not in wanted)
    window = produced.get("seconds") or seconds
    first, last = samples[0], samples[-1]
    apply_rate = (last["applied"] - first["applied"]) / max(last["t"] - first["t"], 1e-9)
    memory = memory_growth([s["t"] for s in samples], [s["rss_mb"] for s in samples])
    latencies = np.asarray(probed.get("latencies_ms", []), dtype=np.float64)
    details = {
        "seconds": seconds, "target_events_per_s": rate, "users": users, "items": items,
        "produce_events_per_s": round(produced.get("acked", 0) / window, 1),
        "apply_events_per_s": round(apply_rate, 1),
        "produce_failed": len(produced.get("failed_ids", [])),
        "lag": {"max": max(s["lag"] for s in samples), "at_end_of_load": last["lag"],
                "drain_seconds": drained_s, "samples": [[s["t"], s["lag"]] for s in samples]},
        "recommend": {"target_per_s": recommend_rate, "requests": int(latencies.size),
                      "failed": probed.get("failed", None), "empty_answers": probed.get("empty"), "p50_ms": _pct(latencies, 50),
                      "p99_ms": _pct(latencies, 99), "max_ms": _pct(latencies, 100),
                      "p99_ms_by_quarter": [_pct(q, 99) for q in np.array_split(latencies, 4)] if latencies.size else [],
                      "achieved_per_s": round(latencies.size / max(probed.get("seconds", seconds), 1e-9), 1),
                      "first_error": probed.get("first_error")},
        "memory": {**memory, "samples_mb": [[s["t"], s["rss_mb"]] for s in samples],
                   "broker_rss_mb_start_end": [first["broker_rss_mb"], last["broker_rss_mb"]]},
        "worker": {k: stats[k] for k in ("records", "events_applied", "dlq", "duplicates", "batches", "commits",
                                         "snapshots", "last_snapshot_seconds")},
        "archived_not_produced": strangers,
        "errors": [e for e in (produced.get("error"), probed.get("error"),
                               repr(worker_error) if worker_error else None) if e],
    }
    lost = len(wanted) - applied
    passed = (lost == 0 and duplicated == 0 and strangers == 0 and sent > 0 and drained_s is not None
              and probed.get("failed") == 0 and latencies.size > 0 and not memory["memory_unbounded"]
              and not details["errors"])
    return ScenarioResult("load", passed, len(wanted), applied, lost, duplicated, details)


def memory_growth(ts: list[float], mb: list[float], limit: float = MAX_MEMORY_GROWTH) -> dict:
    """RSS growth from the second quarter of the run (mean of its samples) to the last quarter's mean.

    >>> g = memory_growth([0, 1, 2, 3, 4, 5, 6, 7], [100, 150, 200, 200, 201, 200, 202, 202])
    >>> g["q2_mb"], g["end_mb"], g["growth_fraction"], g["memory_unbounded"]
    (200.0, 202.0, 0.01, False)
    >>> memory_growth([0, 1, 2, 3, 4, 5, 6, 7], [100, 110, 120, 130, 140, 150, 160, 170])["memory_unbounded"]
    True
    """
    if not ts:
        return {"q2_mb": None, "end_mb": None, "growth_mb": None, "growth_fraction": None,
                "slope_mb_per_min_second_half": None, "peak_mb": None, "memory_unbounded": False}
    span = ts[-1] - ts[0] or 1.0
    where = [(t - ts[0]) / span for t in ts]
    q2 = [m for w, m in zip(where, mb) if 0.25 <= w <= 0.5] or mb[:1]
    end = [m for w, m in zip(where, mb) if w >= 0.75] or mb[-1:]
    half = [(t, m) for w, t, m in zip(where, ts, mb) if w >= 0.5]
    q2_mb, end_mb = float(np.mean(q2)), float(np.mean(end))
    growth = (end_mb - q2_mb) / q2_mb if q2_mb else 0.0
    return {"q2_mb": round(q2_mb, 1), "end_mb": round(end_mb, 1), "growth_mb": round(end_mb - q2_mb, 1),
            "growth_fraction": round(growth, 4),
            "slope_mb_per_min_second_half": round(slope([t for t, _ in half], [m for _, m in half]) * 60, 2),
            "peak_mb": round(max(mb), 1), "memory_unbounded": growth > limit}


def _pct(values, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def _wait(condition, timeout: float, what: str) -> None:
    from infra.fault_streams import wait_for

    wait_for(condition, timeout, what)


# -- the load processes (spawned: module-level functions, light imports) --------------------

def produce_for(bootstrap: str, topic: str, users: list[str], items: list[str], cum_weights: list[float] | None,
                rate: float, seconds: float, seed: int, acked, results) -> None:
    """Producer process: send events at ``rate``/s for ``seconds``; put its counts on ``results``.

    Event ``k`` has id ``load-{k}``; ``acked.value`` follows the acknowledgements (updated
    every few milliseconds). Failed sends are reported by id, not retried (no fault is
    injected here: a failure is a finding).
    """
    try:
        results.put(_produce(bootstrap, topic, users, items, cum_weights, rate, seconds, seed, acked))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the scenario
        results.put({"error": f"producer: {exc!r}", "sent": 0, "acked": acked.value})


def _produce(bootstrap, topic, users, items, cum_weights, rate, seconds, seed, acked) -> dict:
    import random

    from streaming.kafka import make_producer
    from streaming.partitioning import user_key
    from streaming.producer import TokenBucket

    rng = random.Random(seed)
    producer = make_producer(bootstrap)
    keys = {u: user_key(u) for u in users}
    counts = {"acked": 0}
    failed: list[str] = []

    def ok(_metadata) -> None:
        counts["acked"] += 1

    chunk = max(1, int(rate / 200)) if rate > 0 else 500
    bucket = TokenBucket(rate, burst=chunk)
    sent, started = 0, time.monotonic()
    types = ("view", "view", "click", "purchase")
    while time.monotonic() - started < seconds:
        bucket.take(chunk)
        now_ms = int(time.time() * 1000)
        for item in rng.choices(items, cum_weights=cum_weights, k=chunk):
            user = users[rng.randrange(len(users))]
            event_id = f"{EVENT_PREFIX}{sent}"
            value = (f'{{"event_id":"{event_id}","user_id":"{user}","item_id":"{item}",'
                     f'"timestamp":{now_ms},"event_type":"{types[rng.randrange(4)]}","value":1.0}}').encode()
            future = producer.send(topic, key=keys[user], value=value)
            future.add_callback(ok)
            future.add_errback(lambda exc, e=event_id: failed.append(e))
            sent += 1
        acked.value = counts["acked"]
    seconds_sent = time.monotonic() - started
    producer.flush(timeout=60)
    producer.close(timeout=10)
    acked.value = counts["acked"]
    return {"sent": sent, "acked": counts["acked"], "failed_ids": failed, "seconds": round(seconds_sent, 3)}


def probe_for(url: str, users: list[str], rate: float, seconds: float, results) -> None:
    """Prober process: ``GET /recommend`` every ``1/rate`` s for ``seconds``; latencies on ``results``."""
    try:
        results.put(_probe(url, users, rate, seconds))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        results.put({"error": f"prober: {exc!r}"})


def _probe(url: str, users: list[str], rate: float, seconds: float) -> dict:
    import httpx

    latencies, failed, empty, first_error = [], 0, 0, None
    with httpx.Client(base_url=url, timeout=30.0) as client:
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < seconds:
            due = started + n / rate
            time.sleep(max(0.0, due - time.monotonic()))
            user = users[(n * 7919) % len(users)]
            n += 1
            sent = time.perf_counter()
            try:
                response = client.get("/recommend", params={"user_id": user, "k": 10})
                latencies.append((time.perf_counter() - sent) * 1000)
                if response.status_code != 200:
                    raise ValueError(f"{response.status_code}: {response.text[:200]}")
                empty += not response.json()["items"]  # a user with no events yet: a valid answer
            except (httpx.HTTPError, ValueError) as exc:
                failed += 1
                first_error = first_error or repr(exc)
        elapsed = time.monotonic() - started
    return {"latencies_ms": latencies, "failed": failed, "empty": empty, "first_error": first_error,
            "seconds": round(elapsed, 3)}


def main(argv: list[str] | None = None) -> None:
    """``python -m infra.scenario_load [--seconds S] [--rate R] ...``: run it, print the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load runs (default 60)")
    parser.add_argument("--rate", type=float, default=INGEST_TARGET_EVENTS_PER_S, help="events per second")
    parser.add_argument("--recommend-rate", type=float, default=20.0, help="/recommend calls per second")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", choices=("log", "uniform"), default="log",
                        help="item draw: the synthetic log's popularity (default) or uniform (worst case)")
    parser.add_argument("--drain-seconds", type=float, default=120.0,
                        help="how long the worker may take to catch up after the load (default 120)")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "httpx", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = load(args.data_dir, seconds=args.seconds, rate=args.rate, recommend_rate=args.recommend_rate,
                  users=args.users, items=args.items, drain_s=args.drain_seconds)
    print(json.dumps(result.as_dict()))


if __name__ == "__main__":
    main()
