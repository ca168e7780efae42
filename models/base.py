"""What every recommender in fastslow offers: the per-event learn/recommend contract.

The prequential replay, the streaming worker and the HTTP API all talk to models through
this contract, so a policy evaluated offline is exactly the code that runs online.
"""

from __future__ import annotations

import copy
import inspect
from abc import ABC, abstractmethod
from collections.abc import Collection


class Recommender(ABC):
    """A model that learns one interaction at a time and ranks items for a user.

    Subclasses store their constructor arguments unchanged (so `clone` can rebuild them)
    and keep learned state in other attributes.
    """

    #: Name used in replay results and logs.
    name: str = "recommender"

    @abstractmethod
    def learn_one(self, user_id: str, item_id: str, timestamp: float,
                  event_type: str = "click", value: float = 1.0) -> None:
        """Learn from one interaction (`timestamp` in unix seconds)."""

    @abstractmethod
    def recommend(self, user_id: str, k: int, exclude: Collection[str] = ()) -> list[str]:
        """The `k` best items for `user_id` among the items learned so far, best first."""

    def learn_warmup(self, users, items, timestamps, event_types, values) -> None:
        """Learn a learn-only prefix of the stream (column arrays, time ordered).

        The default replays the prefix one event at a time; models with a batch training
        procedure (the slow ranker) override it.
        """
        for u, i, t, e, v in zip(users, items, timestamps, event_types, values):
            self.learn_one(u, i, float(t), e, float(v))

    def params(self) -> dict:
        """The constructor arguments, read back from the attributes of the same names."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def clone(self) -> "Recommender":
        """A fresh, untrained copy built from the same constructor arguments."""
        return type(self)(**copy.deepcopy(self.params()))
