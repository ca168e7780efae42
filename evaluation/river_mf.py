"""Peer `river-mf`: river's BiasedMF trained online the way a River user does implicit feedback.

Each interaction is learned as y=1, plus y=0 for `negatives` items drawn from the stream so
far (so popular items are drawn more often, as in the stream). Ranking uses river's own
prediction, predict_one = global mean + user bias + item bias + <user latent, item latent>,
evaluated for all items at once from a numpy mirror of river's item parameters that is
refreshed for exactly the items each learn step touched.
"""

from __future__ import annotations

import numpy as np
from river import optim, reco

from models.base import Recommender
from models.ranking import top_k
from models.vocab import Vocab


class RiverMF(Recommender):
    """`river.reco.BiasedMF` with sampled zero-labelled negatives.

    >>> mf = RiverMF(seed=1)
    >>> for n in range(30):
    ...     mf.learn_one(f"u{n % 3}", f"i{n % 5}", float(n))
    >>> sorted(mf.recommend("u0", 5)) == [f"i{j}" for j in range(5)]
    True
    """

    name = "river-mf"

    def __init__(self, n_factors: int = 20, lr: float = 0.05, l2: float = 0.001, negatives: int = 4,
                 seed: int = 0) -> None:
        self.n_factors = n_factors
        self.lr = lr
        self.l2 = l2
        self.negatives = negatives
        self.seed = seed
        self.model = reco.BiasedMF(
            n_factors=n_factors, bias_optimizer=optim.SGD(lr / 2), latent_optimizer=optim.SGD(lr),
            loss=optim.losses.Squared(), l2_bias=l2, l2_latent=l2,
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed), seed=seed)
        self._rng = np.random.default_rng(seed)
        self._items = Vocab()
        self._stream_items = np.zeros(1024, dtype=np.int64)
        self._n_events = 0
        self._latents = np.zeros((1024, n_factors))
        self._biases = np.zeros(1024)

    def _grow(self, row: int) -> None:
        if row >= len(self._biases):
            self._latents = np.concatenate([self._latents, np.zeros_like(self._latents)])
            self._biases = np.concatenate([self._biases, np.zeros_like(self._biases)])

    def _mirror(self, item_id: str, row: int) -> None:
        self._latents[row] = self.model.i_latents[item_id]
        self._biases[row] = self.model.i_biases[item_id]

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        row = self._items.add(item_id)
        self._grow(row)
        touched = {row: item_id}
        self.model.learn_one(user_id, item_id, 1.0)
        if self._n_events:
            drawn = self._stream_items[self._rng.integers(0, self._n_events, size=self.negatives)]
            for neg in drawn:
                neg_id = self._items.id_of(int(neg))
                self.model.learn_one(user_id, neg_id, 0.0)
                touched[int(neg)] = neg_id
        for r, i in touched.items():
            self._mirror(i, r)
        if self._n_events >= len(self._stream_items):
            self._stream_items = np.concatenate([self._stream_items, np.zeros_like(self._stream_items)])
        self._stream_items[self._n_events] = row
        self._n_events += 1

    def recommend(self, user_id, k, exclude=()) -> list[str]:
        n = len(self._items)
        model = self.model
        scores = (model.global_mean.get() + model.u_biases[user_id] + self._biases[:n]
                  + self._latents[:n] @ model.u_latents[user_id])
        rows = top_k(scores, k, [r for r in map(self._items.get, exclude) if r >= 0])
        return [self._items.id_of(int(r)) for r in rows]


def river_mf(seed: int = 0) -> RiverMF:
    """Factory used by `fastslow replay --policy river-mf`."""
    return RiverMF(seed=seed)
