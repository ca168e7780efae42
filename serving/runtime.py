"""Everything one serving process holds, started and stopped together: `Runtime`.

- **The model**: a `models.fastslow.FastSlow` over the registry's champion slow ranker
  (`Runtime.from_settings`), or any FastSlow handed in (tests, benchmarks).
- **An in-process worker** (`streaming.worker.Worker`, by default): it consumes the
  interactions topic and updates the *same* model object the API scores with, so an event
  changes the next recommendation within milliseconds. Every model access holds
  `Worker.lock`, the lock the worker holds while learning. The worker restores its snapshot
  at start, which may replace the model object: `Runtime.model` always answers the current one.
- **A Kafka producer** for ``POST /events`` (keyed by user, like `streaming.producer`).
- **"Popular right now" over the whole topic** (`streaming.popularity.TopicPopularity`, with
  a broker): the worker learns only its partitions, but the trending items and the popularity
  signal the model ranks with count every partition's events, so every serving process shows
  an unknown user the same "trending now", whichever partitions it owns.
- **A champion watcher** (`consolidation.reload.ChampionWatcher`): every ``poll_interval_s``
  it asks the registry for the champion's version (one cheap query) and after a promotion or
  rollback loads the new ranker (outside the lock) and swaps it in with
  ``model.use_ranker(new, keep_fast=0.0)`` under the lock, between two requests. A worker
  snapshot restored at start that holds another slow model is rebased the same way.
- **Deleted users** (`forget_user`): their fast state and memory entries (also out of the
  worker's partition user lists and, from its next step on, its snapshot files), their online
  features, and a tombstone in ``<data_dir>/deleted_users.txt`` that consolidation reads
  (`serving.deletion.DeletedUsers`). Tombstoned ids stay deleted: events for them are
  refused at intake, and any the worker still applies (produced before the deletion, or
  re-read after a restart) are forgotten again right after their batch.

`start` / `stop` (or ``with``) own every thread and client; `stop` joins them all, also
when `start` failed half-way.

Examples
--------
>>> import tempfile
>>> from models.fastslow import FastSlow
>>> with Runtime(FastSlow(), data_dir=tempfile.mkdtemp()) as runtime:   # no broker: scoring only
...     runtime.model.learn_one("u1", "apple", 1714564800.0)
...     runtime.model.learn_one("u2", "apple", 1714564801.0)
...     runtime.model.learn_one("u2", "pear", 1714564802.0)
...     [item["item_id"] for item in runtime.recommend("u1", k=2)["items"]]
['pear']
>>> runtime.readiness()
['no Kafka broker configured (events cannot be accepted)']
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastslow.errors import FastslowError
from serving.deletion import FILE_NAME as DELETED_USERS_FILE
from serving.deletion import DeletedUsers, model_footprint
from serving.health import BrokerProbe
from serving.metrics import ServingMetrics
from streaming.kafka import TOPIC_DLQ, TOPIC_INTERACTIONS, make_producer
from streaming.partitioning import user_key

if TYPE_CHECKING:
    from consolidation.registry import ModelRegistry
    from fastslow.settings import Settings
    from streaming.events import Interaction
    from streaming.worker import Worker

logger = logging.getLogger(__name__)

DEFAULT_WORKER_ID = "serve-0"
"""Worker id of the in-process worker (distinct from `fastslow worker`'s ``worker-0``)."""
ACK_TIMEOUT_S = 10.0
"""Default seconds ``POST /events`` waits for Kafka (metadata, then acknowledgements)."""


class ServingError(FastslowError):
    """The serving process cannot do what was asked: what, why, and what to do.

    >>> str(ServingError("events", "no Kafka broker configured", "start one with `fastslow broker`"))
    'events: no Kafka broker configured (start one with `fastslow broker`)'
    """

    def __init__(self, what: str, reason: str, hint: str = "") -> None:
        self.what, self.reason, self.hint = what, reason, hint
        super().__init__(f"{what}: {reason}" + (f" ({hint})" if hint else ""))


class Runtime:
    """The model, worker, producer and champion watcher of one serving process.

    Parameters
    ----------
    model
        A `models.fastslow.FastSlow` (``explain``, ``history``, ``use_ranker``, ``forget_users``).
    bootstrap
        Kafka bootstrap servers; None serves without a broker (no ``POST /events``, no worker).
    consume
        Run the in-process worker (needs ``bootstrap``).
    topic, dlq_topic, group_id, worker_id
        Where events go and come from, and the worker's group and stable id.
    data_dir
        Worker archive and snapshots, and ``deleted_users.txt``.
    registry, champion_version
        The model registry to watch, and the version ``model`` serves now (None: not from it).
    features
        A `features.store.FeatureStoreClient` whose online rows a deletion removes (None: none).
    poll_interval_s
        Seconds between champion polls.
    ack_timeout_s
        How long producing an event may wait for Kafka before ``POST /events`` answers 503.
    worker_options
        Extra `streaming.worker.Worker` keyword arguments.
    """

    def __init__(self, model: Any, *, bootstrap: str | None = None, consume: bool = True,
                 topic: str = TOPIC_INTERACTIONS, dlq_topic: str = TOPIC_DLQ, group_id: str | None = None,
                 worker_id: str = DEFAULT_WORKER_ID, data_dir: str | Path = ".fastslow",
                 registry: ModelRegistry | None = None, champion_version: int | None = None,
                 features: Any = None, poll_interval_s: float = 5.0, ack_timeout_s: float = ACK_TIMEOUT_S,
                 worker_options: dict[str, Any] | None = None) -> None:
        self.bootstrap, self.consume = bootstrap, consume and bootstrap is not None
        self.topic, self.dlq_topic, self.group_id, self.worker_id = topic, dlq_topic, group_id, worker_id
        self.data_dir = Path(data_dir)
        self.registry, self.champion_version = registry, champion_version
        self.features, self.poll_interval_s, self.ack_timeout_s = features, poll_interval_s, ack_timeout_s
        self.worker_options = dict(worker_options or {})
        self.metrics = ServingMetrics()
        self.metrics.champion_version.set(champion_version or 0)
        self.metrics.watch(lambda: {"worker": self.worker.stats if self.worker is not None else None,
                                    "features": self.features, "watcher": self.watcher})
        self.worker: Worker | None = None
        self.worker_error: BaseException | None = None
        self.watcher = None
        """The `consolidation.reload.ChampionWatcher` while running with a registry."""
        self._model = model
        self._own_lock = threading.RLock()
        self._feature_lock = threading.Lock()
        self._producer = None
        self._threads: list[threading.Thread] = []
        self.deleted = DeletedUsers(self.data_dir / DELETED_USERS_FILE)
        self._broker = BrokerProbe(bootstrap) if bootstrap is not None else None
        self.pusher = None
        """The `features.pusher.FeaturePusher` the worker's batches go through (with features)."""
        self.popularity = None
        """The `streaming.popularity.TopicPopularity` the model reads while running with a broker."""
        self._read_context(model)

    # -- building from settings ------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings, *, bootstrap: str | None, consume: bool = True,
                      worker_id: str = DEFAULT_WORKER_ID) -> Runtime:
        """A runtime over the registry's champion, the data dir's feature repo (if applied).

        Raises `ServingError` when the registry has no champion yet, saying how to make one.
        """
        from consolidation.registry import ModelRegistry, NoChampionError, default_tracking_uri
        from models.fastslow import FastSlow
        from streaming.ratelimit import rate_limit_of

        uri = settings.mlflow_tracking_uri or default_tracking_uri(settings.data_dir)
        registry = ModelRegistry(uri, settings.model_name)
        try:
            version, ranker = registry.load_champion()
        except NoChampionError:
            raise ServingError("model", f"no champion version of {settings.model_name!r} in {uri}",
                               "train and promote the first one with `fastslow consolidate --events LOG` "
                               "(or run `fastslow demo`), then start `fastslow serve` again") from None
        logger.info("serving champion v%d of %s (%d items)", version, settings.model_name, len(ranker.items))
        return cls(FastSlow(ranker=ranker, catalogue=True), bootstrap=bootstrap, consume=consume, worker_id=worker_id,
                   data_dir=settings.data_dir, registry=registry, champion_version=version,
                   features=_feature_client(settings), poll_interval_s=settings.champion_poll_s,
                   worker_options={"rate_limit": rate_limit_of(settings.rate_limit_per_s, settings.rate_limit_burst)})

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The model serving now (the worker's, once it restored its snapshot)."""
        return self.worker.model if self.worker is not None else self._model

    @property
    def lock(self) -> threading.RLock:
        """Held around every read or change of the model (the worker's lock when it runs)."""
        return self.worker.lock if self.worker is not None else self._own_lock

    def start(self) -> Runtime:
        """Connect the producer, start the worker and the champion watcher."""
        try:
            if self.bootstrap is not None:
                self._producer = make_producer(self.bootstrap, **_producer_timeouts(self.ack_timeout_s))
                self._start_popularity()
            if self.consume:
                if self.features is not None:
                    from features.pusher import FeaturePusher
                    from features.store import FeatureStoreClient

                    # its own client, so a push never holds up a lookup
                    self.pusher = FeaturePusher(FeatureStoreClient(self.features.repo_dir))
                self._start_worker()
            if self.registry is not None:
                from consolidation.reload import ChampionWatcher

                self.watcher = ChampionWatcher(self.registry, self._apply_champion, self.poll_interval_s,
                                               current=self.champion_version)
                self.watcher.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the watcher and the worker (which commits and snapshots), close the producer."""
        if self.worker is not None:
            self.worker.stop()
        try:
            popularity, self.popularity = self.popularity, None
            if popularity is not None:
                popularity.stop()
            if self.watcher is not None:
                self.watcher.stop()
            for thread in self._threads:
                thread.join()
        finally:
            self._threads = []
            pusher, self.pusher = self.pusher, None
            if pusher is not None:
                try:
                    pusher.close()
                except Exception:  # noqa: BLE001 - logged by the pusher; shutting down regardless
                    logger.error("the last feature pushes failed; online features may lag the fast state")
            producer, self._producer = self._producer, None
            if producer is not None:  # unacknowledged events expire within ack_timeout_s (their POSTs got 503)
                producer.close(timeout=2 * self.ack_timeout_s)

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _start_popularity(self) -> None:
        """Read "popular right now" from every partition of the topic, for the model to rank with."""
        from streaming.popularity import TopicPopularity

        half_life = getattr(self._model, "popularity_half_life", None)
        if half_life is None:   # a model without the notion
            return
        self.popularity = TopicPopularity(self.bootstrap, self.topic, half_life=half_life).start()
        with self.lock:
            self._model.popularity = self.popularity

    def _start_worker(self) -> None:
        from streaming.worker import DEFAULT_GROUP, Worker

        worker = Worker(self._model, self.bootstrap, topic=self.topic, dlq_topic=self.dlq_topic,
                        group_id=self.group_id or DEFAULT_GROUP, data_dir=self.data_dir, worker_id=self.worker_id,
                        on_batch=self._after_batch, **self.worker_options)
        worker.start()  # may restore a snapshot: worker.model is what serves from now on
        try:
            if worker.model is not self._model:
                self._reconcile_restored(worker)
                self._read_context(worker.model)
                self._keep_catalogue(worker)
                if self.popularity is not None:
                    worker.model.popularity = self.popularity   # snapshots do not keep the connection
            worker.forget_users(list(self.deleted), deleted=True)
        except BaseException:
            worker.close(snapshot=False)
            raise
        self.worker = worker
        self._spawn("worker", self._run_worker)

    def _run_worker(self) -> None:
        worker, clean = self.worker, False
        one_faiss_thread()
        try:
            worker.run()
            clean = True
        except BaseException as exc:  # the API keeps answering; /readyz reports it
            self.worker_error = exc
            logger.exception("in-process worker %s stopped", worker.worker_id)
        finally:
            worker.close(snapshot=clean)

    def _reconcile_restored(self, worker: Worker) -> None:
        """The worker restored a snapshot: serve our slow model if the snapshot's differs from it.

        A different one means a promotion happened since the snapshot, so the fast state is
        rebased as the watcher would have done (``keep_fast=0.0``).
        """
        from consolidation.reload import KEEP_FAST
        from streaming.champion import same_slow_model

        if same_slow_model(worker.model.slow_model, self._model.slow_model):
            return
        logger.info("worker snapshot holds another slow model than champion v%s: swapping it in",
                    self.champion_version)
        with worker.lock:
            worker.model.use_ranker(self._model.slow_model, keep_fast=KEEP_FAST)

    def _keep_catalogue(self, worker: Worker) -> None:
        """A restored model ranks over the whole catalogue when the one it replaced did (a
        snapshot written before `FastSlow` had the option would not)."""
        if getattr(self._model, "catalogue", False) and not getattr(worker.model, "catalogue", False):
            with worker.lock:
                worker.model.catalogue = True
                worker.model.register_catalogue()

    def _after_batch(self, report) -> None:
        """Worker thread, after each batch: freshness, deleted users applied again forgotten, the
        batch's events pushed to the feature store (deleted users' left out)."""
        latency_ms = self.worker.stats.last_apply_latency_ms
        if latency_ms is not None:
            self.metrics.freshness.observe(max(latency_ms, 0.0) / 1000)
        again = self.deleted.among(report.users)
        if again:
            self.worker.forget_users(sorted(again), deleted=True)
            logger.info("forgot %d deleted users again after their events were applied", len(again))
        if self.pusher is not None and report.events is not None:
            events = report.events
            if again:
                import pyarrow as pa
                import pyarrow.compute as pc

                events = events.filter(pc.invert(pc.is_in(events.column("user_id"), pa.array(sorted(again)))))
            self.pusher.push(events)

    def _read_context(self, model: Any) -> None:
        """Let ``model`` score with online context when its slow model was trained with it."""
        if not hasattr(model, "context"):
            return
        ranker = model.slow_model
        if self.features is None or not ranker.uses_context:
            model.context = None
            return
        from features.context import FeatureContext

        current = model.context
        if isinstance(current, FeatureContext) and current.client is self.features:
            # same store: keep the object (and the item vectors the model computed from what it
            # read) when the new slow model reads the same spec; `with_spec` returns self then
            model.context = current.with_spec(ranker.context)
        else:
            model.context = FeatureContext(self.features, ranker.context)

    # -- the champion watcher --------------------------------------------------------------

    def _apply_champion(self, version: int, ranker) -> None:
        """The watcher's ``apply``: swap ``ranker`` in between two requests, record its version."""
        from consolidation.reload import KEEP_FAST

        with self.lock:
            self.model.use_ranker(ranker, keep_fast=KEEP_FAST)
            self._read_context(self.model)
            self.champion_version = version
        self.metrics.champion_version.set(version)

    # -- requests --------------------------------------------------------------------------

    def recommend(self, user_id: str, k: int = 10, exclude_seen: bool = True) -> dict[str, Any]:
        """The top ``k`` for ``user_id`` with scores and reasons (the ``/recommend`` body)."""
        started = time.perf_counter()
        one_faiss_thread()
        with self.lock:
            model = self.model
            seen = model.history(user_id)
            recs = model.explain(user_id, k, exclude=seen if exclude_seen else ())
            cold = not seen and not model.slow_knows(user_id)
            version = self.champion_version
        self.metrics.recommendations.labels(cold_start=str(cold).lower()).inc()
        return {"user_id": user_id,
                "items": [{"item_id": r.item_id, "score": _finite(r.score), "fast": _finite(r.fast),
                           "slow": _finite(r.slow), "reason": r.reason} for r in recs],
                "gate": _finite(recs[0].gate) if recs else None, "cold_start": cold, "model_version": version,
                "took_ms": round((time.perf_counter() - started) * 1000, 3)}

    def produce(self, events: Sequence[Interaction]) -> list[str]:
        """Send validated events to Kafka keyed by user; their ids once all are acknowledged."""
        if self._producer is None:
            raise ServingError("events", "no Kafka broker configured",
                               "start the server with --bootstrap-servers or FASTSLOW_KAFKA_BOOTSTRAP")
        from kafka.errors import KafkaError

        futures = [self._producer.send(self.topic, key=user_key(e.user_id), value=e.to_json_bytes())
                   for e in events]
        try:
            for future in futures:
                future.get(timeout=self.ack_timeout_s)
        except KafkaError as exc:
            raise ServingError("events", f"Kafka did not acknowledge them ({exc!r})",
                               "retry: the worker drops duplicates by event_id") from None
        self.metrics.events_accepted.inc(len(events))
        return [e.event_id for e in events]

    def forget_user(self, user_id: str) -> dict[str, Any]:
        """Forget ``user_id`` everywhere this process reaches; what was removed, per store."""
        self.deleted.add(user_id)  # first: should a step below fail, consolidation still leaves them out
        with self.lock:
            model = self.model
            held = model_footprint(model, user_id)
            if self.worker is not None:  # also from its partitions' user lists, and its snapshot files soon
                self.worker.forget_users([user_id], deleted=True)
            else:
                model.forget_users([user_id], deleted=True)
        online = None
        if self.features is not None:
            with self._feature_lock:
                online = self.features.forget_user(user_id)
        self.metrics.users_deleted.inc()
        logger.info("deleted user %s: %s, %s online feature rows", user_id, held, online)
        return {"user_id": user_id,
                "removed": {**held, "online_feature_rows": online},
                "consolidation": f"excluded from future samples ({self.deleted.path})",
                "slow_model_uses_user_vector": model.slow_knows(user_id)}

    # -- health ----------------------------------------------------------------------------

    def readiness(self) -> list[str]:
        """Why this process cannot serve fully right now (empty: ready)."""
        reasons = []
        if self.model is None:
            reasons.append("no model loaded")
        if self.bootstrap is None:
            reasons.append("no Kafka broker configured (events cannot be accepted)")
        else:
            problem = self._broker.problem()
            if problem:
                reasons.append(problem)
        if self.consume and self.worker_error is not None:
            reasons.append(f"in-process worker stopped: {self.worker_error!r}")
        return reasons


