"""Replay policies that consolidate on a schedule inside `fastslow replay`: `ewc` and `fast-slow`.

Both run the consolidation job's code every ``every`` learned events on what they have learned
so far, never on future events: a replay sample (recent events since the last promotion + a
time-spread sample of older ones) from their own in-memory archive, a challenger trained with
EWC (`consolidation.train.train_challenger`), scored against the current model on held-out
probes, promoted only if the gate says so.

- `EwcPolicy` (``ewc``): the slow ranker alone. Between consolidations it is the frozen slow
  model (`evaluation.ablations.SlowPolicy`: users' recent items feed the user tower).
- `FastSlowPolicy` (``fast-slow``): the product as deployed, a `models.fastslow.FastSlow` whose
  fast path learns every event through its own ``learn_one`` (the worker's call); each
  consolidation also distils the fast path's per-user preferences (`consolidation.distill`)
  and, on promotion, swaps the slow model in with ``use_ranker(challenger, keep_fast)``, as the
  hot-reload watcher does in production. The replay sets the schedule (``reschedule``: by
  default about five consolidations over the scored part).

By default they skip MLflow (tracking every consolidation of a long replay costs seconds each
and fills the store); pass a `ModelRegistry` to run the full tracked job
(`consolidation.job.consolidate`) instead. The in-memory archive keeps every learned event
(as Arrow tables): replay is offline and the log is in memory anyway; the sampler itself
holds only the sample.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Collection

import numpy as np
import pyarrow as pa

from consolidation.distill import DEFAULT_ID_SHARE, DEFAULT_WEIGHT, distiller
from consolidation.gate import Decision
from consolidation.job import bootstrap_champion, consolidate, run_consolidation, train_first
from consolidation.ranker_fisher import ranker_fisher
from consolidation.registry import ModelRegistry
from consolidation.reload import KEEP_FAST
from consolidation.sampling import ReplaySample, sample_replay
from consolidation.train import ConsolidationConfig, Distill, sample_examples
from evaluation.ablations import SlowPolicy
from models.base import Recommender
from models.fastslow import FastSlow
from models.slow import SlowRanker

logger = logging.getLogger(__name__)


def _events_table(first_id: int, users, items, timestamps, event_types, values) -> pa.Table:
    n = len(users)
    return pa.table({
        "event_id": [str(first_id + k) for k in range(n)], "user_id": [str(u) for u in users],
        "item_id": [str(i) for i in items],
        "timestamp": pa.array(np.round(np.asarray(timestamps, dtype=np.float64) * 1000).astype(np.int64),
                              pa.int64()).cast(pa.timestamp("ms", "UTC")),
        "event_type": [str(e) for e in event_types], "value": np.asarray(values, dtype=np.float64),
    })


class Schedule:
    """What a consolidating policy learned (an in-memory archive) and when to consolidate next.

    >>> s = Schedule(every=2)
    >>> s.warm(["a"], ["x"], [1.0], ["click"], [1.0]).num_rows
    1
    >>> s.add("a", "y", 2.0, "click", 1.0), s.add("b", "x", 3.0, "click", 1.0)   # due after 2 events
    (False, True)
    >>> s.seen, len(s.sample(10, 0.5, history=5, seed=0))
    (3, 3)
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.archive: list[pa.Table] = []
        self.pending: list[list] = [[], [], [], [], []]
        self.seen = 0
        self.since_ms: int | None = None
        """Time of the last event the serving model was consolidated on (its recent/old boundary)."""

    def warm(self, users, items, timestamps, event_types, values) -> pa.Table:
        table = _events_table(0, users, items, timestamps, event_types, values)
        self.archive.append(table)
        self.seen = table.num_rows
        return table

    def add(self, user_id, item_id, timestamp, event_type, value) -> bool:
        """Record one learned event; True when a consolidation is due (the archive is then up to date)."""
        for column, x in zip(self.pending, (user_id, item_id, timestamp, event_type, value)):
            column.append(x)
        return len(self.pending[0]) >= self.every and self.flush()

    def flush(self) -> bool:
        """Move the pending events into the archive; False if there were none."""
        if not self.pending[0]:
            return False
        self.archive.append(_events_table(self.seen, *self.pending))
        self.seen += len(self.pending[0])
        self.pending = [[], [], [], [], []]
        return True

    def sample(self, size: int, recent_fraction: float, history: int, seed: int) -> ReplaySample:
        return sample_replay(self.archive, size, recent_fraction=recent_fraction, since_ms=self.since_ms,
                             history=history, seed=seed)


