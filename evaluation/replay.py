"""`fastslow replay`: run several policies over one event log with the prequential protocol."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from evaluation.adaptation import AdaptationTracker
from evaluation.policies import PEERS, make_policy
from evaluation.protocol import PolicyResult, first_learned, prequential, warmup_size
from evaluation.stream import EventStream
from models.base import Recommender

logger = logging.getLogger(__name__)


@dataclass
class ReplayReport:
    """Everything one replay produced: the JSON document and the per-event results."""

    document: dict
    results: list[PolicyResult]
    stream: EventStream

    def to_json(self) -> str:
        return json.dumps(self.document, separators=(", ", ": "))


def _progress_bar(disable: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]} ev/s"), TimeRemainingColumn(),
                    disable=disable, transient=False)


#: Consolidations a consolidating policy (`ewc`, `fast-slow`) runs over the scored part by default.
CONSOLIDATIONS = 5


def consolidation_every(learned: int, count: int = CONSOLIDATIONS) -> int:
    """Events between consolidations so that `count` of them fall inside the `learned` events
    after the warm-up (none at the very end, where nothing would be scored after it).

    >>> consolidation_every(80_000), consolidation_every(6), consolidation_every(0)
    (13334, 2, 1)
    """
    return learned // (count + 1) + 1


def best_peer(summaries: dict[str, dict], k: int) -> dict | None:
    """The peer (`evaluation.policies.PEERS`) with the highest NDCG@k among `summaries`, or None.

    >>> best_peer({"itemknn": {"ndcg@10": 0.05}, "sr": {"ndcg@10": 0.06}, "slow": {"ndcg@10": 0.9}}, 10)
    {'name': 'sr', 'ndcg@10': 0.06}
    """
    key = f"ndcg@{k}"
    peers = [(name, entry[key]) for name, entry in summaries.items() if name in PEERS]
    if not peers:
        return None
    name, value = max(peers, key=lambda p: p[1])
    return {"name": name, key: value}


def vs_best_peer(ndcg: float, best: dict | None, k: int) -> float | None:
    """A policy's NDCG@k over the best peer's (None without a peer or when the best scored 0).

    >>> vs_best_peer(0.12, {"name": "sr", "ndcg@10": 0.04}, 10)
    3.0
    """
    if best is None or not best[f"ndcg@{k}"]:
        return None
    return round(ndcg / best[f"ndcg@{k}"], 4)


def run_replay(stream: EventStream, policies: list[str], *, k: int = 10, warmup: float = 0.2,
               include_seen: bool = False, ties: str = "group", consolidate_every: int | None = None,
               truth=None, seed: int = 0, source: str = "", show_progress: bool = True,
               make: Callable[..., Recommender] = make_policy) -> ReplayReport:
    """Replay `stream` through each named policy; every policy sees exactly the same events.

    ``make(name, seed=seed)`` builds each policy (`evaluation.features_replay` passes one that
    knows the ``+features`` names); a policy with a ``report()`` method adds its dict to its
    JSON entry. A policy that consolidates on a schedule (``reschedule(every)``: `ewc`,
    `fast-slow`) does so every `consolidate_every` learned events, by default
    `consolidation_every` of the events it learns one by one (the scored part, plus the warm-up
    events of a step that straddles the boundary). Results are keyed by the names asked for.
    """
    n_warm = warmup_size(len(stream), warmup)
    learned = len(stream) - first_learned(stream.timestamps, n_warm, ties)
    every = consolidate_every or consolidation_every(learned)
    results = []
    trackers = {}
    with _progress_bar(not show_progress) as bar:
        for name in policies:
            policy = make(name, seed=seed)
            if hasattr(policy, "reschedule"):
                policy.reschedule(every)
            task = bar.add_task(f"{name:>13}", total=len(stream) - n_warm, rate="-")
            tracker = AdaptationTracker(truth, stream, n_warm) if truth is not None else None
            done = {"n": 0, "shown": 0}

            def advance(step: int, task=task, done=done) -> None:
                done["n"] += step
                if done["n"] - done["shown"] >= 500:
                    elapsed = bar.tasks[task].elapsed or 1e-9
                    bar.update(task, completed=done["n"], rate=f"{done['n'] / elapsed:,.0f}")
                    done["shown"] = done["n"]

            result = prequential(stream, policy, k=k, warmup=warmup, include_seen=include_seen, ties=ties,
                                 observer=tracker, progress=advance)
            result.name = name
            bar.update(task, completed=len(stream) - n_warm,
                       rate=f"{result.evaluated / max(result.seconds, 1e-9):,.0f}")
            if tracker is not None:
                result.extra.update(tracker.summary())
            if hasattr(policy, "report"):
                result.extra.update(policy.report())
            results.append(result)
            trackers[name] = tracker
            logger.info("%s: hr@%d=%.4f ndcg@%d=%.4f", name, k, result.hr, k, result.ndcg)
    summaries = {r.name: r.summary() for r in results}
    best = best_peer(summaries, k)
    for r in results:
        summaries[r.name]["vs_best_peer"] = vs_best_peer(summaries[r.name][f"ndcg@{k}"], best, k)
    document = {
        "protocol": {"k": k, "warmup": warmup, "include_seen": include_seen,
                     "warmup_events": n_warm, "order": "timestamp, stable", "ties": ties,
                     "consolidate_every": every, "seed": seed},
        "dataset": {"source": source, "events": len(stream), "users": stream.n_users,
                    "items": stream.n_items},
        "best_peer": best,
        "policies": summaries,
    }
    return ReplayReport(document=document, results=results, stream=stream)


def plot_cumulative_hr(report: ReplayReport, path: Path) -> None:
    """Draw cumulative HR@k over stream time, one line per policy, to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    stream = report.stream
    n_warm = len(stream) - (report.results[0].evaluated if report.results else 0)
    times = (stream.timestamps[n_warm:] * 1000).astype("datetime64[ms]")
    fig, ax = plt.subplots(figsize=(9, 5))
    for result in report.results:
        if not result.evaluated:
            continue
        cumulative = np.cumsum(result.hits) / np.arange(1, result.evaluated + 1)
        ax.plot(times, cumulative, label=f"{result.name} ({result.hr:.3f})")
    k = report.document["protocol"]["k"]
    ax.set_xlabel("stream time")
    ax.set_ylabel(f"cumulative HR@{k}")
    ax.set_title(f"Prequential replay: {report.document['dataset']['source']}")
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
