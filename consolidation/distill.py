"""Distillation: turn what the fast path learned into training examples for the slow model.

Between consolidations a user's new tastes live only in the fast path (fast vector, recent
items, co-occurrence and memory signals). The fast state decays and is rebased when a new
slow model arrives, so anything not written into the slow model is eventually lost. At each
consolidation `distill_examples` asks the `models.fastslow.FastSlow` for each recently active
user's fast-path top-k (`FastSlow.fast_preferences`) and makes one example per preferred item:

- input: the user's id and the user's recent items as the fast state holds them
  (`FastSlow.history`, the same history the slow user tower reads at serving time); every
  example of a user gets this same history (the preferred items are alternatives, not a
  sequence, so they do not feed each other's history);
- target: the preferred item;
- weight (the convention): the user's positive fast scores, normalised to sum to ``weight``
  per user. A user's fast-path view therefore counts as much as ``weight`` observed events
  (replay examples weigh 1 each), spread over the top-k in proportion to how strongly the
  fast path prefers each item; items with a fast score <= 0 get no example. The per-user sum
  keeps ``k`` from changing how loudly one user speaks.

Each example comes twice: ``1 - id_share`` of its weight as above (the user's history as
input: what the slow model reads while the fast state lives), ``id_share`` on a copy with an
*empty* history (the user id alone: what the slow model has once the fast state has expired
or been cleared, the "Captain" case). With the history as input the pooled recent items
already explain the new taste, so those examples barely move the user's own id row; the
id-only copies are what writes the taste into it. Default 0.5: on the first 100k events of
the 200k synthetic stream the consolidating replay policy scored NDCG@10 0.1028 with 0.5
against 0.1025 with 0 (3 of 4 consolidations promoted instead of 1).

Examples are built with the challenger clone's own `SlowRanker.build_examples`, so users and
items the slow model never saw (new arrivals the fast path already recommends) are
registered in the clone and its tables grow; the serving champion is never touched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from contextlib import nullcontext

import numpy as np

from consolidation.train import Distill
from fastslow.errors import ConfigError
from models.fastslow import FastSlow
from models.slow import Examples, SlowRanker

logger = logging.getLogger(__name__)

#: Default total distillation weight per user (in units of one observed event).
DEFAULT_WEIGHT = 2.0
#: Default share of the distilled weight given to id-only copies (empty history).
DEFAULT_ID_SHARE = 0.5


def _empty(ranker: SlowRanker) -> Examples:
    return Examples(np.zeros(0, np.int64), np.zeros((0, ranker.history), np.int64), np.zeros(0, np.int64),
                    np.zeros(0, np.float32))


def preference_weights(scores: np.ndarray, weight: float) -> np.ndarray:
    """Per-item weights from one user's fast scores: positive parts scaled to sum to ``weight``.

    >>> preference_weights(np.array([3.0, 1.0, -2.0]), 2.0).tolist()
    [1.5, 0.5, 0.0]
    >>> preference_weights(np.array([0.0, -1.0]), 2.0).tolist()
    [0.0, 0.0]
    """
    positive = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    total = positive.sum()
    return positive * (weight / total) if total > 0 else np.zeros(len(positive))


def distill_examples(model: FastSlow, ranker: SlowRanker, since: float, k: int = 10,
                     weight: float = DEFAULT_WEIGHT, users: Collection[str] | None = None,
                     lock: threading.Lock | None = None, id_share: float = DEFAULT_ID_SHARE) -> Examples:
    """Examples for ``ranker`` (the challenger clone) from the fast path's per-user preferences.

    Parameters
    ----------
    model
        The serving FastSlow whose fast state to distil (read, not changed).
    ranker
        The challenger being trained; new user and item ids are registered in it.
    since
        Stream time (unix seconds): users whose fast state was updated at or after it
        (ignored when ``users`` is given).
    k
        Preferred items per user.
    weight
        Total weight of one user's examples (module docstring for the convention).
    users
        Distil only these users (e.g. the most active since the last consolidation).
    lock
        Held while reading ``model`` (the worker's or serving's lock; FastSlow is not thread-safe).
    id_share
        Share of each example's weight moved to a copy with an empty history (module docstring).

    Examples
    --------
    >>> ranker = SlowRanker(dim=8, epochs=20, seed=0)
    >>> pairs = [(u + str(n), c + str(j)) for n in range(3) for u, c in (("a", "x"), ("b", "y")) for j in range(4)]
    >>> _ = ranker.fit(ranker.build_examples(*zip(*pairs * 3)))
    >>> model = FastSlow(ranker=ranker)
    >>> for t, (u, i) in enumerate(pairs):
    ...     model.learn_one(u, i, float(t))
    >>> for u, i in [("b0", "new"), ("a1", "new"), ("a1", "x2")]:   # "new": unknown to the slow model
    ...     model.learn_one(u, i, 100.0)
    >>> clone = ranker.clone()
    >>> ex = distill_examples(model, clone, since=100.0, k=3, users=["b0"], id_share=0.0)
    >>> [clone.items.id_of(int(t)) for t in ex.targets], [round(float(w), 2) for w in ex.weights]
    (['x2', 'x0', 'x1'], [1.35, 0.45, 0.21])
    >>> [clone.items.id_of(int(r) - 1) for r in ex.history[2] if r]   # b0's history, most recent first
    ['new', 'y3', 'y2', 'y1', 'y0']
    >>> "new" in clone.items, "new" in ranker.items
    (True, False)
    """
    if weight < 0 or k < 1 or not 0.0 <= id_share <= 1.0:
        raise ConfigError("distillation k/weight/id_share", (k, weight, id_share),
                          "k >= 1, a weight >= 0 and an id share between 0 and 1")
    with lock if lock is not None else nullcontext():
        preferences = model.fast_preferences(since, k, users)
        histories = {user: model.history(user) for user in preferences}
    user_col, item_col, weight_col = [], [], []
    for user, ranked in preferences.items():
        weights = preference_weights(np.array([score for _, score in ranked]), weight)
        for (item, _), w in zip(ranked, weights.tolist()):
            if w > 0:
                user_col.append(user)
                item_col.append(item)
                weight_col.append(w)
    if not item_col:
        return _empty(ranker)
    distilled = {u: histories[u] for u in dict.fromkeys(user_col)}
    examples = ranker.build_examples(user_col, item_col, initial_history=distilled, weights=weight_col)
    # build_examples treats the rows as a sequence (each target joins the next one's history);
    # give every example its user's first row, which is exactly the fast state's history
    starts = np.flatnonzero(np.r_[True, np.asarray(user_col[1:]) != np.asarray(user_col[:-1])])
    lengths = np.diff(np.r_[starts, len(user_col)])
    examples.history[:] = np.repeat(examples.history[starts], lengths, axis=0)
    if id_share > 0:
        id_only = Examples(examples.users, np.zeros_like(examples.history), examples.targets,
                           examples.weights * np.float32(id_share))
        examples = Examples(examples.users, examples.history, examples.targets,
                            examples.weights * np.float32(1.0 - id_share)).concat(id_only)
    logger.info("distilled %d examples for %d users (k=%d, weight %.3g per user)", len(examples),
                len(distilled), k, weight)
    return examples


def distiller(model: FastSlow, since: float, k: int = 10, weight: float = DEFAULT_WEIGHT,
              users: Collection[str] | None = None, lock: threading.Lock | None = None,
              id_share: float = DEFAULT_ID_SHARE) -> Distill:
    """The ``distill=`` callback of `consolidation.job.consolidate` / `run_consolidation` for ``model``.

    >>> ranker = SlowRanker(dim=8, epochs=1)
    >>> _ = ranker.fit(ranker.build_examples(["a", "a", "b"], ["x", "y", "x"]))
    >>> callback = distiller(FastSlow(ranker=ranker), since=0.0)
    >>> len(callback(ranker.clone()))   # no fast state yet: nothing to distil
    0
    """
    return lambda ranker: distill_examples(model, ranker, since, k, weight, users, lock, id_share)