def consolidate_once(ranker: SlowRanker, sample: ReplaySample, config: ConsolidationConfig, fisher: dict | None,
                     registry: ModelRegistry | None, distill: Distill | None = None
                     ) -> tuple[Decision, SlowRanker | None, dict | None]:
    """One consolidation of ``ranker``: (decision, the promoted model or None, the Fisher to keep).

    With a registry this is the tracked job (the registry keeps the Fisher), else in process.
    """
    if registry is not None:
        result = consolidate(registry, sample, config, distill=distill, show_progress=False)
        promoted = registry.load(result.version, ranker.device) if result.promoted else None
        return Decision(result.promoted, result.reason), promoted, None
    outcome = run_consolidation(ranker, sample, config, previous_fisher=fisher, distill=distill)
    if outcome.decision.promote:
        return outcome.decision, outcome.challenger, outcome.fisher
    return outcome.decision, None, fisher


class Consolidating(ABC):
    """What both policies share: a `Schedule` and a `_consolidate` step."""

    _schedule: Schedule
    every: int
    log: list[dict]

    def reschedule(self, every: int) -> None:
        """Consolidate every `every` learned events from now on (`fastslow replay --consolidate-every`)."""
        if every < 1:
            raise ValueError(f"consolidation schedule must be >= 1 event, got {every}")
        self.every = self._schedule.every = every

    def report(self) -> dict:
        """What the replay JSON shows of the schedule: consolidations run and promoted."""
        return {"consolidate_every": self.every, "consolidations": len(self.log),
                "promotions": sum(bool(entry["promoted"]) for entry in self.log)}

    @abstractmethod
    def _consolidate(self) -> None:
        """One consolidation on the schedule's sample; each policy defines its own."""

    def consolidate(self) -> bool:
        """Consolidate now on everything learned (e.g. at the end of a period); False if nothing new."""
        if not self._schedule.flush():
            return False
        self._consolidate()
        return True


class EwcPolicy(Consolidating, SlowPolicy):
    """Slow ranker + periodic EWC consolidation, gated, as a prequential policy.

    Parameters
    ----------
    ranker
        The slow ranker to warm up and consolidate (constructor arguments are its own).
    every
        Learned events between consolidations.
    sample_size, recent_fraction
        Replay sample drawn at each consolidation (`consolidation.sampling`).
    config
        Training, EWC and gate settings (`ConsolidationConfig`).
    registry
        Track every consolidation in MLflow through this registry (slower); None: in process.

    Examples
    --------
    >>> p = EwcPolicy(SlowRanker(dim=8, epochs=5, batch_size=16), every=8, sample_size=40,
    ...               config=ConsolidationConfig(epochs=2, probe_fraction=0.25))
    >>> events = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")] * 5
    >>> p.learn_warmup(*zip(*events), [float(t) for t in range(20)], ["click"] * 20, [1.0] * 20)
    >>> for t, (u, i) in enumerate([("c", "z"), ("c", "x")] * 4):
    ...     p.learn_one(u, i, 20.0 + t)
    >>> [(c["learned"], c["until_ms"]) for c in p.log]   # 28 events learned, the last at t=27 s
    [(28, 27000)]
    >>> "z" in p.ranker.items or not p.log[0]["promoted"]
    True
    """

    name = "ewc"

    def __init__(self, ranker: SlowRanker, every: int = 10_000, sample_size: int = 20_000,
                 recent_fraction: float = 0.5, config: ConsolidationConfig = ConsolidationConfig(),
                 registry: ModelRegistry | None = None) -> None:
        super().__init__(ranker)
        self.every = every
        self.sample_size = sample_size
        self.recent_fraction = recent_fraction
        self.config = config
        self.registry = registry
        self._schedule = Schedule(every)
        self._fisher: dict | None = None
        self.log: list[dict] = []
        """One entry per consolidation: events learned, until_ms (latest event sampled), promoted, reason."""

    def learn_warmup(self, users, items, timestamps, event_types, values) -> None:
        table = self._schedule.warm(users, items, timestamps, event_types, values)
        warm = sample_replay([table], table.num_rows, history=self.ranker.history, seed=self.config.seed)
        self._schedule.since_ms = warm.until_ms
        if self.registry is not None:
            bootstrap_champion(self.registry, warm, self.ranker, self.config, show_progress=False)
            self._fisher = None  # the registry holds it
        else:
            self._fisher = train_first(self.ranker, warm, self.config).fisher
        for u, i in zip(users, items):
            self._remember(u, i)

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        super().learn_one(user_id, item_id, timestamp, event_type, value)
        if self._schedule.add(user_id, item_id, timestamp, event_type, value):
            self._consolidate()

    def _consolidate(self) -> None:
        sample = self._schedule.sample(self.sample_size, self.recent_fraction, self.ranker.history,
                                       self.config.seed + len(self.log))
        decision, promoted, self._fisher = consolidate_once(self.ranker, sample, self.config, self._fisher,
                                                            self.registry)
        if promoted is not None:
            self.ranker = promoted
            self._schedule.since_ms = sample.until_ms
        self.log.append({"learned": self._schedule.seen, "until_ms": sample.until_ms,
                         "promoted": decision.promote, "reason": decision.reason})


