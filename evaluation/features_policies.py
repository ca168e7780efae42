"""The ``+features`` replay policies: `slow`, `finetune` and `fast-slow-frozen` reading Feast context.

Each learns exactly what its plain counterpart learns and additionally

* pushes every learned event to its own feature repository through its
  `evaluation.features_replay.FeatureFeed` (in micro-batches, after learning it);
* trains its warm-up slow model with point-in-time context (`train_with_context`);
* scores with online context (`features.context.FeatureContext`).

`slow+features` and `finetune+features` rank every item they have learned: the items the slow
model has a row for by id + context, below them the ones it has none for (introduced after the
warm-up) in the order of their context (`CatalogueScorer`, `models.slow.below_known`); their
plain counterparts can rank only the items the slow model knows. `fast-slow-frozen+features` is a
`models.fastslow.FastSlow` given a ``context`` provider: its fast path (item index, fast
weights, slow score) then reads the slow model's id + context item vectors
(`models.item_space`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import numpy as np

from evaluation.ablations import FinetunePolicy, SlowPolicy
from evaluation.features_replay import FeatureFeed
from features.context import FeatureContext, ItemTable
from models.base import Recommender
from models.fastslow import FastSlow
from models.gate import normalise
from models.ranking import top_k
from models.scorer import Scored
from models.slow import SlowRanker, below_known

logger = logging.getLogger(__name__)


def train_with_context(ranker: SlowRanker, feed: FeatureFeed, users, items, timestamps) -> list[float]:
    """Fit `ranker` on events already pushed to `feed`, each with its point-in-time context.

    Sampled negatives read the items' context as of each batch's time (the offline store's
    history of the item views, `FeatureContext.item_history`).
    """
    context = feed.training_context(users, items, timestamps)
    examples = ranker.build_examples(users, items).with_context(context.user, context.items, context.categories,
                                                                 times=np.asarray(timestamps, np.float64))
    ranker.set_item_table(*feed.provider.item_history(ranker.items.ids()))
    return ranker.fit(examples)


class CatalogueScorer:
    """Scores every item a policy has learned with context, for one user at a time.

    The items' full vectors and biases with context (`SlowRanker.context_item_vectors`) are
    recomputed only when the item table (`ItemTable`: rows added or re-read after a push) or
    the ranker's weights changed; a request is then one matrix-vector product.
    """

    def __init__(self, provider: FeatureContext) -> None:
        self.provider = provider
        self.table = ItemTable(provider)
        self._key: tuple | None = None
        self._vectors = self._biases = None

    def add(self, item_ids) -> None:
        self.table.add(item_ids)

    def scores(self, ranker: SlowRanker, user_id: str, base: np.ndarray) -> np.ndarray:
        """Slow score of every table item (table order) for `user_id` with id-part vector `base`."""
        numeric, categories = self.table.arrays()
        key = (self.table.version, len(self.table), ranker, ranker.item_vectors)
        if self._key is None or key[:2] != self._key[:2] or any(a is not b for a, b in zip(key[2:], self._key[2:])):
            rows = ranker.items.lookup(self.table.ids.ids())
            self._vectors, self._biases = ranker.context_item_vectors(rows, numeric, categories)
            self._known = (rows >= 0) & (rows < len(ranker.item_vectors))
            self._key = key
        scores = self._vectors @ ranker.context_user_vector(base, self.provider.user(user_id)) + self._biases
        return below_known(scores, self._known)


class FeatureSlowPolicy(SlowPolicy):
    """`slow` with context: warm-up training on point-in-time frames, online context at scoring."""

    name = "slow+features"

    def __init__(self, ranker: SlowRanker, feed: FeatureFeed) -> None:
        super().__init__(ranker)
        self._attach(feed)

    def _attach(self, feed: FeatureFeed) -> None:
        self.feed = feed
        self.scorer = CatalogueScorer(feed.provider)

    def report(self) -> dict:
        """Feature figures for the replay's JSON (`FeatureFeed.report`)."""
        return self.feed.report()

    def learn_warmup(self, users, items, timestamps, event_types, values) -> None:
        self.feed.learn_many(users, items, timestamps, event_types, values)
        train_with_context(self.ranker, self.feed, users, items, timestamps)
        for u, i in zip(users, items):
            self._remember(u, i)
        self.scorer.add(self.ranker.items.ids())

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        super().learn_one(user_id, item_id, timestamp, event_type, value)
        self.feed.learn(user_id, item_id, timestamp, event_type, value)
        self.scorer.add([item_id])

    def recommend(self, user_id, k, exclude: Collection[str] = ()) -> list[str]:
        base = self.ranker.user_vector(user_id, list(self._recent.get(user_id, ())))
        scores = self.scorer.scores(self.ranker, user_id, base)
        ids = self.scorer.table.ids
        rows = top_k(scores, k, [r for r in map(ids.get, exclude) if r >= 0])
        return [ids.id_of(int(r)) for r in rows]


