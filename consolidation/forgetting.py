"""The forgetting benchmark: learn a log's time periods in order, score every period after each.

This is fastslow's version of the continual-learning tables in the literature. The log (time
order) is cut into ``tasks`` consecutive periods of equal event counts; the last ``holdout``
share of each period (by time) is held out and never learned. A method learns period 0, then
period 1, ... and after period j it is scored on every period i's held-out slice: ``R[j, i]``
is NDCG@k with `consolidation.evaluate`'s definitions (each held-out event ranked against
every item, given the user's items before it, those items excluded; unknown items and items
already had are misses; ``gain`` from `evaluation.protocol`). A user's items before a held-out
event are the *learned* ones: held-out events never enter anyone's history, so every method
sees the same context (the fast path cannot see them either).

Methods, all through the replay policies' own code:

- ``finetune``: `evaluation.ablations.FinetunePolicy`, plain SGD every 32 events of a period;
- ``ewc``: `consolidation.policy.EwcPolicy`, one consolidation (replay + EWC, gated) at the end
  of each period;
- ``replay``: the same with ``ewc_lambda=0`` (replay without EWC);
- ``fast-slow``: `consolidation.policy.FastSlowPolicy`, the FastSlow learning every event and
  consolidating (replay + EWC + distillation, gated, hot-swapped) at the end of each period.
  It is scored on what serving returns, ``FastSlow.recommend`` for the held-out event's user
  (fast state as of now) with the same items excluded.

Summaries (Lopez-Paz & Ranzato 2017): ``ACC = mean_i R[T-1, i]`` (every period after the
last one) and ``BWT = mean_{i < T-1} (R[T-1, i] - R[i, i])`` (how much each period lost since
it was learned; negative = forgetting).

Periods are equal event counts unless ``cuts`` (row numbers where periods 1.. start) are
given, e.g. a seasonal stream's season boundaries. With ``seasons`` (one letter per period,
`evaluation.synth_world.SynthConfig.seasons`), a period whose season was seen before and
differs from the previous period's is a *return*, and the **recurrence** figure is what users
feel then: NDCG@k of the first ``recurrence_events`` events of each return, test-then-learn
(each event ranked by the method's ``recommend`` for its user, the user's learned items
excluded and counted as misses, before the method learns it), averaged over the returns.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from consolidation.evaluate import evaluate
from consolidation.sampling import ReplaySample
from consolidation.train import ConsolidationConfig
from evaluation.protocol import gain, steps
from fastslow.errors import ConfigError

logger = logging.getLogger(__name__)

METHODS = ("finetune", "ewc", "replay", "fast-slow")


def acc(matrix: Sequence[Sequence[float]]) -> float:
    """Average score over every period after the last one: mean of the final row.

    >>> round(acc([[0.5, 0.0], [0.3, 0.6]]), 6)
    0.45
    """
    return float(np.mean(np.asarray(matrix, dtype=np.float64)[-1]))


def bwt(matrix: Sequence[Sequence[float]]) -> float:
    """Backward transfer: mean over earlier periods of ``R[T-1, i] - R[i, i]`` (0 for one period).

    >>> round(bwt([[0.5, 0.0], [0.3, 0.6]]), 6)   # period 0 fell from 0.5 to 0.3
    -0.2
    """
    r = np.asarray(matrix, dtype=np.float64)
    last = len(r) - 1
    return float(np.mean([r[last, i] - r[i, i] for i in range(last)])) if last > 0 else 0.0


@dataclass
class Task:
    """One period: the events to learn, and the held-out events it is scored on."""

    train: pa.Table
    probes: ReplaySample


def _probe_sample(table: pa.Table, chosen: np.ndarray, learned: np.ndarray, history: int) -> ReplaySample:
    """The ``chosen`` rows of ``table``, each with the user's ``learned`` items before it (most recent first)."""
    users = table.column("user_id").to_pylist()
    items = table.column("item_id").to_pylist()
    codes: dict[str, int] = {}
    recent: dict[str, list[int]] = {}
    rows = np.flatnonzero(chosen)
    hist = np.full((len(rows), history), -1, dtype=np.int64)
    at = {int(r): n for n, r in enumerate(rows)}
    # events sharing a timestamp are one step (the replay protocol's default): none is in another's history
    bounds = steps(table.column("timestamp").cast(pa.int64()).to_numpy())
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        for r in range(start, stop):
            mine, n = recent.get(users[r]), at.get(r)
            if n is not None and mine:
                past = mine[::-1][:history]
                hist[n, : len(past)] = past
        for r in range(start, stop):
            code = codes.setdefault(items[r], len(codes))
            if not learned[r]:
                continue
            mine = recent.setdefault(users[r], [])
            mine.append(code)
            if len(mine) > history:
                del mine[0]
    pick = lambda name: np.array(table.column(name).take(pa.array(rows)).to_pylist(), dtype=object)  # noqa: E731
    times = table.column("timestamp").take(pa.array(rows)).cast(pa.int64()).to_numpy()
    return ReplaySample(pick("event_id"), pick("user_id"), pick("item_id"), times, pick("event_type"),
                        np.asarray(table.column("value").take(pa.array(rows)).to_numpy(), dtype=np.float64),
                        np.ones(len(rows), dtype=bool), hist, np.array(list(codes), dtype=object))


