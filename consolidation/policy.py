"""The `ewc` replay policy: the slow ranker consolidated with EWC every N events, no fast path.

Between consolidations it is the frozen slow model (`evaluation.ablations.SlowPolicy`: users'
recent items feed the user tower). Every ``every`` learned events it runs the consolidation
job's code on what it has learned so far, never on future events: a replay sample (recent
events since its last promotion + a time-spread sample of older ones) from its own in-memory
archive, a challenger trained with EWC (`consolidation.train.train_challenger`), scored
against the current model on held-out probes, promoted only if the gate says so.

By default it skips MLflow (tracking every consolidation of a long replay costs seconds each
and fills the store); pass a `ModelRegistry` to run the full tracked job
(`consolidation.job.consolidate`) instead. The in-memory archive keeps every learned event
(as Arrow tables): replay is offline and the log is in memory anyway; the sampler itself
holds only the sample.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from consolidation.gate import Decision
from consolidation.job import bootstrap_champion, consolidate, run_consolidation, train_first
from consolidation.registry import ModelRegistry
from consolidation.sampling import sample_replay
from consolidation.train import ConsolidationConfig
from evaluation.ablations import SlowPolicy
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


class EwcPolicy(SlowPolicy):
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
        self._archive: list[pa.Table] = []
        self._pending: list[list] = [[], [], [], [], []]
        self._seen = 0
        self._since_ms: int | None = None
        self._fisher: dict | None = None
        self.log: list[dict] = []
        """One entry per consolidation: events learned, until_ms (latest event sampled), promoted, reason."""

    def learn_warmup(self, users, items, timestamps, event_types, values) -> None:
        table = _events_table(0, users, items, timestamps, event_types, values)
        self._archive.append(table)
        self._seen = table.num_rows
        warm = sample_replay([table], table.num_rows, history=self.ranker.history, seed=self.config.seed)
        self._since_ms = warm.until_ms
        if self.registry is not None:
            bootstrap_champion(self.registry, warm, self.ranker, self.config, show_progress=False)
            self._fisher = None  # the registry holds it
        else:
            self._fisher = train_first(self.ranker, warm, self.config).fisher
        for u, i in zip(users, items):
            self._remember(u, i)

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        super().learn_one(user_id, item_id, timestamp, event_type, value)
        for column, x in zip(self._pending, (user_id, item_id, timestamp, event_type, value)):
            column.append(x)
        if len(self._pending[0]) >= self.every:
            self._archive.append(_events_table(self._seen, *self._pending))
            self._seen += len(self._pending[0])
            self._pending = [[], [], [], [], []]
            self._consolidate()

    def _consolidate(self) -> None:
        sample = sample_replay(self._archive, self.sample_size, recent_fraction=self.recent_fraction,
                               since_ms=self._since_ms, history=self.ranker.history,
                               seed=self.config.seed + len(self.log))
        if self.registry is not None:
            result = consolidate(self.registry, sample, self.config, show_progress=False)
            decision = Decision(result.promoted, result.reason)
            if decision.promote:
                self.ranker = self.registry.load(result.version, self.ranker.device)
        else:
            outcome = run_consolidation(self.ranker, sample, self.config, previous_fisher=self._fisher)
            decision = outcome.decision
            if decision.promote:
                self.ranker, self._fisher = outcome.challenger, outcome.fisher
        if decision.promote:
            self._since_ms = sample.until_ms
        self.log.append({"learned": self._seen, "until_ms": sample.until_ms, "promoted": decision.promote,
                         "reason": decision.reason})


def ewc(seed: int = 0) -> EwcPolicy:
    """Factory used by `fastslow replay --policy ewc`."""
    return EwcPolicy(SlowRanker(seed=seed), config=ConsolidationConfig(seed=seed))
