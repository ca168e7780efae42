"""`FeaturePusher`: the streaming worker's hook that pushes learned events to the feature store.

The worker calls its ``on_batch`` hook after each polled batch is applied to the model; a
`FeaturePusher` passed there hands the batch's applied events to
`features.store.FeatureStoreClient.push_events` (streaming aggregates, attribute rows, online
and offline writes, newer event time wins). It needs the events on the report: the worker's
`streaming.worker_stats.BatchReport` must carry them as ``events`` (a pyarrow Table in the
event-log schema, the events the batch applied, duplicates left out).

With ``background=True`` (the default) pushes run on one thread of their own, so the worker's
batch loop does not wait for Feast: batches that queue up while a push runs are pushed
together as the next micro-batch. ``max_pending`` events may wait; beyond that the worker
blocks until the pusher catches up (back-pressure: features are never dropped). A push that
fails is logged and raised by the next `push` / `flush` / `close`, so the worker stops loudly
instead of serving features that silently stopped updating.

The pusher owns its client: give it one of its own (a `FeatureStoreClient` over the same
repository) rather than the one serving lookups read through, so a push never holds up a
lookup.

>>> import tempfile, pandas as pd
>>> from features.repository import apply_repo
>>> from features.store import FeatureStoreClient
>>> client = FeatureStoreClient(apply_repo(tempfile.mkdtemp()).repo_path)
>>> pusher = FeaturePusher(client)
>>> t0 = pd.Timestamp("2024-01-01 12:00", tz="UTC")
>>> pusher.push(pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["a", "a"], "event_type": "click",
...                           "timestamp": [t0, t0], "value": 1.0}))
>>> pusher.close()
>>> pusher.events, client.lookup("u1", ["a"]).items["pop_long"].tolist()
(2, [2])
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pandas as pd
import pyarrow as pa

from fastslow.errors import FastslowError
from features.store import FeatureStoreClient

logger = logging.getLogger(__name__)


class FeaturePushError(FastslowError):
    """A background push failed; the pusher stops and re-raises it to its caller."""

    def __init__(self, events: int, cause: BaseException) -> None:
        self.events, self.cause = events, cause
        super().__init__(f"pushing {events} events to the feature store failed: {cause!r} (the worker "
                         "stops so features do not silently go stale; fix the store and restart)")


class FeaturePusher:
    """Push applied events to the feature store in micro-batches (see the module docstring).

    Parameters
    ----------
    client
        The feature store client the pushes go through (give the pusher its own).
    background
        Push on a thread of its own (True) or inside the caller's call (False).
    max_pending
        Events that may wait for the background thread before `push` blocks.
    """

    def __init__(self, client: FeatureStoreClient, background: bool = True, max_pending: int = 200_000) -> None:
        self.client = client
        self.background = background
        self.max_pending = max_pending
        self.events = 0
        """Events pushed so far."""
        self.batches = 0
        self.seconds = 0.0
        self._pending: list[pa.Table | pd.DataFrame] = []
        self._pending_rows = 0
        self._busy = False
        self._error: FeaturePushError | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="feature-pusher", daemon=True) if background else None
        if self._thread is not None:
            self._thread.start()

    def __call__(self, report: Any) -> None:
        """The worker's ``on_batch`` hook: push the report's ``events``."""
        events = getattr(report, "events", None)
        if events is None:
            raise FeaturePushError(0, AttributeError(
                f"{type(report).__name__} has no 'events': the worker must put the batch's applied "
                "events (a pyarrow Table) on its BatchReport for the feature pusher"))
        self.push(events)

    def push(self, events: pa.Table | pd.DataFrame) -> None:
        """Queue (background) or push (foreground) a batch of events in the event-log schema."""
        rows = events.num_rows if isinstance(events, pa.Table) else len(events)
        if not rows:
            return
        if self._thread is None:
            self._push([events], rows)
            return
        with self._cond:
            self._raise_error()
            while self._pending_rows >= self.max_pending and self._error is None:
                self._cond.wait()
            self._raise_error()
            self._pending.append(events)
            self._pending_rows += rows
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every queued event is pushed."""
        if self._thread is not None:
            with self._cond:
                while (self._pending or self._busy) and self._error is None:
                    self._cond.wait()
        self._raise_error()

    def close(self) -> None:
        """Push what is queued, stop the thread; raises a failed push's error."""
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, rows = self._pending, self._pending_rows
                self._pending, self._pending_rows, self._busy = [], 0, True
                self._cond.notify_all()
            try:
                self._push(batch, rows)
            except FeaturePushError as exc:
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            if self._error is not None:
                return

    def _push(self, batch: list[pa.Table | pd.DataFrame], rows: int) -> None:
        started = time.perf_counter()
        tables = [b if isinstance(b, pa.Table) else pa.Table.from_pandas(b, preserve_index=False) for b in batch]
        try:
            events = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
            self.client.push_events(events)
        except Exception as exc:  # noqa: BLE001 - re-raised to the caller as FeaturePushError
            logger.exception("feature push of %d events failed", rows)
            raise FeaturePushError(rows, exc) from exc
        self.events += rows
        self.batches += 1
        self.seconds += time.perf_counter() - started