def _producer_timeouts(ack_timeout_s: float) -> dict[str, int]:
    """Producer settings so that nothing about an event outlives its POST's wait.

    ``send`` waits for metadata up to ``max_block_ms`` (60 s by default) while the broker is
    away, and an unacknowledged event stays queued for ``delivery_timeout_ms`` (120 s), which
    also makes ``close`` fail; both are bounded by the time a POST waits.

    >>> _producer_timeouts(10.0)
    {'max_block_ms': 10000, 'delivery_timeout_ms': 10000, 'request_timeout_ms': 9990}
    """
    ms = int(ack_timeout_s * 1000)
    return {"max_block_ms": ms, "delivery_timeout_ms": ms, "request_timeout_ms": max(ms - 10, 1)}


_thread_state = threading.local()


def one_faiss_thread() -> None:
    """Give FAISS one OpenMP thread in the calling thread (once per thread).

    OpenMP's thread count is a per-thread setting: `models.memory.set_faiss_threads` in the
    main thread does not reach the threads that score requests or run the worker, which
    otherwise search with one OpenMP thread per core (measured here: ~15 ms of CPU per
    request at 10k items instead of ~2 ms, on a busy 2-core machine).
    """
    if not getattr(_thread_state, "faiss_threads_set", False):
        from models.memory import set_faiss_threads

        set_faiss_threads(1)
        _thread_state.faiss_threads_set = True


def _finite(x: float) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return float(x) if math.isfinite(x) else None


def _feature_client(settings: Settings) -> Any:
    """The feature store client over ``<data_dir>/feast`` if it was applied, else None."""
    repo = settings.data_dir / "feast"
    if not (repo / "feature_store.yaml").is_file():
        logger.info("no feature repository at %s: DELETE /users/{id} has no online features to remove", repo)
        return None
    from features.store import FeatureStoreClient

    return FeatureStoreClient(repo)
