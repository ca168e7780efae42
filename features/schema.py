"""Plain-Python facts about the feature views: keys, feature names, types and defaults.

The Feast objects live in `features.repo.definitions` (importing Feast takes seconds); this
module repeats what the rest of the package needs at run time without importing Feast, and a
test checks that the two agree.

A default is what a lookup or a training frame reports for a feature that has no value for
an entity (never seen, or no row at or before the asked time). Counts default to 0, strings
to "", `seconds_since_prev` to -1.0 (there is no previous event), `pop_trend` to 0.0 (no
activity in the window), `price` to 0.0.

>>> VIEWS["item_stream"].key
'item_id'
>>> VIEWS["user_stream"].defaults["seconds_since_prev"]
-1.0
>>> [v.name for v in views_for("user_id")]
['user_stream', 'user_attributes']
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

#: Name of the timestamp column every feature row carries.
TIMESTAMP = "event_timestamp"
#: Folder (relative to the feature repository) holding one parquet dataset per view.
OFFLINE_DIR = "offline"
#: Arrow type of that column in the parquet offline store.
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

_ARROW = {int: pa.int64(), float: pa.float64(), str: pa.string()}


@dataclass(frozen=True)
class View:
    """One feature view: its entity key column and its features with their defaults."""

    name: str
    key: str
    defaults: dict[str, int | float | str]
    streaming: bool

    @property
    def features(self) -> list[str]:
        """Feature names in declaration order."""
        return list(self.defaults)

    def frame(self, rows: list[tuple]) -> pd.DataFrame:
        """Rows ``(key, microseconds since the epoch, *features)`` as a typed DataFrame."""
        frame = pd.DataFrame.from_records(rows, columns=[self.key, TIMESTAMP, *self.defaults])
        frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP].astype("int64"), unit="us", utc=True)
        for name, default in self.defaults.items():
            frame[name] = frame[name].astype(object if isinstance(default, str) else type(default))
        return frame

    def arrow_schema(self) -> pa.Schema:
        """Schema of this view's rows in the offline store: key, timestamp, features."""
        fields = [pa.field(self.key, pa.string()), pa.field(TIMESTAMP, TIMESTAMP_TYPE)]
        fields += [pa.field(f, _ARROW[type(d)]) for f, d in self.defaults.items()]
        return pa.schema(fields)


VIEWS: dict[str, View] = {v.name: v for v in [
    View("user_stream", "user_id", {
        "events_1h": 0, "events_1d": 0, "distinct_items_1d": 0, "last_item": "",
        "last_event_type": "", "seconds_since_prev": -1.0}, streaming=True),
    View("user_attributes", "user_id", {"segment": "", "country": ""}, streaming=False),
    View("item_stream", "item_id", {"pop_short": 0, "pop_long": 0, "pop_trend": 0.0},
         streaming=True),
    View("item_attributes", "item_id", {"category": "", "price": 0.0}, streaming=False),
]}

#: Push source feeding each streaming view (see `features.repo.definitions`).
PUSH_SOURCES = {"user_stream": "user_stream_push", "item_stream": "item_stream_push"}


def views_for(key: str) -> list[View]:
    """The views whose entity key column is `key` (``"user_id"`` or ``"item_id"``)."""
    return [v for v in VIEWS.values() if v.key == key]
