"""Feast's sqlite online store with a leaner `online_read`: the default online store.

Reading 200 candidate items from Feast's `SqliteOnlineStore` costs about 2.5 ms per feature
view on the project's 2-core machine, so two item views alone miss the 5 ms scoring budget.
Profiling shows where the time goes, none of it in sqlite itself: every entity key is
re-serialized in Python on every read (`serialize_entity_key`, ~2.5 us each), and every row
(one per entity *and feature*) goes through a registered sqlite converter that turns its
``event_ts`` into a `datetime`.

`FastSqliteOnlineStore` is a Feast custom online store (the documented extension point,
selected in ``feature_store.yaml`` by its class path). It keeps Feast's tables, schema and
write path unchanged and overrides `online_read` only: serialized keys are cached, the
timestamp is read as an integer and converted once per entity, to the same value Feast's
converter gives. Results are identical to the stock store's (a test compares them).
`read_columns` is the scoring read `features.store.FeatureStoreClient` uses with this store:
keys cached by id, and values picked straight into per-feature columns (no per-key protos,
dicts or timestamps), about 2.6 ms CPU for 1 user + 200 items against 3.7 ms before.

>>> FastSqliteOnlineStoreConfig().type
'features.online_store.FastSqliteOnlineStore'
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from typing import Literal

from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    _quote_id,
    _table_id,
)
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

TYPE = "features.online_store.FastSqliteOnlineStore"
_KEY_CACHE_SIZE = 200_000


class FastSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Same settings as Feast's sqlite online store (``path``, ...)."""

    type: Literal["features.online_store.FastSqliteOnlineStore"] = TYPE  # type: ignore[assignment]


class FastSqliteOnlineStore(SqliteOnlineStore):
    """`SqliteOnlineStore` whose `online_read` caches key encodings and skips per-row
    timestamp conversion; everything else is Feast's."""

    def __init__(self) -> None:
        super().__init__()
        self._encoded: dict[bytes, bytes] = {}
        self._by_id: dict[tuple[str, str], bytes] = {}

    def online_read(self, config, table, entity_keys: list[EntityKey],
                    requested_features: list[str] | None = None):
        """Rows of `table` for `entity_keys`: ``(event time, {feature: Value})`` or
        ``(None, None)`` per key, in key order, as `SqliteOnlineStore.online_read` returns."""
        encoded = [self._encode(key, config.entity_key_serialization_version)
                   for key in entity_keys]
        if not encoded:
            return []
        name = _table_id(config.project, table,
                         config.registry.enable_online_feature_view_versioning)
        rows = self._get_conn(config).execute(
            f"SELECT entity_key, feature_name, value, CAST(event_ts AS INTEGER) "
            f"FROM {_quote_id(name)} WHERE entity_key IN ({','.join('?' * len(encoded))})",
            encoded).fetchall()
        found: dict[bytes, tuple[int, dict[str, Value]]] = {}
        for key, feature, blob, seconds in rows:
            value = Value()
            value.ParseFromString(blob)
            entry = found.get(key)
            if entry is None:
                found[key] = (seconds, {feature: value})
            else:
                entry[1][feature] = value
        return [(_event_time(found[key][0]), found[key][1]) if key in found else (None, None)
                for key in encoded]

    def read_columns(self, config, table, join_key: str, ids: list[str],
                     defaults: dict[str, object]) -> tuple[dict[str, list], list[bool]]:
        """The scoring read: per feature of `defaults`, a list aligned with `ids` (the default
        where an id has no row or no value), and which ids had a row with a value.

        Same answers as `online_read` followed by picking each `Value`'s field, with the
        per-key protos, dicts and timestamps that path builds left out (scoring reads 200
        candidates per request and uses none of them).
        """
        version = config.entity_key_serialization_version
        cache = self._by_id
        encoded = []
        for entity_id in ids:
            key = cache.get((join_key, entity_id))
            if key is None:
                if len(cache) >= _KEY_CACHE_SIZE:
                    cache.clear()
                key = cache[(join_key, entity_id)] = serialize_entity_key(
                    EntityKey(join_keys=[join_key], entity_values=[Value(string_val=entity_id)]), version)
            encoded.append(key)
        columns = {f: [d] * len(ids) for f, d in defaults.items()}
        found = [False] * len(ids)
        if not encoded:
            return columns, found
        position = {key: n for n, key in enumerate(encoded)}
        name = _table_id(config.project, table, config.registry.enable_online_feature_view_versioning)
        rows = self._get_conn(config).execute(
            f"SELECT entity_key, feature_name, value FROM {_quote_id(name)} "
            f"WHERE entity_key IN ({','.join('?' * len(position))})", list(position)).fetchall()
        for key, feature, blob in rows:
            column = columns.get(feature)
            if column is None:
                continue
            value = Value()
            value.ParseFromString(blob)
            kind = value.WhichOneof("val")
            if kind is not None:
                n = position[key]
                column[n] = getattr(value, kind)
                found[n] = True
        if len(position) < len(encoded):  # an id asked for twice: copy the answer to each place
            for n, key in enumerate(encoded):
                first = position[key]
                if first != n:
                    found[n] = found[first]
                    for column in columns.values():
                        column[n] = column[first]
        return columns, found

    def _encode(self, key: EntityKey, version: int) -> bytes:
        raw = key.SerializeToString()
        encoded = self._encoded.get(raw)
        if encoded is None:
            if len(self._encoded) >= _KEY_CACHE_SIZE:
                self._encoded.clear()
            encoded = self._encoded[raw] = serialize_entity_key(key, version)
        return encoded


@lru_cache(maxsize=4096)  # rows pushed in one micro-batch share a handful of seconds
def _event_time(seconds: int | None) -> datetime | None:
    """What Feast's sqlite converter and `online_read` make of a stored ``event_ts``."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds).replace(tzinfo=timezone.utc)
