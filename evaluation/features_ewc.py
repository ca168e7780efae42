"""`ewc+features`: the `ewc` replay policy whose slow model reads Feast context.

Like `consolidation.policy.EwcPolicy` (same schedule, sample, probes, EWC penalty, gate), with
context in every training step: the warm-up model and every challenger are trained on
examples carrying their point-in-time context (`features.context.FeatureContext.training_context`
over the sampled events, all of which were pushed before the consolidation runs), negatives
reading the items' context history, and scoring reads online context like `slow+features`.

Until `consolidation.train` takes a context source, the training step is composed here from
the job's own parts (`sample_examples`, `ranker_fisher`, `online_fisher`, `ewc_anchors`,
`ewc_penalty`, `evaluate_slices`, `decide`), with two stated differences: the Fisher is the
two-tower closed form of the id part (``method="closed"``: the context layers get no EWC
anchor and move freely), and the gate scores champion and challenger on the probes by their
id part alone (the same function for both, so the comparison stays fair).
"""

from __future__ import annotations

import logging

from consolidation.evaluate import evaluate_slices
from consolidation.ewc import ewc_penalty, online_fisher
from consolidation.gate import decide
from consolidation.policy import EwcPolicy
from consolidation.ranker_fisher import ranker_fisher
from consolidation.sampling import ReplaySample, sample_replay, split_probes
from consolidation.train import ConsolidationConfig, ewc_anchors, sample_examples
from evaluation.features_policies import FeatureSlowPolicy
from evaluation.features_replay import FeatureFeed
from models.slow import Examples, SlowRanker

logger = logging.getLogger(__name__)


class FeatureEwcPolicy(FeatureSlowPolicy, EwcPolicy):
    """`ewc` with context (module docstring); arguments as `EwcPolicy`'s plus the feed."""

    name = "ewc+features"

    def __init__(self, ranker: SlowRanker, feed: FeatureFeed, every: int = 10_000, sample_size: int = 20_000,
                 recent_fraction: float = 0.5, config: ConsolidationConfig = ConsolidationConfig()) -> None:
        EwcPolicy.__init__(self, ranker, every, sample_size, recent_fraction, config)
        self._attach(feed)

    def learn_warmup(self, users, items, timestamps, event_types, values) -> None:
        table = self._schedule.warm(users, items, timestamps, event_types, values)
        warm = sample_replay([table], table.num_rows, history=self.ranker.history, seed=self.config.seed)
        self._schedule.since_ms = warm.until_ms
        self.feed.learn_many(users, items, timestamps, event_types, values)
        train, _ = split_probes(warm, self.config.probe_fraction)
        examples = self._examples(self.ranker, train)
        self.ranker.fit(examples)
        self._fisher = ranker_fisher(self.ranker, examples, self.config.fisher_samples, self.config.seed,
                                     method="closed")
        for u, i in zip(users, items):
            self._remember(u, i)
        self.scorer.add(self.ranker.items.ids())

    def _examples(self, ranker: SlowRanker, sample: ReplaySample) -> Examples:
        """The sample's examples for `ranker` with point-in-time context; sets its item table."""
        examples = sample_examples(ranker, sample)
        times = sample.timestamps_ms / 1000.0
        context = self.feed.training_context(sample.users.tolist(), sample.items.tolist(), times)
        ranker.set_item_table(*self.feed.provider.item_history(ranker.items.ids()))
        return examples.with_context(context.user, context.items, context.categories, times=times)

    def _consolidate(self) -> None:
        config = self.config
        self.feed.flush()   # every sampled event is in the store before its context is read
        sample = self._schedule.sample(self.sample_size, self.recent_fraction, self.ranker.history,
                                       config.seed + len(self.log))
        train, probes = split_probes(sample, config.probe_fraction)
        champion_metrics = evaluate_slices(self.ranker, probes, config.k)
        challenger = self.ranker.clone()
        examples = self._examples(challenger, train)
        fisher = online_fisher(self._fisher, ranker_fisher(challenger, examples, config.fisher_samples, config.seed,
                                                           method="closed"), config.ewc_gamma)
        anchors = ewc_anchors(self.ranker)
        penalty = None
        if config.ewc_lambda > 0:
            penalty = lambda net: ewc_penalty(dict(net.named_parameters()), anchors, fisher, config.ewc_lambda)  # noqa: E731
        challenger.fit(examples, epochs=config.epochs, penalty=penalty, lr=config.lr)
        decision = decide(champion_metrics, evaluate_slices(challenger, probes, config.k), config.tolerance, config.k)
        if decision.promote:
            self.ranker, self._fisher = challenger, fisher
            self._schedule.since_ms = sample.until_ms
        self.log.append({"learned": self._schedule.seen, "until_ms": sample.until_ms,
                         "promoted": decision.promote, "reason": decision.reason})
        logger.info("ewc+features consolidation %d: %s", len(self.log), decision.reason)


def feature_ewc(feed: FeatureFeed, seed: int = 0) -> FeatureEwcPolicy:
    """The ``ewc+features`` replay policy (defaults as `consolidation.policy.ewc`)."""
    return FeatureEwcPolicy(SlowRanker(seed=seed, context=feed.spec.as_dict()), feed,
                            config=ConsolidationConfig(seed=seed))