class FeatureFinetunePolicy(FeatureSlowPolicy, FinetunePolicy):
    """`finetune` with context: each SGD step's examples carry the context they were scored with."""

    name = "finetune+features"

    def __init__(self, ranker: SlowRanker, feed: FeatureFeed, batch: int = 32, lr: float = 0.05) -> None:
        FinetunePolicy.__init__(self, ranker, batch, lr)
        self._attach(feed)
        self._contexts: list[tuple[np.ndarray, np.ndarray, int]] = []
        self._table_version = -1

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        # the context this event was scored with: online, before the event itself is pushed
        numeric, categories = self.feed.provider.items([item_id])
        self._contexts.append((self.feed.provider.user(user_id), numeric[0], int(categories[0])))
        super().learn_one(user_id, item_id, timestamp, event_type, value)

    def _step(self) -> None:
        ranker = self.ranker
        examples = self._pending_examples()
        users, items, categories = (np.stack([c[0] for c in self._contexts]), np.stack([c[1] for c in self._contexts]),
                                    np.array([c[2] for c in self._contexts]))
        if self.scorer.table.version != self._table_version:   # negatives read the current catalogue
            numeric, cats = self.scorer.table.arrays()
            ranker.set_item_table(self.scorer.table.ids.ids(), numeric, cats)
            self._table_version = self.scorer.table.version
        ranker.sgd_step(examples.with_context(users, items, categories), self.lr)
        self._pending.clear()
        self._contexts.clear()


class FeatureFastSlowPolicy(Recommender):
    """`fast-slow-frozen` with context: a `FastSlow` reading online context (its ``context``) over a
    slow model trained with context."""

    name = "fast-slow-frozen+features"

    def __init__(self, feed: FeatureFeed, seed: int = 0) -> None:
        self.feed = feed
        self.seed = seed
        self.model: FastSlow | None = None

    def learn_warmup(self, users, items, timestamps, event_types, values) -> None:
        self.feed.learn_many(users, items, timestamps, event_types, values)
        ranker = SlowRanker(seed=self.seed, context=self.feed.spec.as_dict())
        train_with_context(ranker, self.feed, users, items, timestamps)
        self.model = FastSlow(ranker, seed=self.seed)
        self.model.context = self.feed.provider
        self.model.learn_warmup(users, items, timestamps, event_types, values)

    def report(self) -> dict:
        return self.feed.report()

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        self.model.learn_one(user_id, item_id, timestamp, event_type, value)
        self.feed.learn(user_id, item_id, timestamp, event_type, value)

    def recommend(self, user_id, k, exclude: Collection[str] = ()) -> list[str]:
        return self.model.recommend(user_id, k, exclude)


def make_feature_policy(name: str, feed: FeatureFeed, seed: int = 0) -> Recommender:
    """The ``name+features`` policy over `feed` (`name` one of slow, finetune, fast-slow-frozen, ewc)."""
    spec = feed.spec.as_dict()
    if name == "slow":
        return FeatureSlowPolicy(SlowRanker(seed=seed, context=spec), feed)
    if name == "finetune":
        return FeatureFinetunePolicy(SlowRanker(seed=seed, context=spec), feed)
    if name == "fast-slow-frozen":
        return FeatureFastSlowPolicy(feed, seed)
    if name == "ewc":
        from evaluation.features_ewc import feature_ewc

        return feature_ewc(feed, seed)
    raise ValueError(f"no +features variant of policy {name!r}")
