"""Peer `implicit-als`: the `implicit` library's ALS, refitted periodically on everything so far.

This is the "retrain every so often" practice: every `refit_every` events the model is refit
on the whole user-item matrix seen so far; between refits, a user's factors are recomputed
from that user's current items at each request (`recalculate_user`), so users who arrived
after the last refit still get personal recommendations. Items that arrived after the last
refit are unknown to the model until the next one. Ties between scores (every score of a user
without items is 0) go to the item with more interactions so far, then to the item seen first,
as for the other peers: a user's first basket gets the popular items, not the first ones seen.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from models.base import Recommender
from models.ranking import lex_top_k
from models.vocab import Vocab

logger = logging.getLogger(__name__)


class ImplicitALS(Recommender):
    """Periodically refitted `implicit.cpu.als.AlternatingLeastSquares`.

    >>> als = ImplicitALS(factors=4, refit_every=20, iterations=3)
    >>> for n in range(40):
    ...     als.learn_one(f"u{n % 4}", f"i{(n * 7) % 6}", float(n))
    >>> len(als.recommend("u1", 3)), als.refits
    (3, 2)
    """

    name = "implicit-als"

    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 2.0,
                 iterations: int = 15, refit_every: int = 10_000, seed: int = 0) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.refit_every = refit_every
        self.seed = seed
        self._users = Vocab()
        self._items = Vocab()
        self._rows: list[int] = []
        self._cols: list[int] = []
        self._user_items: dict[int, dict[int, float]] = {}
        self._counts = np.zeros(1024)
        self._model = None
        self._n_fitted_items = 0
        self._since_refit = 0
        self.refits = 0

    def _learn(self, user_id: str, item_id: str) -> None:
        u, i = self._users.add(user_id), self._items.add(item_id)
        if i >= len(self._counts):
            self._counts = np.concatenate([self._counts, np.zeros(len(self._counts))])
        self._counts[i] += 1
        self._rows.append(u)
        self._cols.append(i)
        items = self._user_items.setdefault(u, {})
        items[i] = items.get(i, 0.0) + 1.0

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        self._learn(user_id, item_id)
        self._since_refit += 1
        if self._since_refit >= self.refit_every:
            self.refit()

    def learn_warmup(self, users, items, timestamps, event_types, values) -> None:
        for u, i in zip(users, items):
            self._learn(u, i)
        self.refit()

    def refit(self) -> None:
        """Fit ALS from scratch on every interaction learned so far."""
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        matrix = sp.csr_matrix((np.ones(len(self._rows), dtype=np.float32), (self._rows, self._cols)),
                               shape=(len(self._users), len(self._items)))
        matrix.sum_duplicates()
        # implicit parallelises itself; a threaded BLAS underneath it only thrashes (its advice)
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization,
                                            alpha=self.alpha, iterations=self.iterations,
                                            random_state=self.seed, num_threads=0)
            model.fit(matrix, show_progress=False)
        self._model, self._n_fitted_items = model, len(self._items)
        self._since_refit = 0
        self.refits += 1

    def recommend(self, user_id, k, exclude=()) -> list[str]:
        if self._model is None:
            return []
        n = self._n_fitted_items
        mine = self._user_items.get(self._users.get(user_id), {})
        cols = [c for c in mine if c < n]
        row = sp.csr_matrix((np.array([mine[c] for c in cols], dtype=np.float32),
                             (np.zeros(len(cols), dtype=np.int64), cols)), shape=(1, n))
        user_vec = self._model.recalculate_user(0, row)
        scores = self._model.item_factors @ np.asarray(user_vec).ravel()
        rows = lex_top_k(scores, self._counts[:n], k, [r for r in map(self._items.get, exclude) if r >= 0])
        return [self._items.id_of(int(r)) for r in rows]


def implicit_als(seed: int = 0) -> ImplicitALS:
    """Factory used by `fastslow replay --policy implicit-als`."""
    return ImplicitALS(seed=seed)
