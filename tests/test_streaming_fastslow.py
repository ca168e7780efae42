"""FastSlow, the product model, through the worker on a real broker.

What users rely on: an event produced to Kafka moves that user's recommendations; a worker
killed with ``kill -9`` and restarted ends with the fast state an uninterrupted in-process
replay of the same events gives (nothing lost, nothing applied twice); users keep their fast
state when their partition moves to another worker. The slow model is a small ranker trained
on the first half of a synthetic stream, registered as the MLflow champion where the worker
command loads it.
"""

from __future__ import annotations

import json
import pickle
import signal
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest
import torch
from consolidation_fixtures import fresh_tracking_uri
from typer.testing import CliRunner

from consolidation.registry import ModelRegistry
from consolidation.reload import ChampionWatcher, apply_to
from evaluation.synth import SynthConfig, generate
from evaluation.synth_truth import SynthTruth
from models.fastslow import FastSlow
from models.slow import SlowRanker
from streaming.champion import champion_fastslow, reconcile, same_slow_model
from streaming.kafka import make_producer
from streaming.partitioning import partition_of
from streaming.producer import produce_events
from streaming.snapshots import SnapshotStore, snapshot_dir
from streaming.worker import Worker
from worker_fixtures import (committed_total, make_topics, replay, start_worker, unique, wait_for,
                             wait_in_log)

pytestmark = pytest.mark.broker


@dataclass
class World:
    events: pa.Table
    """The synthetic stream (3,000 events, 100 users, 300 items), time ordered."""
    truth: SynthTruth
    champion: SlowRanker
    """Trained on the first half of `events`."""


