"""The consolidation job: replay + EWC into a challenger, gate it, track everything in MLflow.

`run_consolidation` is the in-process core (clone, train with EWC, score both models on
the probes, decide); `consolidate` wraps it in an MLflow run and the registry;
`bootstrap_champion` trains the very first champion from a warm-up set.

MLflow run layout (experiment ``fastslow-consolidation``, one run per job):

- tags: ``fastslow.kind`` (``consolidation`` | ``bootstrap``), ``gate.decision``
  (``promoted`` | ``rejected``), ``gate.reason``, ``sample.digest``;
- params: the `ConsolidationConfig` fields, ``champion_version``, ``sample_size``,
  ``sample_recent``, ``sample_old``, ``sample_digest``, ``since_ms``, ``until_ms``,
  ``replay_examples``, ``distill_examples``, ``gate_promote``, ``gate_reason``;
- metrics: ``train_loss`` (step = epoch), ``champion_<slice>_<metric>`` and
  ``challenger_<slice>_<metric>`` for slices ``recent``/``old`` and metrics ``ndcg_at_10``,
  ``hr_at_10``, ``events``; ``seconds_<phase>`` timings;
- artifacts: ``fisher/fisher.pt`` (the accumulated Fisher, the next run's starting point),
  ``sample/summary.json`` (digest, counts, time range), and the logged model ``ranker``
  registered as a new version with alias ``challenger``.

Crash safety: the ``champion`` alias moves only as the very last step, after the version is
registered and tagged. An exception anywhere before leaves the champion as it was and marks
the run FAILED; a killed process leaves a RUNNING run and perhaps a version without the
champion alias, neither of which the next run reads (it starts from the champion alias and
the Fisher of the champion's own run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from consolidation.evaluate import evaluate_slices
from consolidation.gate import Decision, decide
from consolidation.registry import CHALLENGER, ModelRegistry
from consolidation.sampling import ReplaySample, sample_replay, split_probes
from consolidation.ranker_fisher import ranker_fisher
from consolidation.train import (ConsolidationConfig, Distill, sample_examples, train_challenger,
                                 with_training_context)
from models.slow import SlowRanker

logger = logging.getLogger(__name__)

EpochHook = Callable[[int, float], None]


@dataclass
class Outcome:
    """What one consolidation produced, before (or without) any registry."""

    challenger: SlowRanker
    fisher: dict
    losses: list[float]
    champion_metrics: dict[str, float]
    challenger_metrics: dict[str, float]
    decision: Decision
    replay_examples: int
    distill_examples: int
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class ConsolidationResult:
    """What `consolidate` / `bootstrap_champion` did, as the CLI reports it."""

    run_id: str
    version: int
    promoted: bool
    reason: str
    champion_version: int | None
    previous_champion: int | None
    metrics: dict[str, float]
    losses: list[float]
    sample_digest: str
    seconds: dict[str, float]
    sample: dict = field(default_factory=dict)
    """Sample counts: size, recent, old, read, deleted_skipped, since_ms, until_ms."""

    def summary(self) -> dict:
        return dataclasses.asdict(self)


def run_consolidation(champion: SlowRanker, sample: ReplaySample, config: ConsolidationConfig, *,
                      previous_fisher: dict | None = None, distill: Distill | None = None,
                      on_epoch: EpochHook | None = None, features=None) -> Outcome:
    """Split probes off ``sample``, train a challenger with EWC, score both, apply the gate.

    ``features`` (a `features.context.FeatureContext`): training reads point-in-time context
    when the champion was built to read it (`consolidation.train.with_training_context`).
    """
    started = time.perf_counter()
    train, probes = split_probes(sample, config.probe_fraction)
    champion_metrics = evaluate_slices(champion, probes, config.k)
    trained = train_challenger(champion, train, config, previous_fisher, distill, on_epoch, features)
    eval_started = time.perf_counter()
    challenger_metrics = evaluate_slices(trained.ranker, probes, config.k)
    decision = decide(champion_metrics, challenger_metrics, config.tolerance, config.k)
    seconds = {**trained.seconds, "evaluate": time.perf_counter() - eval_started,
               "consolidate": time.perf_counter() - started}
    logger.info("gate: %s (%s)", "promote" if decision.promote else "keep champion", decision.reason)
    return Outcome(trained.ranker, trained.fisher, trained.losses, champion_metrics, challenger_metrics, decision,
                   trained.replay_examples, trained.distill_examples, seconds)


def _metrics(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": float(v) for k, v in metrics.items()}


def _sample_summary(sample: ReplaySample) -> dict:
    return {"digest": sample.digest, "size": len(sample), "recent": int(sample.recent.sum()),
            "old": int((~sample.recent).sum()), "since_ms": sample.since_ms, "until_ms": sample.until_ms,
            **sample.stats}


def _log_common(registry: ModelRegistry, run_id: str, sample: ReplaySample, config: ConsolidationConfig,
                params: dict) -> None:
    summary = _sample_summary(sample)
    registry.client.log_batch(run_id, params=[_param(k, v) for k, v in {
        **dataclasses.asdict(config), "sample_size": summary["size"], "sample_recent": summary["recent"],
        "sample_old": summary["old"], "sample_digest": summary["digest"], "since_ms": summary["since_ms"],
        "until_ms": summary["until_ms"], **params}.items()])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "summary.json"
        path.write_text(json.dumps(summary, indent=1))
        registry.client.log_artifact(run_id, str(path), "sample")


def _param(key: str, value):
    from mlflow.entities import Param
    return Param(key, str(value))


def _epoch_logger(registry: ModelRegistry, run_id: str, epochs: int, show_progress: bool,
                  on_epoch: EpochHook | None):
    """An on_epoch hook logging ``train_loss`` and advancing a rich progress bar; plus the bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    bar = Progress(TextColumn("consolidate"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                   TimeElapsedColumn(), disable=not show_progress)
    task = bar.add_task("epochs", total=epochs, loss="-")

    def hook(epoch: int, loss: float) -> None:
        registry.client.log_metric(run_id, "train_loss", loss, step=epoch)
        bar.update(task, advance=1, loss=f"{loss:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, loss)

    return hook, bar


def _register(registry: ModelRegistry, run_id: str, ranker: SlowRanker, fisher: dict, tags: dict) -> int:
    """Log the Fisher and the model, register a version, alias it challenger. Never touches champion."""
    registry.log_fisher(run_id, fisher)
    info = registry.log_ranker(ranker)
    version = registry.register(info, run_id, {**tags, "ranker.history": str(ranker.history)})
    registry.set_alias(CHALLENGER, version)
    return version


def consolidate(registry: ModelRegistry, sample: ReplaySample, config: ConsolidationConfig = ConsolidationConfig(),
                *, distill: Distill | None = None, on_epoch: EpochHook | None = None, show_progress: bool = True,
                new_ranker: Callable[[], SlowRanker] = SlowRanker, features=None) -> ConsolidationResult:
    """One tracked consolidation of the champion on ``sample`` (module docstring for the layout).

    Without a champion yet, trains the first one on the sample (`bootstrap_champion`) with
    ``new_ranker()``. ``distill`` adds the fast path's preferences; ``on_epoch`` runs after
    every epoch (raising there aborts the run and leaves the champion unchanged). ``features``
    gives training point-in-time context (`run_consolidation`).
    """
    champion_version = registry.champion_version()
    if champion_version is None:
        return bootstrap_champion(registry, sample, new_ranker(), config, show_progress=show_progress,
                                  on_epoch=on_epoch, features=features)
    started = time.perf_counter()
    champion = registry.load(champion_version)
    previous_fisher = registry.load_fisher(champion_version)
    load_seconds = time.perf_counter() - started
    with registry.start_run(f"consolidate-v{champion_version}", tags={"fastslow.kind": "consolidation",
                                                                      "sample.digest": sample.digest}) as run:
        run_id = run.info.run_id
        _log_common(registry, run_id, sample, config, {"champion_version": champion_version})
        hook, bar = _epoch_logger(registry, run_id, config.epochs, show_progress, on_epoch)
        with bar:
            outcome = run_consolidation(champion, sample, config, previous_fisher=previous_fisher, distill=distill,
                                        on_epoch=hook, features=features)
        metrics = {**_metrics("champion", outcome.champion_metrics),
                   **_metrics("challenger", outcome.challenger_metrics)}
        decision = outcome.decision
        _record_decision(registry, run_id, decision, metrics, {"replay_examples": outcome.replay_examples,
                                                               "distill_examples": outcome.distill_examples})
        started = time.perf_counter()
        version = _register(registry, run_id, outcome.challenger, outcome.fisher,
                            _version_tags(decision, metrics, sample, parent=champion_version))
        seconds = {**outcome.seconds, "load": load_seconds, "register": time.perf_counter() - started}
        registry.client.log_batch(run_id, metrics=_metric_list(_metrics("seconds", seconds)))
        previous = champion_version
        if decision.promote:
            registry.promote(version, decision.reason)   # the very last step
    return ConsolidationResult(run_id, version, decision.promote, decision.reason,
                               version if decision.promote else champion_version, previous, metrics,
                               outcome.losses, sample.digest, seconds, _sample_summary(sample))


def _metric_list(metrics: dict[str, float]):
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in metrics.items()]


def _record_decision(registry: ModelRegistry, run_id: str, decision: Decision, metrics: dict, params: dict) -> None:
    client = registry.client
    client.log_batch(run_id, metrics=_metric_list(metrics),
                     params=[_param(k, v) for k, v in {**params, "gate_promote": decision.promote,
                                                       "gate_reason": decision.reason[:5000]}.items()])
    client.set_tag(run_id, "gate.decision", "promoted" if decision.promote else "rejected")
    client.set_tag(run_id, "gate.reason", decision.reason)


def _version_tags(decision: Decision, metrics: dict, sample: ReplaySample, parent: int | None) -> dict:
    tags = {"gate.decision": "promoted" if decision.promote else "rejected", "gate.reason": decision.reason,
            "sample.digest": sample.digest, "until_ms": sample.until_ms, "parent_version": parent}
    tags.update({f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()})
    return {k: v for k, v in tags.items() if v is not None}


@dataclass
class FirstModel:
    """A first champion trained from scratch, and what the gate and the next run need of it."""

    losses: list[float]
    fisher: dict
    metrics: dict[str, float]
    train_examples: int
    seconds: float


def train_first(ranker: SlowRanker, sample: ReplaySample, config: ConsolidationConfig,
                on_epoch: EpochHook | None = None, features=None) -> FirstModel:
    """Fit ``ranker`` on ``sample`` (probes held out); its Fisher on that data seeds online EWC.

    With ``features`` and a ranker built to read context, examples carry point-in-time context.
    """
    started = time.perf_counter()
    train, probes = split_probes(sample, config.probe_fraction)
    examples = with_training_context(ranker, sample_examples(ranker, train), train, features)
    losses = ranker.fit(examples, on_epoch=on_epoch)
    fisher = ranker_fisher(ranker, examples, config.fisher_samples, config.seed)
    metrics = _metrics("challenger", evaluate_slices(ranker, probes, config.k))
    return FirstModel(losses, fisher, metrics, len(examples), time.perf_counter() - started)


def bootstrap_champion(registry: ModelRegistry, events: pa.Table | ReplaySample, ranker: SlowRanker | None = None,
                       config: ConsolidationConfig = ConsolidationConfig(), *, show_progress: bool = True,
                       on_epoch: EpochHook | None = None, features=None) -> ConsolidationResult:
    """Train the first champion on a warm-up set (probes held out), register and promote it.

    ``events`` is a normalized event table (time order) or an already drawn sample. The Fisher
    logged is the trained model's own on its training data (the next run's ``F_previous``).
    A ``ranker`` built with a ``context`` spec trains on point-in-time context from ``features``.
    """
    ranker = ranker if ranker is not None else SlowRanker(seed=config.seed)
    if isinstance(events, pa.Table):
        events = sample_replay([events], events.num_rows, history=ranker.history, seed=config.seed)
    with registry.start_run("bootstrap", tags={"fastslow.kind": "bootstrap", "sample.digest": events.digest}) as run:
        run_id = run.info.run_id
        _log_common(registry, run_id, events, config, {"champion_version": None})
        hook, bar = _epoch_logger(registry, run_id, ranker.epochs, show_progress, on_epoch)
        with bar:
            first = train_first(ranker, events, config, on_epoch=hook, features=features)
        decision = Decision(True, "first champion: there was none to compare with")
        _record_decision(registry, run_id, decision, first.metrics,
                         {"replay_examples": first.train_examples, "distill_examples": 0})
        version = _register(registry, run_id, ranker, first.fisher,
                            _version_tags(decision, first.metrics, events, parent=None))
        registry.promote(version, decision.reason)
    return ConsolidationResult(run_id, version, True, decision.reason, version, None, first.metrics, first.losses,
                               events.digest, {"consolidate": first.seconds}, _sample_summary(events))