def split_tasks(table: pa.Table, tasks: int = 5, holdout: float = 0.1, history: int = 50,
                max_probes: int | None = 1000, seed: int = 0, cuts: Sequence[int] | None = None) -> list[Task]:
    """Cut a time-ordered log into ``tasks`` periods, each with its held-out tail (module docstring).

    ``cuts``: the rows where periods 1.. start (``tasks - 1`` increasing row numbers); default
    equal event counts.

    At most ``max_probes`` held-out events per period are scored (a seeded uniform choice).

    >>> import datetime as dt
    >>> t = [dt.datetime(2024, 1, 1, 0, 0, s, tzinfo=dt.timezone.utc) for s in range(8)]
    >>> log = pa.table({"event_id": [str(n) for n in range(8)], "user_id": ["a", "b"] * 4,
    ...     "item_id": ["x", "y", "z", "x", "y", "z", "x", "y"], "timestamp": pa.array(t, pa.timestamp("ms", "UTC")),
    ...     "event_type": ["click"] * 8, "value": [1.0] * 8})
    >>> parts = split_tasks(log, tasks=2, holdout=0.25)
    >>> [p.train.num_rows for p in parts], [p.probes.event_ids.tolist() for p in parts]
    ([3, 3], [['3'], ['7']])
    >>> parts[1].probes.history_of(0)   # b's learned items before event 7 (3 was held out), oldest first
    ['y', 'z']
    """
    if tasks < 1 or not 0.0 < holdout < 1.0 or table.num_rows < 2 * tasks:
        raise ConfigError("forgetting tasks/holdout", (tasks, holdout),
                          f"tasks >= 1 with 2 events each (the log has {table.num_rows}) and 0 < holdout < 1")
    bounds = np.linspace(0, table.num_rows, tasks + 1).round().astype(int)
    if cuts is not None:
        bounds = np.array([0, *cuts, table.num_rows], dtype=int)
        if len(bounds) != tasks + 1 or (np.diff(bounds) < 2).any():
            raise ConfigError("forgetting period cuts", list(cuts),
                              f"{tasks - 1} increasing row numbers, periods of 2 events or more")
    rng = np.random.default_rng(seed)
    step_starts = steps(table.column("timestamp").cast(pa.int64()).to_numpy())
    chosen = np.zeros(table.num_rows, dtype=bool)
    learned = np.ones(table.num_rows, dtype=bool)
    period_of = np.zeros(table.num_rows, dtype=np.int64)
    trains = []
    for t, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        cut = end - max(1, int(round(holdout * (end - start))))
        # the held-out tail starts a step: no learned event shares a timestamp with a held-out one
        step_start = int(step_starts[np.searchsorted(step_starts, cut, side="right") - 1])
        cut = step_start if step_start > start else cut
        trains.append(table.slice(start, cut - start))
        tail = np.arange(cut, end)
        learned[tail] = False
        if max_probes is not None and len(tail) > max_probes:
            tail = np.sort(rng.choice(tail, max_probes, replace=False))
        chosen[tail] = True
        period_of[start:end] = t
    probes = _probe_sample(table, chosen, learned, history)
    owner = period_of[chosen]
    return [Task(train, probes.subset(owner == t)) for t, train in enumerate(trains)]


