"""The policies `fastslow replay --policy NAME` knows, built by name.

Imports are lazy: naming `popularity` does not import torch.
"""

from __future__ import annotations

import importlib

from fastslow.errors import ConfigError
from models.base import Recommender

#: name -> "module:factory"; every factory takes `seed` and returns a fresh Recommender.
POLICIES: dict[str, str] = {
    "popularity": "evaluation.peers:popularity",
    "itemknn": "evaluation.peers:itemknn",
    "recency-knn": "evaluation.peers:recency_knn",
    "sr": "evaluation.peers:sequential_rules",
    "river-mf": "evaluation.river_mf:river_mf",
    "implicit-als": "evaluation.als:implicit_als",
    "slow": "evaluation.ablations:slow",
    "finetune": "evaluation.ablations:finetune",
    "ewc": "consolidation.policy:ewc",
    "fast-only": "models.fastslow:fast_only",
    "fast-slow-frozen": "models.fastslow:fast_slow_frozen",
    "fast-slow": "consolidation.policy:fast_slow",
}

#: The peers: what practitioners use today, the bar for the product (the JSON's ``best_peer``).
PEERS = ("popularity", "itemknn", "recency-knn", "sr", "river-mf", "implicit-als")


def make_policy(name: str, seed: int = 0) -> Recommender:
    """A fresh policy by name, raising ConfigError listing the known names otherwise.

    >>> make_policy("popularity").name
    'popularity'
    >>> make_policy("nope")
    Traceback (most recent call last):
    ...
    fastslow.errors.ConfigError: setting --policy='nope' is invalid: expected one of: ewc, fast-only, fast-slow, fast-slow-frozen, finetune, implicit-als, itemknn, popularity, recency-knn, river-mf, slow, sr
    """
    target = POLICIES.get(name)
    if target is None:
        raise ConfigError("--policy", name, "one of: " + ", ".join(sorted(POLICIES)))
    module, _, factory = target.partition(":")
    return getattr(importlib.import_module(module), factory)(seed=seed)
