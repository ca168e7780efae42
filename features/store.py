"""The feature store as the worker and the scorer use it: push micro-batches, look up context.

`FeatureStoreClient` wraps a `feast.FeatureStore` over an applied repository
(`features.repository.apply_repo`):

* `push_events(events)` folds a micro-batch into the streaming aggregates and the attribute
  tracker, then `write_rows` each view's changed rows: offline first (parquet parts), then the
  newest row per key online, through Feast's `PushSource` (streaming views) or
  `write_to_online_store` (attribute views).
* Newer event time wins per key. The sqlite online store overwrites whatever was there
  (Redis keeps the newer), so `write_rows` guards it for both: a row is written only if it is
  newer than what the store holds. Sqlite keeps whole seconds, so rows this process wrote are
  compared at full precision, and a stored time it did not write must be beaten by a full
  second (never overwriting a newer value; at worst an update within the same second as
  another writer's is dropped until the key's next row). Rejected rows are counted in
  `rejected`.
* `on_write(callback)` registers ``callback(view, keys)``, called with the keys whose online
  rows a write (or `forget_user`) changed: what `features.context.FeatureContext` uses to keep
  a cache exact.
* `lookup(user_id, item_ids)` returns the user's features and the candidates' features as
  aligned arrays (`lookup_items` the items' alone), with defaults (`features.schema`) where the store has nothing; the number of
  entity reads per view and how many fell back to defaults are counted in `reads`/`missing`.
  It reads each view with the online store's `online_read` (one query per view):
  `FeatureStore.get_online_features` builds a row per candidate, converts every value twice
  and replicates the user's features per candidate, which costs 2-3x more for 1 + 200
  entities (`fastslow bench features` measures both). With sqlite, the online store is
  `features.online_store.FastSqliteOnlineStore` (Feast's, with a leaner `online_read`).

The client resolves feature views once at construction; re-create it after a re-apply. It
remembers the time of every row it wrote (one integer per key) for the guard above.

>>> import tempfile, pandas as pd
>>> from features.repository import apply_repo
>>> repo = tempfile.mkdtemp()
>>> _ = apply_repo(repo)
>>> client = FeatureStoreClient(repo)
>>> t0 = pd.Timestamp("2024-01-01 12:00", tz="UTC")
>>> client.push_events(pd.DataFrame({
...     "user_id": ["u1", "u1"], "item_id": ["a", "b"], "event_type": ["click", "view"],
...     "timestamp": [t0, t0 + pd.Timedelta("5min")],
...     "context": ['{"category": "shoes", "price": 30}', None]}))
{'user_stream': 1, 'item_stream': 2, 'item_attributes': 1, 'user_attributes': 0}
>>> context = client.lookup("u1", ["a", "b", "new-item"])
>>> context.user["events_1h"], context.user["last_item"], context.user["seconds_since_prev"]
(2, 'b', 300.0)
>>> context.items["pop_long"].tolist(), context.items["category"].tolist()
([1, 1, 0], ['shoes', '', ''])
>>> context.missing, dict(client.missing)
(4, {'user_stream': 0, 'user_attributes': 1, 'item_stream': 1, 'item_attributes': 2})
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from fastslow.errors import ConfigError
from features.aggregates import StreamAggregates
from features.attributes import AttributeTracker
from features.errors import FeatureInputError
from features.offline import OfflineLog
from features.repository import open_store
from features.schema import PUSH_SOURCES, TIMESTAMP, VIEWS, views_for

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)



def stored_time_resolution_us(online_store_type: str) -> int:
    """Precision (microseconds) at which an online store keeps a row's event time.

    Feast's sqlite store (and `features.online_store`'s variant) stores whole seconds; Redis
    stores the protobuf timestamp, read back to the microsecond.

    >>> stored_time_resolution_us("features.online_store.FastSqliteOnlineStore")
    1000000
    """
    sqlite = online_store_type == "sqlite" or online_store_type.endswith("SqliteOnlineStore")
    return 1_000_000 if sqlite else 1


@dataclass(frozen=True)
class Context:
    """Features of one user and N candidate items, defaults filled in.

    ``items[feature][k]`` belongs to the k-th candidate; ``*_found`` say, per view, whether the
    store had a row (False: the value is the default).
    """

    user: dict[str, Any]
    items: dict[str, np.ndarray]
    user_found: dict[str, bool]
    items_found: dict[str, np.ndarray]

    @property
    def missing(self) -> int:
        """Entity reads in this lookup that fell back to defaults."""
        return (sum(not f for f in self.user_found.values())
                + sum(int((~f).sum()) for f in self.items_found.values()))


@lru_cache(maxsize=200_000)
def _entity_key(join_key: str, value: str):
    """Feast entity key proto (cached: the scorer asks for the same candidates again and again)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return EntityKey(join_keys=[join_key], entity_values=[Value(string_val=value)])


