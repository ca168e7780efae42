"""Batch user and item attributes carried in the events' ``context`` JSON, as feature rows.

A log may describe its items (context keys ``category``, ``price``) and users (context keys
``user_segment``, ``user_country``) on the events themselves; the synthetic generator emits
item category and price. `AttributeTracker.update` turns a batch of events into attribute
rows, emitting a row only when a key's attributes change (a key mentioned by a later event
keeps the values it does not mention). Row times strictly increase per key, as in
`features.aggregates`. Values of the wrong type (a price that is not a number) are skipped and
counted in `AttributeTracker.invalid`.

>>> import pandas as pd
>>> t0 = pd.Timestamp("2024-01-01", tz="UTC")
>>> events = pd.DataFrame({
...     "user_id": ["u1", "u1", "u2"], "item_id": ["a", "a", "b"],
...     "timestamp": [t0, t0 + pd.Timedelta("1min"), t0 + pd.Timedelta("2min")],
...     "event_type": ["view"] * 3,
...     "context": ['{"category": "shoes", "price": 30}', '{"category": "shoes"}',
...                 '{"price": "n/a", "user_segment": "new"}']})
>>> tracker = AttributeTracker()
>>> rows = tracker.update(events)
>>> print(rows["item_attributes"].to_string(index=False))
item_id           event_timestamp category  price
      a 2024-01-01 00:00:00+00:00    shoes   30.0
>>> print(rows["user_attributes"].to_string(index=False))
user_id           event_timestamp segment country
     u2 2024-01-01 00:02:00+00:00     new
>>> tracker.invalid
1
"""

from __future__ import annotations

import json
import logging

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.schema import VIEWS

logger = logging.getLogger(__name__)

#: view -> (entity column, {feature: context key})
CONTEXT_KEYS: dict[str, tuple[str, dict[str, str]]] = {
    "item_attributes": ("item_id", {"category": "category", "price": "price"}),
    "user_attributes": ("user_id", {"segment": "user_segment", "country": "user_country"}),
}


class AttributeTracker:
    """Remembers each key's current attributes and reports changes as rows."""

    def __init__(self) -> None:
        self._current: dict[str, dict[str, tuple[tuple, int]]] = {v: {} for v in CONTEXT_KEYS}
        self.invalid = 0

    def update(self, events: pa.Table | pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Attribute rows that changed in this batch, per attribute view."""
        table = events if isinstance(events, pa.Table) else pa.Table.from_pandas(
            events, preserve_index=False)
        rows: dict[str, list[tuple]] = {v: [] for v in CONTEXT_KEYS}
        if "context" not in table.column_names:
            return {v: VIEWS[v].frame([]) for v in CONTEXT_KEYS}
        contexts = table["context"].to_pylist()
        micros = pc.cast(pc.cast(table["timestamp"], pa.timestamp("us", tz="UTC")),
                         pa.int64()).to_pylist()
        keys = {v: table[col].to_pylist() for v, (col, _) in CONTEXT_KEYS.items()}
        for k, text in enumerate(contexts):
            if not text:
                continue
            context = json.loads(text)
            for view, (_, mapping) in CONTEXT_KEYS.items():
                found = self._read(view, context, mapping)
                if found:
                    row = self._change(view, keys[view][k], found, micros[k])
                    if row is not None:
                        rows[view].append(row)
        return {v: VIEWS[v].frame(r) for v, r in rows.items()}

    def forget(self, view: str, key: str) -> bool:
        """Drop what is remembered of `key` in `view` (a deleted user); True if there was any."""
        return self._current[view].pop(key, None) is not None

    def _read(self, view: str, context: dict, mapping: dict[str, str]) -> dict[str, object]:
        found = {}
        for feature, key in mapping.items():
            value = context.get(key)
            if value is None:
                continue
            kind = type(VIEWS[view].defaults[feature])
            try:
                found[feature] = kind(value)
            except (TypeError, ValueError):
                self.invalid += 1
                logger.debug("context %s=%r is not a %s; skipped", key, value, kind.__name__)
        return found

    def _change(self, view: str, key: str, found: dict[str, object], ts: int) -> tuple | None:
        defaults = VIEWS[view].defaults
        values, row_ts = self._current[view].get(key, (tuple(defaults.values()), -1))
        merged = tuple(found.get(f, v) for f, v in zip(defaults, values))
        if merged == values and row_ts >= 0:
            return None
        row_ts = max(ts, row_ts + 1)
        self._current[view][key] = (merged, row_ts)
        return (key, row_ts, *merged)

