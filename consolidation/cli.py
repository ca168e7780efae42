"""Commands `fastslow consolidate`, `fastslow promote` and `fastslow models`. Import-light on purpose."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from streaming.log_options import (AssumeUtcOption, ContextColOption, IdColOption, ItemColOption, OnError,
                                   OnErrorOption, TimeColOption, TypeColOption, UserColOption,
                                   ValueColOption, column_map)

DEFAULT_TOPIC = "interactions"


def _registry(settings):
    from consolidation.registry import ModelRegistry, default_tracking_uri
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the bars repeat on every file
    return ModelRegistry(settings.mlflow_tracking_uri or default_tracking_uri(settings.data_dir), settings.model_name)


def _since_ms(since: str | None, registry) -> int | None:
    """--since as unix ms, else the time of the last event the champion was consolidated on."""
    if since is not None:
        moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise typer.BadParameter("give a time zone, e.g. 2024-05-01T00:00:00Z", param_hint="--since")
        return int(moment.timestamp() * 1000)
    version = registry.champion_version()
    if version is None:
        return None
    until = registry.version_info(version).tags.get("until_ms")
    return int(until) if until is not None else None


def _training_context(settings, seed: int):
    """(FeatureContext or None, new_ranker) for the applied feature repo under the data dir.

    With a repository: training reads point-in-time context through it when the champion was
    built with context (in the champion's own encoding), and a first champion is built with
    the default context spec. Without one: id-only training, as before.
    """
    from models.slow import SlowRanker

    repo = settings.data_dir / "feast"
    if not (repo / "feature_store.yaml").is_file():
        return None, lambda: SlowRanker(seed=seed)
    from features.context import FeatureContext
    from features.store import FeatureStoreClient

    features = FeatureContext(FeatureStoreClient(repo))
    return features, lambda: SlowRanker(seed=seed, context=features.spec.as_dict())


def consolidate_command(
    events: Annotated[Optional[Path], typer.Option(help="Consolidate from this event log (time order) instead of "
                                                        "the event archive under the data dir.")] = None,
    topic: Annotated[str, typer.Option(help="Topic whose archive to read.")] = DEFAULT_TOPIC,
    sample_size: Annotated[Optional[int], typer.Option(min=1, help="Replay sample size [settings].")] = None,
    recent_fraction: Annotated[Optional[float], typer.Option(min=0.0, max=1.0,
                                                             help="Recent share of the sample [settings].")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Training epochs [settings].")] = None,
    ewc_lambda: Annotated[Optional[float], typer.Option(min=0.0, help="EWC strength [settings].")] = None,
    tolerance: Annotated[Optional[float], typer.Option(min=0.0, max=1.0,
                                                       help="Gate: allowed relative old-slice drop [settings].")] = None,
    since: Annotated[Optional[str], typer.Option(help="Events after this ISO time are 'recent' (default: after the "
                                                      "champion's last consolidated event).")] = None,
    deleted_users: Annotated[Optional[Path], typer.Option(help="File of deleted user ids, one per line "
                                                               "(default: <data dir>/deleted_users.txt).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of sampling and training.")] = 0,
    user_col: UserColOption = "user_id", item_col: ItemColOption = "item_id",
    time_col: TimeColOption = "timestamp", type_col: TypeColOption = None,
    value_col: ValueColOption = None, id_col: IdColOption = None,
    context_col: ContextColOption = None, assume_utc: AssumeUtcOption = False,
    on_error: OnErrorOption = OnError.FAIL,
) -> None:
    """Consolidate replay into the slow ranker with EWC, gate it, register it in MLflow.

    The last stdout line is a JSON summary (version, promoted, reason, metrics, seconds).
    """
    from rich.console import Console

    from consolidation.job import consolidate
    from consolidation.sampling import read_deleted_users, sample_replay
    from consolidation.train import ConsolidationConfig
    from fastslow.settings import Settings
    from streaming.archive import archive_dir, iter_archive
    from streaming.readers import iter_event_batches

    settings = Settings()
    registry = _registry(settings)
    tables: Iterable[Any]
    if events is not None:
        tables = iter_event_batches(events, column_map(user_col, item_col, time_col, type_col, value_col, id_col,
                                                       context_col, assume_utc), on_error=on_error)
        source = str(events)
    else:
        source = str(archive_dir(settings.data_dir, topic))
        tables = iter_archive(source)
    champion = registry.champion_version()
    history = int(registry.version_info(champion).tags.get("ranker.history", 50)) if champion else 50
    sample = sample_replay(tables, sample_size or settings.replay_sample_size,
                           recent_fraction=settings.replay_recent_fraction if recent_fraction is None else recent_fraction,
                           since_ms=_since_ms(since, registry), history=history, seed=seed,
                           deleted=read_deleted_users(deleted_users or settings.data_dir / "deleted_users.txt"))
    if not len(sample):
        typer.echo(f"error: no events to consolidate in {source} (run the worker, or pass --events LOG)", err=True)
        raise typer.Exit(2)
    config = ConsolidationConfig(epochs=epochs or settings.consolidation_epochs,
                                 ewc_lambda=settings.ewc_lambda if ewc_lambda is None else ewc_lambda,
                                 ewc_gamma=settings.ewc_gamma,
                                 tolerance=settings.gate_tolerance if tolerance is None else tolerance, seed=seed)
    features, new_ranker = _training_context(settings, seed)
    result = consolidate(registry, sample, config, show_progress=True, features=features, new_ranker=new_ranker)
    console = Console(stderr=True)
    verdict = "[green]promoted[/green]" if result.promoted else "[yellow]kept the champion[/yellow]"
    console.print(f"v{result.version} {verdict}: {result.reason}  (run {result.run_id}, "
                  f"{len(sample)} events sampled from {source})")
    typer.echo(json.dumps(result.summary()))


def promote_command(
    version: Annotated[int, typer.Argument(min=1, help="Model version to make the champion (also to roll back).")],
    reason: Annotated[str, typer.Option(help="Why, recorded on the version.")] = "manual promotion",
) -> None:
    """Move the `champion` alias to VERSION; serving and workers pick it up on their next poll."""
    from consolidation.registry import RegistryError
    from fastslow.settings import Settings

    registry = _registry(Settings())
    try:
        previous = registry.promote(version, reason)
    except RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"champion: v{previous} -> v{version}" if previous else f"champion: v{version}")


def _created(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def models_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the versions as JSON instead of a table.")] = False,
) -> None:
    """List the model's versions: aliases, creation time, gate metrics and decision."""
    from rich.console import Console
    from rich.table import Table

    from fastslow.settings import Settings

    registry = _registry(Settings())
    versions = registry.versions()
    if as_json:
        typer.echo(json.dumps([{"version": v.version, "aliases": list(v.aliases), "created_ms": v.created_ms,
                                "run_id": v.run_id, "metrics": v.metrics, "decision": v.tags.get("gate.decision"),
                                "reason": v.tags.get("gate.reason")} for v in versions]))
        return
    table = Table(title=f"{registry.model_name} @ {registry.tracking_uri}")
    for column in ("version", "aliases", "created (UTC)", "recent NDCG@10", "old NDCG@10", "decision", "reason"):
        table.add_column(column, overflow="fold")
    for v in versions:
        m = v.metrics
        pair = lambda s: (f"{m.get(f'champion_{s}_ndcg_at_10', float('nan')):.4f} -> "  # noqa: E731
                          f"{m.get(f'challenger_{s}_ndcg_at_10', float('nan')):.4f}")
        table.add_row(str(v.version), ", ".join(v.aliases), _created(v.created_ms), pair("recent"), pair("old"),
                      v.tags.get("gate.decision", ""), v.tags.get("gate.reason", ""))
    Console().print(table if versions else f"no versions of {registry.model_name} yet (run `fastslow consolidate`)")