@pytest.fixture(scope="module")
def world() -> World:
    stream = generate(SynthConfig.preset("tiny", seed=5, shift_fraction=0.0))
    events = stream.events_table()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        champion = SlowRanker(dim=16, epochs=3, batch_size=256, seed=0)
        half = events.slice(0, events.num_rows // 2)
        champion.fit(champion.build_examples(half.column("user_id").to_pylist(), half.column("item_id").to_pylist()))
    finally:
        torch.set_num_threads(threads)
    return World(events, stream.truth(), champion)


def _send(broker: str, topic: str, table: pa.Table, rate: float = 0.0) -> None:
    producer = make_producer(broker)
    try:
        produce_events(producer, table, topic, rate)
    finally:
        producer.close()


def _worker(broker: str, topic: str, dlq: str, model, data_dir, group: str | None = None,
            worker_id: str = "w1") -> Worker:
    return Worker(model, broker, topic=topic, dlq_topic=dlq, group_id=group or unique("group"), data_dir=data_dir,
                  worker_id=worker_id, flush_interval_s=0.2)


def _clicks(user: str, items: list[str], after_ms: int, prefix: str) -> pa.Table:
    n = len(items)
    return pa.table({"event_id": [f"{prefix}{k}" for k in range(n)], "user_id": [user] * n, "item_id": items,
                     "timestamp": pa.array([after_ms + 60_000 * (k + 1) for k in range(n)]).cast(
                         pa.timestamp("ms", tz="UTC")),
                     "event_type": ["click"] * n, "value": [1.0] * n, "context": pa.nulls(n, pa.string())})


# -- comparisons ----------------------------------------------------------------------------

def per_user_state(model: FastSlow, users=None) -> dict[str, dict]:
    """Every user's fast state, as the model hands it to another worker (`export_users`)."""
    return pickle.loads(model.export_users(sorted(model.users() if users is None else users)))


def assert_same_per_user_state(got: dict[str, dict], want: dict[str, dict], memory_since: float) -> None:
    """Fast vectors close (float sums in other batch shapes), everything else exactly equal.

    Memory entries are compared from ``memory_since`` on (the replay's clock minus the memory's
    max age): older ones are past their age and evicted lazily, in batches, at moments that
    depend on how events were batched, so either side may still hold some of them.
    """
    assert sorted(got) == sorted(want)
    assert any(_memory(w, memory_since) for w in want.values()), "no memory entries left to compare"
    for user, w in want.items():
        g = got[user]
        assert (g["recent"], g["events"], g["updated"]) == (w["recent"], w["events"], w["updated"]), user
        assert np.allclose(g["vec"], w["vec"], rtol=1e-4, atol=1e-6), (user, g["vec"], w["vec"])
        assert _memory(g, memory_since) == _memory(w, memory_since), user


def _memory(state: dict, since: float) -> list[tuple]:
    mem = state["memory"]
    entries = zip(mem["items"], np.asarray(mem["times"]).tolist(), np.asarray(mem["types"]).tolist())
    return sorted(e for e in entries if e[1] >= since)


def live_memory_since(model: FastSlow) -> float:
    return model.clock - model.memory_max_age


def item_counts(model: FastSlow) -> dict[str, float]:
    stats = model._stats
    return {i: c for i, c in zip(stats.items.ids(), stats.counts[: stats.n_items].tolist()) if c}


def cooccurrence(model: FastSlow, items: list[str]) -> np.ndarray:
    """The co-occurrence matrix over ``items`` (in that order), dense."""
    stats = model._stats
    rows = np.array([stats.items.get(i) for i in items])
    return np.stack([stats.cooccurrence.scores([r], [1.0], n=stats.n_items)[rows] for r in rows])


def _register_champion(ranker: SlowRanker, tracking_uri: str) -> ModelRegistry:
    registry = ModelRegistry(tracking_uri)  # the default model name, where the worker command looks
    with registry.start_run("champion for the worker test") as run:
        version = registry.register(registry.log_ranker(ranker), run.info.run_id)
    registry.promote(version)
    return registry


# -- tests ----------------------------------------------------------------------------------

def test_the_worker_command_without_a_champion_says_how_to_make_one(tmp_path):
    from fastslow.cli import app

    result = CliRunner().invoke(app, ["worker", "--bootstrap-servers", "127.0.0.1:9", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no champion slow model" in result.output and "fastslow consolidate --events LOG" in result.output
    assert not (tmp_path / "mlflow.db").exists()  # looking left nothing behind


@pytest.mark.slow
def test_events_through_the_worker_move_that_users_fastslow_recommendations(broker, tmp_path, world):
    topic, dlq = make_topics(broker)
    events = world.events
    _send(broker, topic, events)
    seen: dict[str, set[str]] = {}
    for user, item in zip(events.column("user_id").to_pylist(), events.column("item_id").to_pylist()):
        seen.setdefault(user, set()).add(item)
    categories = set(world.truth.item_category.values())
    untried = {u: categories - {world.truth.item_category[i] for i in items} for u, items in seen.items()}
    alice = max(sorted(u for u in seen if untried[u]), key=lambda u: len(seen[u]))  # the most active such user
    new = max(sorted(untried[alice]), key=lambda c: len(world.truth.category_items(c)))  # a taste alice never showed
    with _worker(broker, topic, dlq, FastSlow(ranker=world.champion.clone()), tmp_path) as worker:
        assert worker.run(until=lambda: worker.stats.events_applied == events.num_rows, timeout=60)
        known = set(worker.model._stats.items.ids())
        chosen = sorted(world.truth.category_items(new) & known)[:5]
        rest = set(world.truth.category_items(new) & known) - set(chosen)
        with worker.lock:
            before = worker.model.recommend(alice, 10, exclude=seen[alice])
        last_ms = events.column("timestamp").cast(pa.int64())[-1].as_py()
        _send(broker, topic, _clicks(alice, chosen, last_ms, "late"))
        assert worker.run(until=lambda: worker.stats.events_applied == events.num_rows + 5, timeout=30)
        with worker.lock:
            after = worker.model.recommend(alice, 10, exclude=seen[alice] | set(chosen))
            history = worker.model.history(alice)
    assert history[-5:] == chosen
    assert len(rest & set(after)) >= 3 > len(rest & set(before)), (before, after)


@pytest.mark.slow
def test_fastslow_worker_killed_mid_stream_restarts_into_the_state_of_an_uninterrupted_replay(
        broker, tmp_path, world):
    topic, _ = make_topics(broker)
    group, log = unique("group"), tmp_path / "worker.log"
    registry = _register_champion(world.champion, fresh_tracking_uri(tmp_path))  # <data dir>/mlflow.db
    events = world.events
    first = start_worker(broker, topic, group, tmp_path, log, model=None, snapshot_events=500)  # the champion
    try:
        wait_in_log(log, "assigned partitions", first, 90)
        assert "fast path over champion fastslow-ranker v1" in log.read_text()
        producer = make_producer(broker)
        sending = threading.Thread(target=produce_events, args=(producer, events, topic, 1000))
        sending.start()
        wait_for(lambda: committed_total(broker, group, topic) >= 1000, 60, "the worker to get a third in")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = committed_total(broker, group, topic)
        second = start_worker(broker, topic, group, tmp_path, log, model=None, snapshot_events=500)
        sending.join(30)
        producer.close()
        wait_for(lambda: committed_total(broker, group, topic) == events.num_rows, 90, "every event committed")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        for process in (first, locals().get("second")):
            if process is not None and process.poll() is None:
                process.kill()
    assert first.returncode == -signal.SIGKILL and killed_at < events.num_rows
    assert "restored worker snapshot" in log.read_text()

    got = SnapshotStore(snapshot_dir(tmp_path, topic, group)).read_worker("w1").model
    want = replay(FastSlow(ranker=registry.load_champion()[1]), events)
    assert got.events == want.events == events.num_rows
    assert_same_per_user_state(per_user_state(got), per_user_state(want), live_memory_since(want))
    assert item_counts(got) == item_counts(want)  # every event counted once
    items = sorted(item_counts(want))
    assert np.allclose(cooccurrence(got, items), cooccurrence(want, items))


def test_a_worker_adopting_users_before_it_learnt_anything_scores_them_with_finite_numbers(world):
    events = world.events.slice(0, 1500)
    owner = replay(FastSlow(ranker=world.champion.clone()), events)
    adopter = FastSlow(ranker=world.champion.clone())  # a worker that just joined: no events of its own yet
    adopter.import_users(owner.export_users(owner.users()))
    user = events.column("user_id")[0].as_py()
    explained = adopter.explain(user, 10, exclude=adopter.history(user))
    assert explained and all(np.isfinite([r.score, r.fast, r.slow, r.gate]).all() for r in explained)


def _promote(registry: ModelRegistry, ranker: SlowRanker) -> int:
    with registry.start_run("promotion") as run:
        version = registry.register(registry.log_ranker(ranker), run.info.run_id)
    registry.promote(version)
    return version


@pytest.mark.slow
def test_a_champion_worker_serves_the_champion_after_a_restart_and_after_each_promotion(broker, tmp_path, world):
    registry = _register_champion(world.champion, fresh_tracking_uri(tmp_path))
    topic, dlq = make_topics(broker)
    group, events = unique("group"), world.events
    _send(broker, topic, events.slice(0, 500))
    _, model = champion_fastslow(registry.tracking_uri, registry.model_name)
    with _worker(broker, topic, dlq, model, tmp_path, group) as worker:  # snapshots v1's model on close
        assert worker.run(until=lambda: worker.stats.events_applied == 500, timeout=60)
    retrained = SlowRanker(dim=16, epochs=1, batch_size=256, seed=1)
    retrained.fit(retrained.build_examples(events.column("user_id").to_pylist()[:1500],
                                           events.column("item_id").to_pylist()[:1500]))
    v2 = _promote(registry, retrained)
    version, model = champion_fastslow(registry.tracking_uri, registry.model_name)
    assert version == v2
    with _worker(broker, topic, dlq, model, tmp_path, group) as worker:
        assert same_slow_model(worker.model.slow_model, world.champion)  # the snapshot's v1, restored
        assert reconcile(worker, version, model.slow_model)
        assert same_slow_model(worker.model.slow_model, retrained)
        assert len(worker.model.users()) > 0  # the users' fast state stayed (rebased)
        assert not reconcile(worker, version, model.slow_model)
        watcher = ChampionWatcher(registry, apply_to(worker.model, worker.lock), 0.1, current=version)
        watcher.start()
        try:
            _promote(registry, world.champion)
            wait_for(lambda: watcher.applied == 1, 30, "the watcher to swap in the new champion")
            assert same_slow_model(worker.model.slow_model, world.champion) and watcher.version == v2 + 1
            _send(broker, topic, events.slice(500, 100))
            assert worker.run(until=lambda: worker.stats.events_applied == 100, timeout=30)
            user = events.column("user_id")[550].as_py()
            with worker.lock:
                assert len(worker.model.recommend(user, 10, exclude=worker.model.history(user))) == 10
        finally:
            watcher.stop()


def _run_in_thread(worker: Worker) -> threading.Thread:
    def run() -> None:
        with worker:
            worker.run()

    thread = threading.Thread(target=run, name=worker.worker_id)
    thread.start()
    return thread


@pytest.mark.slow
def test_fastslow_users_move_with_their_partitions_between_two_workers(broker, tmp_path, world):
    topic, dlq = make_topics(broker)
    group, events = unique("group"), world.events
    parts = [events.slice(0, 1500), events.slice(1500, 800), events.slice(2300)]
    workers = {name: _worker(broker, topic, dlq, FastSlow(ranker=world.champion.clone()), tmp_path, group, name)
               for name in ("a", "b")}
    a, b = workers["a"], workers["b"]
    threads = {"a": _run_in_thread(a)}
    try:
        _send(broker, topic, parts[0])
        wait_for(lambda: a.stats.events_applied == parts[0].num_rows, 60, "a to apply the first part")
        threads["b"] = _run_in_thread(b)
        wait_for(lambda: a.stats.assigned and b.stats.assigned, 30, "a rebalance giving both workers partitions")
        assert sorted(a.stats.assigned + b.stats.assigned) == [0, 1, 2, 3]
        first = replay(FastSlow(ranker=world.champion.clone()), parts[0])
        seen = per_user_state(first)
        with b.lock:  # b adopted its partitions' users from a's snapshots, fast vectors and all
            assert_same_per_user_state(per_user_state(b.model),
                                       {u: s for u, s in seen.items() if partition_of(u, 4) in b.stats.assigned},
                                       live_memory_since(first))
        with a.lock:  # and a forgot them
            assert set(a.model.users()) == {u for u in seen if partition_of(u, 4) in a.stats.assigned}

        _send(broker, topic, parts[1])
        wait_for(lambda: committed_total(broker, group, topic) == 2300, 30, "both workers to commit the second part")
        a.stop()
        threads["a"].join(30)  # a leaves the group after a final snapshot
        wait_for(lambda: b.stats.assigned == [0, 1, 2, 3], 30, "b to take over every partition")
        _send(broker, topic, parts[2])
        wait_for(lambda: b.caught_up() and committed_total(broker, group, topic) == events.num_rows, 30,
                 "b to apply the rest")
    finally:
        for worker in workers.values():
            worker.stop()
        for thread in threads.values():
            thread.join(30)
    want = replay(FastSlow(ranker=world.champion.clone()), events)
    assert_same_per_user_state(per_user_state(b.model), per_user_state(want),  # every user, wherever learnt
                               live_memory_since(want))


# -- the benchmarks (small sizes: what is checked is that they measure what they say) --------

def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_freshness_times_every_event_until_the_list_it_changes_is_served():
    from fastslow.cli import app

    result = CliRunner().invoke(app, ["bench", "freshness", "--trials", "30", "--events", "3000", "--users", "20",
                                      "--dim", "8", "--epochs", "1", "--background-rate", "300", "--json"])
    assert result.exit_code == 0, result.output
    out = _last_json(result.output)
    assert out["freshness_ms"]["n"] == 30 and out["timeouts"] == 0
    assert out["background_events_sent"] > 0 and out["worker_events_applied"] > 30  # others' events meanwhile
    assert 0 < out["freshness_ms"]["p50"] <= out["freshness_ms"]["p99"] <= out["max_ms"] < 5000
    assert out["produce_to_consumed_ms"]["n"] == 30 and out["produce_to_consumed_ms"]["p50"] > 0
    assert out["recommend_call_ms"]["n"] >= 2 * 30  # one list before each event, at least one after


@pytest.mark.slow
def test_bench_ingest_reads_every_event_through_the_worker_and_a_raw_consumer():
    from fastslow.cli import app

    result = CliRunner().invoke(app, ["bench", "ingest", "--events", "4000", "--champion-events", "1000",
                                      "--dim", "8", "--epochs", "1", "--compare", "noop", "--json"])
    assert result.exit_code == 0, result.output
    out = _last_json(result.output)
    for name in ("fast-slow", "noop"):
        run = out["models"][name]
        assert run["worker"]["events_applied"] == 4000 and run["worker"]["dlq"] == 0
        assert run["ratio"] == round(run["worker"]["events_per_s"] / run["raw"]["events_per_s"], 3)
    assert out["worker_events_per_s"] == out["models"]["fast-slow"]["worker"]["events_per_s"] > 0
    assert out["ratio"] == out["models"]["fast-slow"]["ratio"]