def columns(table: pa.Table) -> tuple[list, list, np.ndarray, list, np.ndarray]:
    """A table as the column arrays `Recommender.learn_warmup` takes (times in unix seconds)."""
    return (table.column("user_id").to_pylist(), table.column("item_id").to_pylist(),
            table.column("timestamp").cast(pa.int64()).to_numpy() / 1000.0, table.column("event_type").to_pylist(),
            np.asarray(table.column("value").to_numpy(), dtype=np.float64))


def serving_ndcg(model, probes: ReplaySample, k: int = 10) -> float:
    """NDCG@k of what ``model.recommend`` returns now for each probe's user (its history excluded)."""
    if not len(probes):
        return 0.0
    total = 0.0
    for n in range(len(probes)):
        past = set(probes.history_of(n))
        item = probes.items[n]
        top = model.recommend(probes.users[n], k, exclude=past)
        if item in top and item not in past:
            total += gain(top.index(item))
    return total / len(probes)


def make_method(name: str, config: ConsolidationConfig, sample_size: int, seed: int = 0):
    """A fresh policy for a method name (module docstring) and how to score it: (policy, score)."""
    from consolidation.policy import EwcPolicy, FastSlowPolicy
    from evaluation.ablations import FinetunePolicy
    from models.fastslow import FastSlow
    from models.slow import SlowRanker

    never = 2**62   # consolidations happen at period ends only
    if name == "finetune":
        policy = FinetunePolicy(SlowRanker(seed=seed))
    elif name in ("ewc", "replay"):
        lam = config.ewc_lambda if name == "ewc" else 0.0
        policy = EwcPolicy(SlowRanker(seed=seed), every=never, sample_size=sample_size,
                           config=dataclasses.replace(config, ewc_lambda=lam))
    elif name == "fast-slow":
        policy = FastSlowPolicy(FastSlow(seed=seed), every=never, sample_size=sample_size, config=config)
        return policy, lambda probes, k: serving_ndcg(policy.model, probes, k)
    else:
        raise ConfigError("forgetting method", name, "one of: " + ", ".join(METHODS))
    return policy, lambda probes, k: evaluate(policy.ranker, probes, k)[f"ndcg_at_{k}"]


@dataclass
class MethodResult:
    """One method's matrix ``R[j][i]`` and its summaries."""

    name: str
    matrix: list[list[float]]
    seconds: float
    log: list[dict] = field(default_factory=list)
    recurrence: dict[int, float] = field(default_factory=dict)
    """Period of each season's return -> NDCG@k of its first events (module docstring)."""

    def summary(self) -> dict:
        out = {"acc": round(acc(self.matrix), 6), "bwt": round(bwt(self.matrix), 6),
               "matrix": [[round(x, 6) for x in row] for row in self.matrix], "seconds": round(self.seconds, 1),
               "consolidations": [{"promoted": e["promoted"], "reason": e["reason"]} for e in self.log]}
        if self.recurrence:
            out["recurrence"] = round(float(np.mean(list(self.recurrence.values()))), 6)
            out["recurrence_by_period"] = {str(j): round(x, 6) for j, x in self.recurrence.items()}
        return out


