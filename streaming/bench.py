"""`fastslow bench freshness` and `fastslow bench ingest`: the streaming path, timed end to end.

Both start their own embedded broker (`infra.broker.EmbeddedBroker`, in memory, loopback) and
a real `streaming.worker.Worker`, generate a synthetic log (`evaluation.synth`) and train a
small slow ranker on its start as the champion under `models.fastslow.FastSlow`. The last
stdout line is one JSON object; it carries the machine's load averages, since timings on a
shared machine mean little without them. See `streaming.bench_freshness` and
`streaming.bench_ingest` for what exactly is timed.

Import-light: everything heavy is imported inside the commands.
"""

from __future__ import annotations

import json
import logging
import tempfile
from typing import Annotated, Optional

import typer

logger = logging.getLogger(__name__)

JsonOption = Annotated[bool, typer.Option("--json", help="Print only the JSON result.")]
FRESHNESS_TARGET_P99_MS = 100.0
INGEST_TARGET_EVENTS_PER_S = 20_000.0
INGEST_TARGET_RATIO = 0.5


def _quiet(json_only: bool) -> None:
    logging.getLogger("kafka").setLevel(logging.ERROR)  # connection chatter and slow-task warnings
    if json_only:
        logging.getLogger().setLevel(logging.WARNING)


def _say(json_only: bool, text: str) -> None:
    if not json_only:
        typer.echo(text, err=True)


def bench_freshness(
    trials: Annotated[int, typer.Option(min=1, help="Timed events (one at a time).")] = 600,
    events: Annotated[int, typer.Option(min=1000, help="Synthetic events learnt before timing.")] = 30_000,
    users: Annotated[int, typer.Option(min=1, help="Distinct users the trials cycle through.")] = 200,
    dim: Annotated[int, typer.Option(min=2, help="Embedding size of the champion.")] = 32,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of the champion.")] = 2,
    poll_ms: Annotated[float, typer.Option(min=0.0, help="Pause between recommendation calls.")] = 1.0,
    background_rate: Annotated[float, typer.Option(
        min=0.0, help="Other users' events per second produced meanwhile (0: none).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic log and the champion.")] = 0,
    json_only: JsonOption = False,
) -> None:
    """Time from producing an event until that user's recommendations change (p50/p99, ms)."""
    from streaming.bench_setup import load_average

    _quiet(json_only)
    world = _FreshnessWorld(events, users, dim, epochs, seed)
    load_before = load_average()
    _say(json_only, f"learnt {events} events; timing {trials} events over {len(world.users)} users")
    result, background_sent, applied = _time_freshness(world, trials, poll_ms / 1000, background_rate)
    numbers = result.as_dict()
    p99 = numbers["freshness_ms"]["p99"]
    typer.echo(json.dumps(numbers | {
        "target_p99_ms": FRESHNESS_TARGET_P99_MS, "meets_target": p99 is not None and p99 <= FRESHNESS_TARGET_P99_MS,
        "model": "fast-slow", "champion": world.champion_summary(), "warm_events": events,
        "background_rate": background_rate, "background_events_sent": background_sent,
        "worker_events_applied": applied, "load_avg_before": load_before, "load_avg_after": load_average()}))
    if result.timeouts:
        raise typer.Exit(1)  # an event that never showed is a failure, not a slow number