class FeatureStoreClient:
    """Push and lookup API over an applied feature repository.

    Parameters
    ----------
    repo_dir
        Repository directory written by `features.repository.apply_repo`.
    short_window_s, long_window_s
        Item popularity windows, passed to `features.aggregates.StreamAggregates`.
    """

    def __init__(self, repo_dir: str | Path, short_window_s: float = 3600.0,
                 long_window_s: float = 86400.0) -> None:
        from feast.infra.provider import get_provider

        self.repo_dir = Path(repo_dir)
        self.store = open_store(repo_dir)
        self.aggregates = StreamAggregates(short_window_s, long_window_s)
        self.attributes = AttributeTracker()
        self.offline = OfflineLog(repo_dir)
        self.reads: Counter[str] = Counter()
        self.missing: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.lookups = 0
        self._online = get_provider(self.store.config).online_store
        self._views = {name: self.store.get_feature_view(name) for name in VIEWS}
        self._resolution_us = stored_time_resolution_us(self.store.config.online_store.type)
        self._written: dict[tuple[str, str], int] = {}
        self._listeners: list[Callable[[str, list[str]], None]] = []

    def on_write(self, callback: Callable[[str, list[str]], None]) -> None:
        """Call ``callback(view, keys)`` after each online write with the keys it changed."""
        self._listeners.append(callback)

    def _changed(self, view: str, keys: list[str]) -> None:
        for callback in self._listeners:
            callback(view, keys)

    # ---- writing -------------------------------------------------------------------------

    def push_events(self, events: pa.Table | pd.DataFrame) -> dict[str, int]:
        """Fold a micro-batch of events in and write what changed; rows written per view."""
        rows = {**self.aggregates.update(events), **self.attributes.update(events)}
        return {view: self.write_rows(view, frame) for view, frame in rows.items()}

    def write_rows(self, view: str, rows: pd.DataFrame) -> int:
        """Write feature rows of `view`, skipping any not newer than what the store holds.

        `rows` has the view's key column, ``event_timestamp`` (naive times are taken as UTC;
        a row without one is rejected) and every feature (cast to the view's types; other
        columns are ignored). A batch attribute table, e.g. an item catalogue, is written
        this way too, stamped with the time its values became true. All newer rows go to
        the offline store; the newest per key goes online. Returns the keys updated online.
        """
        given = len(rows)
        rows = _conform(view, rows)
        self.rejected[view] += given - len(rows)
        if rows.empty:
            return 0
        key = VIEWS[view].key
        micros = _micros(rows[TIMESTAMP])
        keys = rows[key].to_numpy()
        unique_keys = list(dict.fromkeys(keys))
        thresholds = dict(zip(unique_keys, self._newest_known(view, unique_keys)))
        fresh = micros > np.array([thresholds[k] for k in keys], dtype=np.int64)
        self.rejected[view] += int((~fresh).sum())
        accepted = rows.loc[fresh].iloc[np.argsort(micros[fresh], kind="stable")]
        accepted = accepted.drop_duplicates([key, TIMESTAMP], keep="last")
        if accepted.empty:
            return 0
        self.offline.append(view, accepted)
        latest = accepted.drop_duplicates(key, keep="last")
        self._write_online(view, latest)
        for k, ts in zip(latest[key], _micros(latest[TIMESTAMP])):
            self._written[(view, k)] = int(ts)
        self._changed(view, latest[key].tolist())
        return len(latest)

    def _newest_known(self, view: str, keys: list[str]) -> list[int]:
        """Per key, the event time (microseconds) a new row must be later than."""
        stored = self._online.online_read(self.store.config, self._views[view],
                                          [_entity_key(VIEWS[view].key, k) for k in keys])
        out = []
        for key, (ts, values) in zip(keys, stored):
            present = bool(values) and any(v.WhichOneof("val") for v in values.values())
            stored_us = (ts - _EPOCH) // _MICROSECOND if present and ts is not None else None
            own = self._written.get((view, key))
            if own is not None and (stored_us is None or own >= stored_us):
                out.append(own)
            elif stored_us is not None:
                out.append(stored_us + self._resolution_us - 1)
            else:
                out.append(-(2**62))
        return out

    def _write_online(self, view: str, latest: pd.DataFrame) -> None:
        from feast.data_source import PushMode

        if view in PUSH_SOURCES:
            self.store.push(PUSH_SOURCES[view], latest, to=PushMode.ONLINE)
        else:
            self.store.write_to_online_store(view, latest)

    def forget_user(self, user_id: str) -> int:
        """Delete the user's online rows in every user view and their in-memory aggregates.

        What ``DELETE /users/{id}`` calls. Returns the online rows removed (one per view that
        held the user). The offline store (parquet history for training frames) is kept.
        Supported online stores: sqlite (Feast's or `features.online_store`'s) and Redis.
        """
        views = views_for("user_id")
        key = [_entity_key("user_id", user_id)]
        removed = sum(1 for view in views
                      for _, values in self._online.online_read(self.store.config, self._views[view.name], key)
                      if values and any(v.WhichOneof("val") for v in values.values()))  # Redis: empty
        self._delete_online(user_id, [view.name for view in views])
        for view in views:
            self._written.pop((view.name, user_id), None)
        self.aggregates.forget_user(user_id)
        self.attributes.forget("user_attributes", user_id)
        for view in views:
            self._changed(view.name, [user_id])
        logger.info("forgot user %s: %d online feature rows removed", user_id, removed)
        return removed

    def _delete_online(self, user_id: str, views: list[str]) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.helpers import _redis_key
        from feast.infra.online_stores.redis import RedisOnlineStore
        from feast.infra.online_stores.sqlite import SqliteOnlineStore, _quote_id, _table_id

        config, key = self.store.config, _entity_key("user_id", user_id)
        if isinstance(self._online, SqliteOnlineStore):
            conn = self._online._get_conn(config)
            encoded = serialize_entity_key(key, config.entity_key_serialization_version)
            versioning = config.registry.enable_online_feature_view_versioning
            for view in views:
                name = _table_id(config.project, self._views[view], versioning)
                conn.execute(f"DELETE FROM {_quote_id(name)} WHERE entity_key = ?", (encoded,))
            conn.commit()
        elif isinstance(self._online, RedisOnlineStore):  # one hash per entity holds every user view
            client = self._online._get_client(config.online_store)
            client.delete(_redis_key(config.project, key, config.entity_key_serialization_version))
        else:
            raise ConfigError("feast online store", type(self._online).__name__,
                              "sqlite or redis (the stores forget_user can delete rows from)")

    # ---- reading -------------------------------------------------------------------------

    def lookup(self, user_id: str, item_ids: list[str]) -> Context:
        """Online features of `user_id` and of each of `item_ids`, in that order."""
        self.lookups += 1
        user: dict[str, Any] = {}
        user_found: dict[str, bool] = {}
        for view in views_for("user_id"):
            columns, found = self._read(view.name, [user_id])
            user.update({f: col[0] for f, col in columns.items()})
            user_found[view.name] = bool(found[0])
        items, items_found = self.lookup_items(item_ids)
        return Context(user, items, user_found, items_found)

    def lookup_items(self, item_ids: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Online features of `item_ids` (as `Context.items`) and per view a found mask."""
        items: dict[str, np.ndarray] = {}
        items_found: dict[str, np.ndarray] = {}
        for view in views_for("item_id"):
            columns, items_found[view.name] = self._read(view.name, item_ids)
            items.update({f: np.array(col, dtype=object if isinstance(view.defaults[f], str)
                                      else type(view.defaults[f])) for f, col in columns.items()})
        return items, items_found

    def _read(self, view: str, keys: list[str]) -> tuple[dict[str, list], np.ndarray]:
        """Values per feature (defaults where absent) and a found mask, aligned with `keys`."""
        spec = VIEWS[view]
        read_columns = getattr(self._online, "read_columns", None)
        if read_columns is not None:  # the default sqlite store's lean read (same answers)
            columns, found = read_columns(self.store.config, self._views[view], spec.key, keys, spec.defaults)
            return self._counted(view, columns, np.array(found, dtype=bool))
        entity_keys = [_entity_key(spec.key, k) for k in keys]
        results = (self._online.online_read(self.store.config, self._views[view], entity_keys)
                   if keys else [])
        columns = {f: [d] * len(keys) for f, d in spec.defaults.items()}
        found = [False] * len(keys)
        for k, (_, values) in enumerate(results):
            if not values:
                continue
            for name, value in values.items():
                kind = value.WhichOneof("val")  # None: Redis's placeholder for "no value"
                column = columns.get(name)
                if kind is not None and column is not None:
                    column[k] = getattr(value, kind)
                    found[k] = True
        return self._counted(view, columns, np.array(found, dtype=bool))

    def _counted(self, view: str, columns: dict[str, list], mask: np.ndarray) -> tuple[dict[str, list], np.ndarray]:
        self.reads[view] += len(mask)
        self.missing[view] += int(len(mask) - mask.sum())
        return columns, mask

    # ---- training ------------------------------------------------------------------------

    def training_frame(self, events: pa.Table | pd.DataFrame) -> pd.DataFrame:
        """Point-in-time training frame; see `features.training.training_frame`."""
        from features.offline import retry_on_merge
        from features.training import training_frame

        # Feast reads the offline folders itself: a merge beside it may remove a listed part
        return retry_on_merge(lambda: training_frame(self.store, events))


def _conform(view: str, rows: pd.DataFrame) -> pd.DataFrame:
    """The view's columns only, typed as the view declares them; raises if any is missing."""
    spec = VIEWS[view]
    columns = [spec.key, TIMESTAMP, *spec.features]
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise FeatureInputError(f"{view} rows", missing, columns)
    out = rows[columns].copy()
    out[spec.key] = out[spec.key].astype(str)
    out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP], utc=True)
    for name, default in spec.defaults.items():
        if isinstance(default, str):
            out[name] = out[name].where(out[name].notna(), default).astype(str)
        else:
            out[name] = out[name].fillna(default).astype(type(default))
    return out[out[TIMESTAMP].notna()].reset_index(drop=True)


def _micros(timestamps: pd.Series) -> np.ndarray:
    """Microseconds since the epoch of timezone-aware timestamps."""
    return timestamps.astype("datetime64[us, UTC]").astype("int64").to_numpy()