def returns(seasons: str) -> list[int]:
    """Periods where a season comes back: seen before, and not the previous period's.

    >>> returns("ABACA"), returns("AAB"), returns("")
    ([2, 4], [], [])
    """
    return [j for j, s in enumerate(seasons) if s in seasons[:j] and s != seasons[j - 1]]


def prequential_ndcg(policy, events, seen: dict[str, set], k: int = 10) -> float:
    """Test-then-learn NDCG@k over ``events`` (tuples for ``learn_one``); ``seen`` grows as they are learned.

    Events sharing a timestamp are one step, as in the replay protocol: all ranked, then learned.
    """
    total = 0.0
    bounds = steps(np.array([event[2] for event in events], dtype=np.float64))
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        for user, item, *_ in events[start:stop]:
            past = seen.get(user, ())
            top = policy.recommend(user, k, exclude=past)
            if item in top and item not in past:
                total += gain(top.index(item))
        for event in events[start:stop]:
            policy.learn_one(*event)
            seen.setdefault(event[0], set()).add(event[1])
    return total / len(events) if events else 0.0


def run_method(name: str, tasks: list[Task], config: ConsolidationConfig, sample_size: int, k: int = 10,
               seed: int = 0, progress: Callable[[str, int], None] | None = None,
               recurring: Sequence[int] = (), recurrence_events: int = 1000) -> MethodResult:
    """Learn ``tasks`` in order with one method, scoring every task's probes after each.

    The first ``recurrence_events`` events of each period in ``recurring`` are scored
    test-then-learn as they are learned (`prequential_ndcg`).
    """
    started = time.perf_counter()
    policy, score = make_method(name, config, sample_size, seed)
    matrix, recurrence, seen = [], {}, {}
    for j, task in enumerate(tasks):
        users, items, times, kinds, values = columns(task.train)
        if j == 0:
            policy.learn_warmup(users, items, times, kinds, values)
        else:
            events = list(zip(users, items, times.tolist(), kinds, values.tolist()))
            head = recurrence_events if j in recurring else 0
            if head:
                recurrence[j] = prequential_ndcg(policy, events[:head], seen, k)
            for event in events[head:]:
                policy.learn_one(*event)
            if hasattr(policy, "consolidate"):
                policy.consolidate()
        for u, i in zip(users, items):
            seen.setdefault(u, set()).add(i)
        matrix.append([score(other.probes, k) for other in tasks])
        logger.info("%s after period %d: %s", name, j, [round(x, 4) for x in matrix[-1]])
        if progress is not None:
            progress(name, j)
    return MethodResult(name, matrix, time.perf_counter() - started, list(getattr(policy, "log", [])), recurrence)


def forgetting(table: pa.Table, methods: Sequence[str] = METHODS, tasks: int = 5, holdout: float = 0.1,
               max_probes: int | None = 1000, config: ConsolidationConfig = ConsolidationConfig(),
               sample_size: int | None = None, k: int = 10, seed: int = 0,
               progress: Callable[[str, int], None] | None = None, cuts: Sequence[int] | None = None,
               seasons: str = "", recurrence_events: int = 1000) -> dict[str, MethodResult]:
    """Run the benchmark for each method on the same periods (``sample_size`` None: twice a period).

    ``cuts`` and ``seasons``: see the module docstring (``seasons`` has one letter per period).
    """
    for name in methods:
        if name not in METHODS:
            raise ConfigError("forgetting method", name, "one of: " + ", ".join(METHODS))
    if seasons and len(seasons) != tasks:
        raise ConfigError("forgetting seasons", seasons, f"one season letter per period ({tasks})")
    parts = split_tasks(table, tasks, holdout, max_probes=max_probes, seed=seed, cuts=cuts)
    size = sample_size or 2 * max(p.train.num_rows for p in parts)
    return {name: run_method(name, parts, config, size, k, seed, progress, returns(seasons), recurrence_events)
            for name in methods}