class FastSlowPolicy(Consolidating, Recommender):
    """A `FastSlow` consolidated on a schedule: replay + EWC + distillation, gated, hot-swapped.

    Parameters
    ----------
    model
        The FastSlow to serve from (a fresh one trains its slow model at warm-up).
    every, sample_size, recent_fraction, config, registry
        As for `EwcPolicy`.
    distill_k, distill_weight, distill_id_share
        Fast-path preferences distilled per user, their total weight per user, and the share
        of it on id-only copies (`consolidation.distill`).
    distill_users
        Users distilled per consolidation at most: the most active since the last promotion
        (each costs one fast-path scoring); None: every user active since then.
    keep_fast
        Share of the fast vectors kept after a promotion (`consolidation.reload`).

    Examples
    --------
    >>> p = FastSlowPolicy(FastSlow(seed=0), every=8, sample_size=40,
    ...                    config=ConsolidationConfig(epochs=2, probe_fraction=0.25, fisher_samples=50))
    >>> events = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "x")] * 4
    >>> p.learn_warmup(*zip(*events), [float(t) for t in range(20)], ["click"] * 20, [1.0] * 20)
    >>> for t, (u, i) in enumerate([("c", "z"), ("c", "y")] * 4):
    ...     p.learn_one(u, i, 20.0 + t)
    >>> [(c["learned"], c["until_ms"]) for c in p.log]
    [(28, 27000)]
    >>> len(p.recommend("a", 2, exclude={"x"}))
    2
    """

    name = "fast-slow"

    def __init__(self, model: FastSlow, every: int = 20_000, sample_size: int = 4_000, recent_fraction: float = 0.5,
                 config: ConsolidationConfig = ConsolidationConfig(epochs=1, fisher_samples=2_000),
                 distill_k: int = 10, distill_weight: float = DEFAULT_WEIGHT, distill_users: int | None = 200,
                 distill_id_share: float = DEFAULT_ID_SHARE, keep_fast: float = KEEP_FAST, registry: ModelRegistry | None = None) -> None:
        self.model = model
        self.every = every
        self.sample_size = sample_size
        self.recent_fraction = recent_fraction
        self.config = config
        self.distill_k = distill_k
        self.distill_weight = distill_weight
        self.distill_users = distill_users
        self.distill_id_share = distill_id_share
        self.keep_fast = keep_fast
        self.registry = registry
        self._schedule = Schedule(every)
        self._fisher: dict | None = None
        self._active: Counter[str] = Counter()
        self.log: list[dict] = []
        """One entry per consolidation: learned, until_ms, promoted, reason, distilled users."""

    def learn_warmup(self, users, items, timestamps, event_types, values) -> None:
        table = self._schedule.warm(users, items, timestamps, event_types, values)
        ranker = self.model.slow_model
        warm = sample_replay([table], table.num_rows, history=ranker.history, seed=self.config.seed)
        self._schedule.since_ms = warm.until_ms
        if self.registry is not None:
            if self.registry.champion_version() is None:
                bootstrap_champion(self.registry, warm, SlowRanker(seed=self.config.seed), self.config,
                                   show_progress=False)
            self.model.use_ranker(self.registry.load_champion(ranker.device)[1])
        elif self.model.ranker is None and not len(ranker.items):
            # a first champion as the job trains one: the gate's probes stay out of its training
            self._fisher = train_first(ranker, warm, self.config).fisher
            self.model.use_ranker(ranker)
        else:   # a given champion: its Fisher on the warm-up (on a clone: examples register ids)
            clone = ranker.clone()
            self._fisher = ranker_fisher(clone, sample_examples(clone, warm), self.config.fisher_samples,
                                         self.config.seed)
        self.model.learn_warmup(users, items, timestamps, event_types, values)

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        self.model.learn_one(user_id, item_id, timestamp, event_type, value)
        self._active[user_id] += 1
        if self._schedule.add(user_id, item_id, timestamp, event_type, value):
            self._consolidate()

    def recommend(self, user_id, k, exclude: Collection[str] = ()) -> list[str]:
        return self.model.recommend(user_id, k, exclude)

    def _consolidate(self) -> None:
        ranker = self.model.slow_model
        sample = self._schedule.sample(self.sample_size, self.recent_fraction, ranker.history,
                                       self.config.seed + len(self.log))
        users = [u for u, _ in self._active.most_common(self.distill_users)]
        distill = distiller(self.model, 0.0, self.distill_k, self.distill_weight, users=users,
                            id_share=self.distill_id_share)
        decision, promoted, self._fisher = consolidate_once(ranker, sample, self.config, self._fisher,
                                                            self.registry, distill)
        if promoted is not None:
            self.model.use_ranker(promoted, keep_fast=self.keep_fast)
            self._schedule.since_ms = sample.until_ms
            self._active.clear()
        self.log.append({"learned": self._schedule.seen, "until_ms": sample.until_ms, "promoted": decision.promote,
                         "reason": decision.reason, "distilled_users": len(users)})


