"""Ablation policies built on the slow ranker alone: `slow` (frozen) and `finetune` (naive SGD).

Both keep each user's recent items, because the ranker's user tower reads them as input;
neither has a fast path. `finetune` also takes a plain SGD step every `batch` events with no
regularisation: the catastrophic-forgetting baseline.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from models.base import Recommender
from models.ranking import top_k
from models.slow import SlowRanker


class SlowPolicy(Recommender):
    """The slow ranker trained on the warm-up prefix, then frozen.

    >>> p = SlowPolicy(SlowRanker(dim=8, epochs=20))
    >>> events = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")] * 5
    >>> p.learn_warmup(*zip(*events), [0.0] * 20, ["click"] * 20, [1.0] * 20)
    >>> p.learn_one("c", "x", 1.0)
    >>> p.recommend("c", 1, exclude={"x"})
    ['y']
    """

    name = "slow"

    def __init__(self, ranker: SlowRanker) -> None:
        self.ranker = ranker
        self._recent: dict[str, deque[str]] = {}

    def _remember(self, user_id: str, item_id: str) -> None:
        self._recent.setdefault(user_id, deque(maxlen=self.ranker.history)).append(item_id)

    def learn_warmup(self, users, items, timestamps, event_types, values) -> None:
        self.ranker.fit(self.ranker.build_examples(users, items))
        for u, i in zip(users, items):
            self._remember(u, i)

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        self._remember(user_id, item_id)

    def recommend(self, user_id, k, exclude=()) -> list[str]:
        ranker = self.ranker
        vec = ranker.user_vector(user_id, list(self._recent.get(user_id, ())))
        scores = ranker.item_vectors @ vec + ranker.item_biases
        rows = top_k(scores, k, [r for r in map(ranker.items.get, exclude) if r >= 0])
        return [ranker.items.id_of(int(r)) for r in rows]


class FinetunePolicy(SlowPolicy):
    """The slow ranker updated by plain SGD every `batch` events (no regularisation).

    New users and items get fresh rows as they arrive.
    """

    name = "finetune"

    def __init__(self, ranker: SlowRanker, batch: int = 32, lr: float = 0.05) -> None:
        super().__init__(ranker)
        self.batch = batch
        self.lr = lr
        self._pending: list[tuple[str, str, list[str]]] = []

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        self._pending.append((user_id, item_id, list(self._recent.get(user_id, ()))))
        super().learn_one(user_id, item_id, timestamp, event_type, value)
        if len(self._pending) >= self.batch:
            self._step()

    def _pending_examples(self):
        """The pending events as one batch of examples, each with the user's history before it."""
        parts = [self.ranker.build_examples([u], [i], initial_history={u: hist}) for u, i, hist in self._pending]
        examples = parts[0]
        for part in parts[1:]:
            examples = examples.concat(part)
        return examples

    def _step(self) -> None:
        self.ranker.sgd_step(self._pending_examples(), self.lr)
        self._pending.clear()


def slow(seed: int = 0) -> SlowPolicy:
    """Factory used by `fastslow replay --policy slow`."""
    return SlowPolicy(SlowRanker(seed=seed))


def finetune(seed: int = 0) -> FinetunePolicy:
    """Factory used by `fastslow replay --policy finetune`."""
    return FinetunePolicy(SlowRanker(seed=seed))
