"""Command-line entry for offline evaluation (`fastslow replay`). Import-light on purpose."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from streaming.log_options import (AssumeUtcOption, ContextColOption, IdColOption, ItemColOption, OnError,
                                   OnErrorOption, TimeColOption, TypeColOption, UserColOption,
                                   ValueColOption, column_map)


def replay_command(
    events: Annotated[Path, typer.Argument(help="Event log: CSV, CSV.gz, Parquet or JSON Lines.")],
    policy: Annotated[list[str], typer.Option("--policy", "-p", help="Policy to evaluate; repeat for several.")],
    k: Annotated[int, typer.Option(min=1, help="Length of each recommendation list.")] = 10,
    warmup: Annotated[float, typer.Option(min=0.0, max=0.95, help="Learn-only prefix fraction.")] = 0.2,
    include_seen: Annotated[bool, typer.Option(help="Let items the user already had count as hits.")] = False,
    ties: Annotated[str, typer.Option(help="Events sharing a timestamp: 'group' ranks them all before learning "
                                           "any (one step); 'order' trusts the file order within a timestamp.")] = "group",
    consolidate_every: Annotated[Optional[int], typer.Option(min=1, help="Learned events between consolidations of "
                                                             "ewc and fast-slow (default: about five over the "
                                                             "scored part).")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N events of the log.")] = None,
    truth: Annotated[Optional[Path], typer.Option(help="Ground-truth sidecar's events file for adaptation "
                                                       "metrics (default: the log itself when it has one).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for every policy's randomness.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Write the JSON result here too.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw cumulative HR@k over time to this PNG.")] = None,
    features: Annotated[bool, typer.Option("--features", help="Also run each of slow, finetune, ewc, fast-slow-frozen "
                                           "as NAME+features: Feast context (own temporary repository, "
                                           "micro-batch pushes, point-in-time warm-up training).")] = False,
    feature_batch: Annotated[int, typer.Option(min=1, help="With --features: learned events per push.")] = 256,
    user_col: UserColOption = "user_id", item_col: ItemColOption = "item_id",
    time_col: TimeColOption = "timestamp", type_col: TypeColOption = None,
    value_col: ValueColOption = None, id_col: IdColOption = None,
    context_col: ContextColOption = None, assume_utc: AssumeUtcOption = False,
    on_error: OnErrorOption = OnError.FAIL,
) -> None:
    """Replay an event log through policies, test-then-learn, and report HR@k / NDCG@k."""
    from evaluation.policies import make_policy
    from evaluation.protocol import TIES
    from evaluation.replay import plot_cumulative_hr, run_replay
    from evaluation.stream import EventStream
    from evaluation.synth_truth import TruthNotFoundError, load_truth, sidecar_paths
    from streaming.readers import iter_event_batches

    if ties not in TIES:
        raise typer.BadParameter(f"{ties!r} is not one of: {', '.join(TIES)}", param_hint="--ties")
    for name in policy:  # fail on a typo before reading a large log
        make_policy(name)
    columns = column_map(user_col, item_col, time_col, type_col, value_col, id_col, context_col, assume_utc)
    batches = iter_event_batches(events, columns, on_error=on_error)
    table = batches.read_all()
    if batches.report.skipped:
        typer.echo(batches.report.summary(), err=True)
    if limit is not None:
        table = table.slice(0, limit)
    ground_truth = None
    truth_source = truth or events
    if truth is not None or sidecar_paths(events).truth.exists():
        try:
            ground_truth = load_truth(truth_source)
        except TruthNotFoundError as exc:
            raise typer.BadParameter(str(exc), param_hint="--truth") from None
    stream = EventStream.from_table(table)
    if features:
        from evaluation.features_replay import (FeatureSetup, feature_policy_factory, read_catalogue,
                                                warmup_end_s, with_feature_variants)

        with FeatureSetup(read_catalogue(events), warmup_end_s(stream, warmup), feature_batch) as setup:
            report = run_replay(stream, with_feature_variants(policy), k=k, warmup=warmup, include_seen=include_seen,
                                ties=ties, consolidate_every=consolidate_every, truth=ground_truth, seed=seed, source=str(events),
                                make=feature_policy_factory(setup))
    else:
        report = run_replay(stream, policy, k=k, warmup=warmup, include_seen=include_seen, ties=ties,
                            consolidate_every=consolidate_every, truth=ground_truth, seed=seed, source=str(events))
    if plot is not None:
        plot_cumulative_hr(report, plot)
    text = report.to_json()
    if out is not None:
        out.write_text(text + "\n")
    typer.echo(text)
