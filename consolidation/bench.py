"""`fastslow bench forgetting`: the continual-learning tables, and consolidation time at 1M events.

Import-light on purpose (torch, mlflow and the models load inside the command).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from streaming.log_options import (AssumeUtcOption, ContextColOption, IdColOption, ItemColOption, OnError,
                                   OnErrorOption, TimeColOption, TypeColOption, UserColOption,
                                   ValueColOption, column_map)

logger = logging.getLogger(__name__)

#: Events in the replay sample whose consolidation time the bench measures.
MILLION = 1_000_000


def consolidation_seconds(table, size: int = MILLION, config=None, seed: int = 0) -> dict:
    """Time one consolidation (`consolidation.job.run_consolidation`) on a ``size``-event replay sample.

    The champion is a slow ranker trained for one epoch on the first tenth of ``table``; the
    sample is drawn from all of it with the recent/old boundary at its middle. Returns the
    total and per-phase seconds, the sample size and the torch threads used. A ``table``
    smaller than ``size`` gives a smaller sample (reported as ``sample_events``).
    """
    import pyarrow as pa
    import torch

    from consolidation.job import run_consolidation
    from consolidation.sampling import sample_replay
    from consolidation.train import ConsolidationConfig
    from models.slow import SlowRanker

    config = config or ConsolidationConfig(seed=seed)
    first = table.slice(0, max(1, table.num_rows // 10))
    champion = SlowRanker(seed=seed)
    champion.fit(champion.build_examples(first.column("user_id").to_pylist(), first.column("item_id").to_pylist()),
                 epochs=1)
    middle = int(table.column("timestamp").cast("int64")[table.num_rows // 2].as_py())
    started = time.perf_counter()
    chunks = (pa.Table.from_batches([batch]) for batch in table.to_batches(max_chunksize=100_000))
    sample = sample_replay(chunks, size, since_ms=middle, history=champion.history, seed=seed)
    sampled = time.perf_counter() - started
    outcome = run_consolidation(champion, sample, config)
    total = time.perf_counter() - started
    return {"seconds": round(total, 1), "sample_events": len(sample), "threads": torch.get_num_threads(),
            "phases": {"sample": round(sampled, 1), **{k: round(v, 1) for k, v in outcome.seconds.items()}},
            "epochs": config.epochs, "promoted": outcome.decision.promote}


def _million_events(table, seed: int):
    """``table`` if it holds a million events, else a generated synthetic stream that does."""
    if table.num_rows >= MILLION:
        return table, "the log"
    from evaluation.synth import SynthConfig, generate
    stream = generate(SynthConfig.preset("default", n_events=int(MILLION * 1.05), seed=seed))
    return stream.events_table(), "a generated synthetic stream (the log has fewer events)"


def plot_forgetting(results: dict, path: Path) -> None:
    """Heatmaps of every method's R[j, i] and bars of ACC and BWT, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.6 * (len(names) + 1), 3.6))
    top = max(max(max(row) for row in r.matrix) for r in results.values()) or 1.0
    for ax, name in zip(axes, names):
        matrix = np.asarray(results[name].matrix)
        ax.imshow(matrix, vmin=0.0, vmax=top, cmap="viridis")
        for (j, i), value in np.ndenumerate(matrix):
            ax.text(i, j, f"{value:.3f}", ha="center", va="center", fontsize=7, color="white")
        ax.set_title(name)
        ax.set_xlabel("scored on period i")
        ax.set_ylabel("after learning period j")
    summary = [results[n].summary() for n in names]
    x = np.arange(len(names))
    bars = [("ACC", "acc"), ("BWT", "bwt")] + ([("recurrence", "recurrence")] if "recurrence" in summary[0] else [])
    width = 0.8 / len(bars)
    for n, (label, key) in enumerate(bars):
        axes[-1].bar(x + (n - (len(bars) - 1) / 2) * width, [s[key] for s in summary], width, label=label)
    axes[-1].axhline(0.0, color="black", linewidth=0.5)
    axes[-1].set_xticks(x, names, rotation=30)
    axes[-1].set_title("NDCG@10: " + ", ".join(label for label, _ in bars))
    axes[-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    summary = Table(title="forgetting (NDCG@10)")
    for column in ("method", "ACC", "BWT", "recurrence", "seconds", "promoted"):
        summary.add_column(column)
    for name, r in results.items():
        s = r.summary()
        promoted = sum(c["promoted"] for c in s["consolidations"])
        summary.add_row(name, f"{s['acc']:.4f}", f"{s['bwt']:+.4f}",
                        f"{s['recurrence']:.4f}" if "recurrence" in s else "-", f"{s['seconds']:.0f}",
                        f"{promoted}/{len(s['consolidations'])}" if s["consolidations"] else "-")
    console.print(summary)
    for name, r in results.items():
        table = Table(title=f"{name}: R[after period j, scored on period i]")
        table.add_column("j \\ i")
        for i in range(len(r.matrix)):
            table.add_column(str(i))
        for j, row in enumerate(r.matrix):
            table.add_row(str(j), *(f"{x:.4f}" for x in row))
        console.print(table)


def season_cuts(events: Path, table) -> tuple[str, list[int] | None]:
    """A seasonal synthetic log's season letters and the rows where periods 1.. start ("", None otherwise).

    Read from the ground-truth sidecar `fastslow synth` writes next to the log (none: no seasons).
    """
    import numpy as np

    from evaluation.synth_truth import TruthNotFoundError, load_truth

    try:
        seasons = load_truth(events).seasons
    except TruthNotFoundError:
        return "", None
    if not seasons:
        return "", None
    times = table.column("timestamp").cast("int64").to_numpy()
    starts = np.array([s.start for s in seasons[1:]]) * 1000
    return "".join(s.season for s in seasons), np.searchsorted(times, starts, side="left").tolist()


def bench_forgetting(
    events: Annotated[Path, typer.Argument(help="Event log: CSV, CSV.gz, Parquet or JSON Lines.")],
    tasks: Annotated[Optional[int], typer.Option(min=2, help="Consecutive periods to learn in order (default 5; "
                                                 "a seasonal synthetic log: its seasons).")] = None,
    method: Annotated[Optional[list[str]], typer.Option("--method", "-m", help="finetune, ewc, replay, fast-slow "
                                                                               "(repeat; default all).")] = None,
    holdout: Annotated[float, typer.Option(min=0.01, max=0.5, help="Held-out tail of each period.")] = 0.1,
    probes: Annotated[int, typer.Option(min=1, help="Held-out events scored per period at most.")] = 1000,
    sample_size: Annotated[Optional[int], typer.Option(min=1, help="Replay sample per consolidation "
                                                                   "(default: twice a period).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per consolidation.")] = 3,
    ewc_lambda: Annotated[Optional[float], typer.Option(min=0.0, help="EWC strength [settings].")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N events of the log.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every method.")] = 0,
    recurrence_events: Annotated[int, typer.Option(min=1, help="Events scored test-then-learn when a season "
                                                   "returns (seasonal synthetic logs).")] = 1000,
    plot: Annotated[Optional[Path], typer.Option(help="Draw the matrices and ACC/BWT bars to this PNG.")] = None,
    consolidation_1m: Annotated[bool, typer.Option("--consolidation-1m", help="Also time one consolidation on a "
                                                   "1M-event replay sample (from the log, or a synthetic stream).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON line (no tables on stderr).")] = False,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
    user_col: UserColOption = "user_id", item_col: ItemColOption = "item_id",
    time_col: TimeColOption = "timestamp", type_col: TypeColOption = None,
    value_col: ValueColOption = None, id_col: IdColOption = None,
    context_col: ContextColOption = None, assume_utc: AssumeUtcOption = False,
    on_error: OnErrorOption = OnError.FAIL,
) -> None:
    """Continual-learning tables: ACC, BWT and R[j, i] (NDCG@10) per method; JSON on the last line."""
    import torch

    from consolidation.forgetting import METHODS, forgetting
    from consolidation.train import ConsolidationConfig
    from fastslow.errors import ConfigError
    from fastslow.settings import Settings
    from streaming.readers import iter_event_batches

    torch.set_num_threads(threads)
    settings = Settings()
    columns = column_map(user_col, item_col, time_col, type_col, value_col, id_col, context_col, assume_utc)
    table = iter_event_batches(events, columns, on_error=on_error).read_all()
    if limit is not None:
        table = table.slice(0, limit)
    seasons, cuts = season_cuts(events, table)
    if seasons and tasks not in (None, len(seasons)):
        raise typer.BadParameter(f"the log has {len(seasons)} seasons ({seasons}); --tasks must match or be left out")
    tasks = len(seasons) if seasons else (tasks or 5)
    config = ConsolidationConfig(epochs=epochs, ewc_lambda=settings.ewc_lambda if ewc_lambda is None else ewc_lambda,
                                 ewc_gamma=settings.ewc_gamma, tolerance=settings.gate_tolerance, seed=seed)
    progress = None if as_json else (lambda name, j: typer.echo(f"{name}: period {j} learned", err=True))
    try:
        results = forgetting(table, method or METHODS, tasks, holdout, probes, config, sample_size, seed=seed,
                             progress=progress, cuts=cuts, seasons=seasons, recurrence_events=recurrence_events)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    document = {"methods": {name: r.summary() for name, r in results.items()},
                "dataset": {"source": str(events), "events": table.num_rows, "tasks": tasks, "seasons": seasons or None,
                            "recurrence_events": recurrence_events if seasons else None, "holdout": holdout,
                            "probes_per_period": probes, "epochs": epochs, "ewc_lambda": config.ewc_lambda}}
    if consolidation_1m:
        big, source = _million_events(table, seed)
        timing = consolidation_seconds(big, MILLION, ConsolidationConfig(ewc_lambda=config.ewc_lambda, seed=seed))
        document["consolidation_1m_s"] = timing["seconds"]
        document["consolidation_1m"] = {**timing, "source": source}
    if plot is not None:
        plot_forgetting(results, plot)
    if not as_json:
        _print_tables(results)
    typer.echo(json.dumps(document))
