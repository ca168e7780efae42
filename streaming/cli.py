"""Command-line entries for streaming: `fastslow produce` and `fastslow worker`. Import-light.

Both reach Kafka through ``--bootstrap-servers`` or ``FASTSLOW_KAFKA_BOOTSTRAP``; with neither
they stop and say how to get a broker (``fastslow broker``), since a broker started just for
one command would vanish with its data when the command ends.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from streaming.log_options import (AssumeUtcOption, ContextColOption, IdColOption, ItemColOption, OnError,
                                   OnErrorOption, TimeColOption, TypeColOption, UserColOption,
                                   ValueColOption, column_map)

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "champion"
"""The model `fastslow worker` runs unless ``--model`` names another: FastSlow over the MLflow
champion (`streaming.champion`)."""

BootstrapOption = Annotated[Optional[str], typer.Option(  # noqa: UP045 (typer needs Optional)
    "--bootstrap-servers", help="Kafka bootstrap servers host:port (default: the FASTSLOW_KAFKA_BOOTSTRAP setting).")]
TopicOption = Annotated[str, typer.Option(help="Topic of the interactions.")]


def resolve_bootstrap(option: str | None, configured: str | None) -> str:
    """The bootstrap servers to use, or a clear exit when none are configured.

    >>> resolve_bootstrap(None, "h:1"), resolve_bootstrap("o:2", "h:1")
    ('h:1', 'o:2')
    """
    bootstrap = option or configured
    if not bootstrap:
        typer.echo("error: no Kafka broker configured. Start one with `fastslow broker` (in another "
                   "terminal) and export FASTSLOW_KAFKA_BOOTSTRAP=127.0.0.1:9092, or pass "
                   "--bootstrap-servers HOST:PORT.", err=True)
        raise typer.Exit(2)
    return bootstrap


def produce_command(
    events: Annotated[Path, typer.Argument(help="Event log: CSV, CSV.gz, Parquet or JSON Lines.")],
    topic: TopicOption = "interactions",
    rate: Annotated[float, typer.Option(min=0.0, help="Events per second; 0 sends as fast as possible.")] = 0.0,
    bootstrap_servers: BootstrapOption = None,
    user_col: UserColOption = "user_id", item_col: ItemColOption = "item_id",
    time_col: TimeColOption = "timestamp", type_col: TypeColOption = None,
    value_col: ValueColOption = None, id_col: IdColOption = None,
    context_col: ContextColOption = None, assume_utc: AssumeUtcOption = False,
    on_error: OnErrorOption = OnError.FAIL,
) -> None:
    """Replay an event log into a Kafka topic, keyed by user id, with a progress bar.

    The last stdout line is a JSON summary: events, seconds, events_per_s, end_offsets.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from fastslow.settings import Settings
    from streaming.kafka import DEFAULT_PARTITIONS, TopicSpec, ensure_topics, make_producer
    from streaming.producer import produce_events
    from streaming.readers import iter_event_batches

    settings = Settings()
    bootstrap = resolve_bootstrap(bootstrap_servers, settings.kafka_bootstrap)
    columns = column_map(user_col, item_col, time_col, type_col, value_col, id_col, context_col, assume_utc)
    # a FastslowError (a missing or unreadable log, a bad row) ends the command in `fastslow.cli.run`
    batches = iter_event_batches(events, columns, on_error=on_error)
    ensure_topics(bootstrap, [TopicSpec(topic, DEFAULT_PARTITIONS)])
    producer = make_producer(bootstrap)
    try:
        shown = (TextColumn("producing to {task.fields[topic]}"), BarColumn(), MofNCompleteColumn(),
                 TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*shown, console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("produce", total=_row_count(events), topic=topic)
            report = produce_events(producer, batches, topic, rate,
                                    progress=lambda n: progress.advance(task, n))
    finally:
        producer.close()
    if batches.report.skipped:
        typer.echo(batches.report.summary(), err=True)
    summary = report.summary() | {"skipped": batches.report.skipped}
    typer.echo(json.dumps(summary))


def _row_count(path: Path) -> int | None:
    """Rows in a Parquet log (from its footer); None for formats that need a full read."""
    if path.suffix.lower() not in (".parquet", ".pq"):
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def worker_command(
    bootstrap_servers: BootstrapOption = None,
    topic: TopicOption = "interactions",
    dlq_topic: Annotated[str, typer.Option(help="Dead-letter topic for rejected messages.")] = "interactions.dlq",
    group: Annotated[str, typer.Option(help="Consumer group the worker joins.")] = "fastslow-workers",
    worker_id: Annotated[str, typer.Option(
        help="Stable name of this worker (its snapshot is found by it after a restart).")] = "worker-0",
    model: Annotated[str, typer.Option(
        help="Model to run: 'champion' (FastSlow over the MLflow champion slow ranker), a replay policy name "
             "(see `fastslow replay --help`, for experiments) or module:factory.")] = DEFAULT_MODEL,
    data_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Archive and snapshots go here (default: the FASTSLOW_DATA_DIR setting).")] = None,
    max_poll_records: Annotated[int, typer.Option(min=1, help="Records per poll at most.")] = 2000,
    flush_interval: Annotated[float, typer.Option(min=0.0, help="Seconds between archive writes + commits.")] = 2.0,
    snapshot_interval: Annotated[float, typer.Option(min=0.0, help="Seconds between snapshots.")] = 60.0,
    snapshot_events: Annotated[int, typer.Option(min=1, help="Records between snapshots at most.")] = 1_000_000,
    dedup_window: Annotated[int, typer.Option(min=1, help="Event ids remembered per partition.")] = 100_000,
    stats_interval: Annotated[float, typer.Option(min=0.1, help="Seconds between progress log lines.")] = 10.0,
) -> None:
    """Consume interactions and learn them: DLQ, dedup, archive, commit, snapshots; Ctrl-C stops.

    On SIGTERM or SIGINT it finishes the batch, commits, snapshots and exits 0; the last stdout
    line is the worker's counters as JSON.
    """
    from fastslow.errors import FastslowError
    from fastslow.settings import Settings
    from infra.faults import arm
    from streaming.kafka import DEFAULT_PARTITIONS, TopicSpec, ensure_topics
    from streaming.ratelimit import rate_limit_of
    from streaming.worker import Worker

    settings = Settings()
    arm(settings.fault)
    bootstrap = resolve_bootstrap(bootstrap_servers, settings.kafka_bootstrap)
    try:
        recommender, watch = worker_model(model, settings, data_dir or settings.data_dir)
    except FastslowError as exc:  # no champion yet, or an unknown --model
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        ensure_topics(bootstrap, [TopicSpec(topic, DEFAULT_PARTITIONS), TopicSpec(dlq_topic, 1)])
        worker = Worker(recommender, bootstrap, topic=topic, dlq_topic=dlq_topic, group_id=group,
                        data_dir=data_dir or settings.data_dir, worker_id=worker_id,
                        max_poll_records=max_poll_records, flush_interval_s=flush_interval,
                        snapshot_interval_s=snapshot_interval, snapshot_events=snapshot_events,
                        dedup_window=dedup_window,
                        rate_limit=rate_limit_of(settings.rate_limit_per_s, settings.rate_limit_burst))
        previous = {sig: signal.signal(sig, lambda signum, frame: worker.stop())
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with worker:
                watcher = watch(worker) if watch is not None else None  # after start: it may have restored
                try:
                    while not worker.run(timeout=stats_interval):
                        logger.info("worker %s", json.dumps(worker.stats.as_dict()))
                finally:
                    if watcher is not None:
                        watcher.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    except FastslowError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(worker.stats.as_dict()))


def worker_model(spec: str, settings, data_dir: Path):
    """The worker's model, and for ``champion`` a function starting its champion watcher (else None).

    ``champion``: FastSlow over the registry's champion, from the ``mlflow_tracking_uri``
    setting or by default the registry in ``data_dir`` (where `fastslow consolidate` puts it).
    ``watch(worker)``, called once the worker started (and maybe restored a snapshot), puts it
    on that champion (`streaming.champion.reconcile`) and returns the running
    `consolidation.reload.ChampionWatcher` that swaps in later promotions. Anything else: `make_model`.
    """
    if spec != DEFAULT_MODEL:
        return make_model(spec), None
    from consolidation.registry import ModelRegistry, default_tracking_uri
    from streaming.champion import champion_fastslow

    tracking_uri = settings.mlflow_tracking_uri or default_tracking_uri(data_dir)
    version, model = champion_fastslow(tracking_uri, settings.model_name)
    registry, ranker = ModelRegistry(tracking_uri, settings.model_name), model.slow_model

    def watch(worker):
        from consolidation.reload import ChampionWatcher, apply_to
        from streaming.champion import reconcile

        reconcile(worker, version, ranker)
        watcher = ChampionWatcher(registry, apply_to(worker.model, worker.lock), settings.champion_poll_s,
                                  current=version)
        watcher.start()
        return watcher

    return model, watch


def make_model(spec: str):
    """A fresh model from a replay policy name or a ``module:factory`` path.

    >>> type(make_model("popularity")).__name__, type(make_model("evaluation.peers:ItemKNN")).__name__
    ('Popularity', 'ItemKNN')
    """
    import importlib

    from evaluation.policies import make_policy
    from fastslow.errors import ConfigError

    if ":" not in spec:
        return make_policy(spec)
    module, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("--model", spec, f"an importable module:factory ({exc})") from None
    return factory()
