"""Hot reload: follow the registry's ``champion`` alias and swap the serving slow model in place.

A `ChampionWatcher` runs one daemon thread that polls `ModelRegistry.champion_version` (one
indexed query) every ``interval_s`` seconds and, when the alias points at a version it has
not applied yet, loads that version (`ModelRegistry.load_if_changed`) and calls
``apply(version, ranker)``. Loading happens outside any lock; ``apply`` is where the caller
swaps the model atomically, between requests, under its own lock (`apply_to` builds that
function for a `models.fastslow.FastSlow`).

Failures (registry unreachable, a half-written version, an ``apply`` that raises) never stop
the thread and never pass silently: each is logged with the model, URI and version involved,
counted in `ChampionWatcher.errors`, kept in `ChampionWatcher.last_error`, and the poll is
retried on the next tick. A version is marked applied only after ``apply`` returned, so a
failed swap is retried, and ``apply`` runs once per successfully applied version.

Why ``keep_fast=0.0`` on a swap: a consolidated champion was trained on the replay sample
*and* on the fast path's own preferences (`consolidation.distill`), so the slow user vector
now carries what each user's fast vector was adding. Keeping the fast vectors would add that
shift a second time (over-weighting the last few days until the half-life decays it), and the
vectors were fitted as residuals against the previous model's user vectors, which moved.
Starting them from zero costs little: the user's recent items (which feed the slow user
tower and the co-occurrence, transition and memory signals) stay, and the next event starts
a fresh residual. Measured with `consolidation.policy.FastSlowPolicy` on the first 100k
events of the 200k synthetic stream (same consolidations promoted up to the point they
differ): NDCG@10 0.10248 with ``keep_fast=0.0`` against 0.10234 with 1.0 -- a small
difference, in the direction the argument predicts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from consolidation.registry import ModelRegistry
from fastslow.errors import ConfigError
from models.slow import SlowRanker

logger = logging.getLogger(__name__)

#: What a watcher calls with each newly promoted champion.
Apply = Callable[[int, SlowRanker], None]

#: Share of each fast vector kept when a consolidated champion replaces the slow model.
KEEP_FAST = 0.0


def apply_to(model, lock: threading.Lock | threading.RLock, keep_fast: float = KEEP_FAST) -> Apply:
    """An ``apply`` that swaps ``model``'s slow ranker under ``lock`` (the worker's or serving's).

    ``model`` is a `models.fastslow.FastSlow`; ``keep_fast`` rebases its fast vectors (module
    docstring for why 0.0).
    """
    def apply(version: int, ranker: SlowRanker) -> None:
        with lock:
            model.use_ranker(ranker, keep_fast=keep_fast)
        logger.info("serving champion v%d (fast vectors scaled by %g)", version, keep_fast)

    return apply


class ChampionWatcher:
    """A background thread applying every new champion of ``registry`` (module docstring).

    Parameters
    ----------
    registry
        Where the ``champion`` alias lives.
    apply
        Called with ``(version, ranker)`` for each new champion, from the watcher's thread.
    interval_s
        Seconds between polls.
    current
        Version already being served (not loaded again); None loads the champion on the first poll.
    device
        torch device the loaded rankers train on.

    Examples
    --------
    >>> registry = ModelRegistry("sqlite:////tmp/fastslow-doc/mlflow.db")   # nothing is opened yet
    >>> watcher = ChampionWatcher(registry, lambda version, ranker: None, interval_s=5.0)
    >>> watcher.running, watcher.version, watcher.errors
    (False, None, 0)
    >>> ChampionWatcher(registry, lambda version, ranker: None, interval_s=0)
    Traceback (most recent call last):
    ...
    fastslow.errors.ConfigError: setting champion watch interval=0 is invalid: expected a number of seconds > 0
    """

    def __init__(self, registry: ModelRegistry, apply: Apply, interval_s: float = 2.0, *,
                 current: int | None = None, device: str = "cpu") -> None:
        if interval_s <= 0:
            raise ConfigError("champion watch interval", interval_s, "a number of seconds > 0")
        self.registry = registry
        self.apply = apply
        self.interval_s = interval_s
        self.device = device
        self.version = current
        """The champion version applied last (or given as ``current``)."""
        self.applied = 0
        """Versions applied by this watcher."""
        self.errors = 0
        """Failed polls (load or apply) since start."""
        self.last_error: BaseException | None = None
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> int | None:
        """Check the alias once; load and apply a new champion. Returns the version applied, or None.

        Errors propagate (the thread's loop counts and logs them).
        """
        found = self.registry.load_if_changed(self.version, self.device)
        if found is None:
            return None
        version, ranker = found
        started = time.perf_counter()
        self.apply(version, ranker)
        previous, self.version = self.version, version
        self.applied += 1
        logger.info("model %s: hot-reloaded champion v%s -> v%d (apply %.0f ms)", self.registry.model_name,
                    previous, version, 1000 * (time.perf_counter() - started))
        return version

    def _tick(self) -> None:
        try:
            self.poll()
        except Exception as exc:  # noqa: BLE001 - any failure is counted, logged and retried next tick
            self.errors += 1
            self.last_error = exc
            log = logger.warning if self._failing else logger.exception
            log("model %s @ %s: champion reload failed (serving v%s, error %d, retrying in %gs): %s",
                self.registry.model_name, self.registry.tracking_uri, self.version, self.errors, self.interval_s, exc)
            self._failing = True
            return
        if self._failing:
            logger.info("model %s: champion reload works again after %d errors", self.registry.model_name,
                        self.errors)
            self._failing = False

    def _run(self) -> None:
        while True:
            self._tick()
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> None:
        """Start polling (the first poll runs at once) on a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"champion-watcher-{self.registry.model_name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to stop and wait for it (a poll in progress finishes first)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> "ChampionWatcher":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
