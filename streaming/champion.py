"""The model `fastslow worker` runs by default: `models.fastslow.FastSlow` over the champion.

The slow ranker is the version holding the ``champion`` alias in the MLflow registry
(`consolidation.registry.ModelRegistry`); the worker puts the fast path on top of it and learns
every event. Without a champion there is nothing to put the fast path on: `NoChampionModel`
says how to make one (``fastslow consolidate --events LOG`` trains and promotes the first).
`reconcile` puts a restarted worker whose snapshot holds an older slow model on the champion;
`consolidation.reload.ChampionWatcher` then swaps in every later promotion.

Import-light: mlflow, torch and faiss are imported when a champion is loaded.

Examples
--------
>>> print(NoChampionModel("fastslow-ranker", "sqlite:////data/mlflow.db"))  # doctest: +NORMALIZE_WHITESPACE
no champion slow model 'fastslow-ranker' in sqlite:////data/mlflow.db yet: train the first one from an event
log with `fastslow consolidate --events LOG` (`fastslow synth events.parquet` writes a synthetic log), or run
a replay policy instead with `--model NAME` (e.g. `--model itemknn`)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from fastslow.errors import FastslowError

if TYPE_CHECKING:
    from models.fastslow import FastSlow

logger = logging.getLogger(__name__)

class NoChampionModel(FastslowError):
    """The worker was asked for the champion and the registry has none."""

    def __init__(self, model_name: str, tracking_uri: str) -> None:
        self.model_name, self.tracking_uri = model_name, tracking_uri
        self.hint = ("train the first one from an event log with `fastslow consolidate --events LOG` "
                     "(`fastslow synth events.parquet` writes a synthetic log), or run a replay policy "
                     "instead with `--model NAME` (e.g. `--model itemknn`)")
        super().__init__(f"no champion slow model {model_name!r} in {tracking_uri} yet: {self.hint}")


def champion_fastslow(tracking_uri: str, model_name: str, **options) -> tuple[int, FastSlow]:
    """``(version, FastSlow)``: a fresh fast path over the champion slow ranker.

    ``options`` go to `FastSlow` (its defaults are the product's; ``catalogue=True`` unless
    given: the champion's whole catalogue is a candidate from the first request). Raises
    `NoChampionModel` when no version holds the ``champion`` alias. The ranker is ``model.slow_model``.
    """
    from consolidation.registry import ModelRegistry, NoChampionError
    from models.fastslow import FastSlow

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        raise NoChampionModel(model_name, tracking_uri)  # and leave no empty database behind
    registry = ModelRegistry(tracking_uri, model_name)
    try:
        version, ranker = registry.load_champion()
    except NoChampionError:
        raise NoChampionModel(model_name, tracking_uri) from None
    logger.info("fast path over champion %s v%d (%d items, dim %d) from %s", model_name, version,
                len(ranker.items), ranker.dim, tracking_uri)
    return version, FastSlow(ranker=ranker, **{"catalogue": True, **options})


def same_slow_model(a, b) -> bool:
    """Whether two slow rankers serve the same items with the same item vectors."""
    import numpy as np

    return a.items.ids() == b.items.ids() and np.array_equal(a.item_vectors, b.item_vectors)


def reconcile(worker, version: int, ranker) -> bool:
    """After `Worker.start`: serve champion ``ranker`` if a restored snapshot holds another slow model.

    The snapshot was taken before a promotion, so its FastSlow is rebased onto the champion
    the worker was started with (``use_ranker(ranker, keep_fast=0.0)`` under the worker's lock,
    as `consolidation.reload.apply_to` does on a hot reload). Returns whether it swapped.
    """
    from consolidation.reload import KEEP_FAST

    if same_slow_model(worker.model.slow_model, ranker):
        return False
    logger.info("worker %s restored a snapshot holding another slow model than champion v%d: swapping it in",
                worker.worker_id, version)
    with worker.lock:
        worker.model.use_ranker(ranker, keep_fast=KEEP_FAST)
    return True
