"""The model `fastslow worker` runs by default: `models.fastslow.FastSlow` over the champion.

The slow ranker is the version holding the ``champion`` alias in the MLflow registry
(`consolidation.registry.ModelRegistry`); the worker puts the fast path on top of it and learns
every event. Without a champion there is nothing to put the fast path on: `NoChampionModel`
says how to make one (``fastslow consolidate --events LOG`` trains and promotes the first).

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

CHAMPION_MODEL = "champion"
"""The ``--model`` value naming the default: FastSlow over the registry's champion."""


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

    ``options`` go to `FastSlow` (its defaults are the product's). Raises `NoChampionModel`
    when no version holds the ``champion`` alias.
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
    return version, FastSlow(ranker=ranker, **options)
