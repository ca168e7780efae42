"""The model `fastslow worker` runs by default: `models.fastslow.FastSlow` over the champion.

The slow ranker is the version holding the ``champion`` alias in the MLflow registry
(`consolidation.registry.ModelRegistry`); the worker puts the fast path on top of it and learns
every event. Without a champion there is nothing to put the fast path on: `NoChampionModel`
says how to make one (``fastslow consolidate --events LOG`` trains and promotes the first).
`ChampionWatcher` keeps a running worker on the champion: a restored snapshot holding an
older slow model, and every later promotion, are swapped in.

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

    ``options`` go to `FastSlow` (its defaults are the product's). Raises `NoChampionModel`
    when no version holds the ``champion`` alias. The ranker is ``model.slow_model``.
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


def same_slow_model(a, b) -> bool:
    """Whether two slow rankers serve the same items with the same item vectors."""
    import numpy as np

    return a.items.ids() == b.items.ids() and np.array_equal(a.item_vectors, b.item_vectors)


class ChampionWatcher:
    """Keeps a worker's FastSlow on the registry's champion: after a restart and on promotions.

    `reconcile` (after `Worker.start`, which may have restored a snapshot holding an older
    slow model) and every poll swap a different champion in with
    ``model.use_ranker(ranker, keep_fast=0.0)`` under the worker's lock: the fast state is
    rebased, since the new slow model absorbed what it had learnt. A poll is one alias lookup
    (`ModelRegistry.load_if_changed`); a failed poll is logged and retried at the next one.

    Parameters
    ----------
    registry
        The `consolidation.registry.ModelRegistry` to watch.
    version, ranker
        The champion the worker's model was built on.
    worker
        A started `streaming.worker.Worker` whose model is a FastSlow.
    interval_s
        Seconds between polls.
    """

    def __init__(self, registry, version: int, ranker, worker, interval_s: float = 5.0) -> None:
        import threading

        self.registry, self.version, self.ranker = registry, version, ranker
        self.worker, self.interval_s = worker, interval_s
        self.swaps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="champion-watcher", daemon=True)

    def reconcile(self) -> bool:
        """Swap the champion in if the worker's model serves another slow model; True if swapped."""
        if same_slow_model(self.worker.model.slow_model, self.ranker):
            return False
        logger.info("the worker's snapshot holds another slow model than champion v%d: swapping it in",
                    self.version)
        self._swap(self.ranker)
        return True

    def poll(self) -> bool:
        """Swap in the registry's champion if it changed since the last poll; True if it did."""
        found = self.registry.load_if_changed(self.version)
        if found is None:
            return False
        previous, (self.version, self.ranker) = self.version, found
        self._swap(self.ranker)
        logger.info("champion v%d -> v%d swapped into worker %s", previous, self.version, self.worker.worker_id)
        return True

    def _swap(self, ranker) -> None:
        with self.worker.lock:
            self.worker.model.use_ranker(ranker, keep_fast=0.0)
        self.swaps += 1

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 -- a registry hiccup must not end hot reloads
                logger.warning("champion poll failed (retried in %.1f s): %r", self.interval_s, exc)

    def start(self) -> ChampionWatcher:
        """`reconcile`, then poll on a thread until `stop`."""
        self.reconcile()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