class _FreshnessWorld:
    """A synthetic log, a champion trained on its first half, and FastSlow over it having learnt it all."""

    def __init__(self, events: int, users: int, dim: int, epochs: int, seed: int) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        from models.fastslow import FastSlow
        from streaming.bench_setup import learn_table, synthetic_events, train_champion

        log = synthetic_events(events, "small", seed)
        self.champion = train_champion(log.slice(0, events // 2), dim, epochs, seed)
        self.model = FastSlow(ranker=self.champion)
        learn_table(self.model, log)
        active = log.group_by("user_id").aggregate([("item_id", "count")]).sort_by([("item_id_count", "descending")])
        self.users = active.column("user_id").to_pylist()[:users]  # the most active: long histories
        self.start_seconds = log.column("timestamp").cast(pa.int64())[-1].as_py() / 1000 + 60
        self.others = log.filter(pc.invert(pc.is_in(log.column("user_id"), pa.array(self.users))))

    def champion_summary(self) -> dict:
        return {"items": len(self.champion.items), "users": len(self.champion.users), "dim": self.champion.dim}


def _time_freshness(world: _FreshnessWorld, trials: int, poll_s: float, background_rate: float):
    """Broker, worker thread and producers up; the trials; everything down. (result, bg sent, applied)."""
    from contextlib import nullcontext

    from infra.broker import EmbeddedBroker
    from streaming.bench_freshness import Background, BatchClock, measure_freshness
    from streaming.bench_setup import WorkerThread
    from streaming.kafka import TopicSpec, ensure_topics, make_producer
    from streaming.worker import Worker

    topic = "interactions"
    with tempfile.TemporaryDirectory(prefix="fastslow-freshness-") as tmp, \
            EmbeddedBroker(port=0, data_dir=tmp, topics=[]) as broker:
        ensure_topics(broker.bootstrap, [TopicSpec(topic, 4), TopicSpec(topic + ".dlq", 1)])
        clock = BatchClock()
        running = WorkerThread(Worker(world.model, broker.bootstrap, topic=topic, data_dir=tmp,
                                      on_batch=clock)).start()
        producer = make_producer(broker.bootstrap, linger_ms=0)
        background = (Background(broker.bootstrap, topic, world.others, background_rate, world.start_seconds)
                      if background_rate > 0 else nullcontext())
        try:
            running.wait_assigned()
            with background:
                result = measure_freshness(running.worker, clock, producer, topic, world.users, trials,
                                           world.start_seconds, poll_s=poll_s)
        finally:
            producer.close()
            running.stop()
    return result, getattr(background, "sent", 0), running.worker.stats.events_applied


def bench_ingest(
    events: Annotated[int, typer.Option(min=1000, help="Events produced to a fresh topic and read back.")] = 200_000,
    compare: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045 (typer needs Optional)
        help="Other models run over the same topic: noop, a replay policy name (itemknn, ...), or "
             "fast-slow:KEY=VALUE,... (FastSlow options). Repeat the option for several.")] = None,
    profile: Annotated[bool, typer.Option(help="Also profile the FastSlow worker path (µs per event).")] = False,
    champion_events: Annotated[int, typer.Option(min=100, help="Events the champion is trained on.")] = 20_000,
    dim: Annotated[int, typer.Option(min=2, help="Embedding size of the champion.")] = 32,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of the champion.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic log and the champion.")] = 0,
    json_only: JsonOption = False,
) -> None:
    """Events/s through the full worker path with FastSlow vs a plain kafka-python consumer."""
    from infra.broker import EmbeddedBroker
    from streaming.bench_ingest import profile_worker
    from streaming.bench_setup import load_average, synthetic_events, train_champion
    from streaming.kafka import TopicSpec, ensure_topics, make_producer
    from streaming.producer import produce_events

    _quiet(json_only)
    compare = ["itemknn", "noop"] if compare is None else [c for c in compare if c]
    log = synthetic_events(events, "default", seed)
    champion = train_champion(log.slice(0, min(champion_events, events)), dim, epochs, seed)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="fastslow-ingest-") as tmp, \
            EmbeddedBroker(port=0, data_dir=tmp, topics=[]) as broker:
        topic = "interactions"
        ensure_topics(broker.bootstrap, [TopicSpec(topic, 4), TopicSpec(topic + ".dlq", 1)])
        producer = make_producer(broker.bootstrap)
        try:
            produced = produce_events(producer, log, topic)
        finally:
            producer.close()
        _say(json_only, f"produced {events} events at {produced.events_per_s:,.0f}/s")
        runs = {"fast-slow": _compare_run(broker.bootstrap, topic, events, "fast-slow", champion, json_only)}
        for spec in compare:
            runs[spec] = _compare_run(broker.bootstrap, topic, events, spec, champion, json_only)
        extra = {"profile": profile_worker(broker.bootstrap, topic, events, _model("fast-slow", champion))} \
            if profile else {}
    main = runs["fast-slow"]
    out = {"worker_events_per_s": main["worker"]["events_per_s"],
           "raw_consumer_events_per_s": main["raw"]["events_per_s"], "ratio": main["ratio"],
           "targets": {"events_per_s": INGEST_TARGET_EVENTS_PER_S, "ratio": INGEST_TARGET_RATIO},
           "meets_targets": main["ratio"] >= INGEST_TARGET_RATIO
           and main["worker"]["events_per_s"] >= INGEST_TARGET_EVENTS_PER_S,
           "events": events, "produce_events_per_s": round(produced.events_per_s, 1),
           "champion": {"items": len(champion.items), "users": len(champion.users), "dim": dim},
           "models": runs, **extra, "load_avg_before": load_before, "load_avg_after": load_average()}
    typer.echo(json.dumps(out))


def _compare_run(bootstrap: str, topic: str, events: int, spec: str, champion, json_only: bool) -> dict:
    """A raw-consumer pass, then a worker pass with the model ``spec``, back to back."""
    from streaming.bench_ingest import raw_consume, worker_ingest

    raw = raw_consume(bootstrap, topic, events)
    worker = worker_ingest(bootstrap, topic, events, _model(spec, champion))
    ratio = round(worker["events_per_s"] / raw["events_per_s"], 3)
    _say(json_only, f"{spec}: worker {worker['events_per_s']:,.0f}/s, raw consumer {raw['events_per_s']:,.0f}/s, "
                    f"ratio {ratio}")
    return {"worker": worker, "raw": raw, "ratio": ratio}


def _model(spec: str, champion):
    """A fresh model for a ``--compare`` entry (see the option's help)."""
    from evaluation.policies import make_policy
    from models.fastslow import FastSlow
    from streaming.bench_ingest import NoOp

    name, _, options = spec.partition(":")
    if name == "fast-slow":
        kwargs = {k: json.loads(v) for k, _, v in (o.partition("=") for o in options.split(",") if o)}
        return FastSlow(ranker=champion.clone(), **kwargs)
    if name == "noop":
        return NoOp()
    return make_policy(name)