def ewc(seed: int = 0) -> EwcPolicy:
    """Factory used by `fastslow replay --policy ewc`."""
    return EwcPolicy(SlowRanker(seed=seed), config=ConsolidationConfig(seed=seed))


def _product_settings() -> dict:
    """The consolidation defaults of `fastslow.settings.Settings` (what a deployment runs unless
    configured otherwise), read from the class so a replay does not depend on the environment."""
    from fastslow.settings import Settings

    names = ("replay_sample_size", "replay_recent_fraction", "consolidation_epochs", "ewc_lambda", "ewc_gamma",
             "gate_tolerance")
    return {name: Settings.model_fields[name].default for name in names}


def fast_slow(seed: int = 0) -> FastSlowPolicy:
    """Factory for `fastslow replay --policy fast-slow`: the product as deployed.

    The consolidation job with the product's defaults (`fastslow.settings.Settings`): replay
    sample size and recent share, epochs, EWC lambda and gamma, gate tolerance; like the demo's
    in-process job it distils every user active since the last promotion and swaps a promoted
    model in with the reload watcher's ``keep_fast``. No MLflow tracking (the same
    `run_consolidation` without the bookkeeping). The replay sets the schedule.
    """
    d = _product_settings()
    config = ConsolidationConfig(epochs=d["consolidation_epochs"], ewc_lambda=d["ewc_lambda"], ewc_gamma=d["ewc_gamma"],
                                 tolerance=d["gate_tolerance"], seed=seed)
    return FastSlowPolicy(FastSlow(seed=seed), sample_size=d["replay_sample_size"],
                          recent_fraction=d["replay_recent_fraction"], config=config, distill_users=None)
