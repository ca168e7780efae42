"""Point-in-time training frames: each event joined with the features as they were before it.

`training_frame(store, events)` returns the events with every feature of every view, each
value taken from the newest feature row *strictly before* the event's timestamp (the row an
event itself produced describes the state after it, and using it would leak the label).
Values are looked up with Feast's `get_historical_features` over the parquet offline store.

Two Feast behaviours are handled rather than inherited:

* The file offline store drops an entity row whose time precedes every feature row of that
  entity, and fails outright on a mix of entities with and without rows. Each view is
  therefore joined on its own; rows whose entity has no feature row at or before their time
  (checked on the parquet data) get that view's defaults without asking Feast, and Feast must
  answer every other row exactly once, or `TrainingFrameError` is raised.
* Feast de-duplicates entity rows on (join keys, timestamp); joining several entities in one
  call would merge two events of one user at one instant. Each view is asked for distinct
  (key, time) pairs instead, and the answers are mapped back to every event.

The result has exactly one row per event, in the input order; ``frame.attrs["defaults"]``
says, per view, how many events got defaults.

>>> import tempfile, pandas as pd
>>> from features.repository import apply_repo
>>> from features.store import FeatureStoreClient
>>> client = FeatureStoreClient(apply_repo(tempfile.mkdtemp()).repo_path)
>>> t0 = pd.Timestamp("2024-01-01 12:00", tz="UTC")
>>> events = pd.DataFrame({"user_id": ["u1", "u1", "u1"], "item_id": ["a", "b", "a"],
...                        "event_type": "click",
...                        "timestamp": [t0, t0 + pd.Timedelta("1min"), t0 + pd.Timedelta("9min")]})
>>> for batch in (events.iloc[:2], events.iloc[2:]):  # two micro-batches
...     _ = client.push_events(batch)
>>> frame = training_frame(client.store, events)
>>> # the second event shares the first's micro-batch, so it sees no feature row yet
>>> frame[["item_id", "events_1h", "last_item", "pop_long"]].values.tolist()
[['a', 0, '', 0], ['b', 0, '', 0], ['a', 2, 'b', 1]]
>>> frame.attrs["defaults"]
{'user_stream': 2, 'user_attributes': 3, 'item_stream': 2, 'item_attributes': 3}
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from features.errors import FeatureInputError, TrainingFrameError
from features.offline import OfflineLog
from features.schema import TIMESTAMP, VIEWS, View

if TYPE_CHECKING:
    from feast import FeatureStore

logger = logging.getLogger(__name__)

_PAIR = "__pair"


def training_frame(store: FeatureStore, events: pa.Table | pd.DataFrame,
                   views: list[str] | None = None) -> pd.DataFrame:
    """Join `events` with feature values as of just before each event.

    Parameters
    ----------
    store
        A `feast.FeatureStore` over an applied repository (`features.repository.open_store`).
    events
        Event-log table; needs ``user_id``, ``item_id`` and ``timestamp``.
    views
        Feature views to join (default: all of them).
    """
    frame = events.to_pandas() if isinstance(events, pa.Table) else events.copy()
    needed = ("user_id", "item_id", "timestamp")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise FeatureInputError("events", missing, needed)
    frame = frame.reset_index(drop=True)
    asof = pd.to_datetime(frame["timestamp"], utc=True) - pd.Timedelta(microseconds=1)
    defaults: dict[str, int] = {}
    log = OfflineLog(store.repo_path)
    for name in views or list(VIEWS):
        view = VIEWS[name]
        values, defaults[name] = _join_view(store, log, view, frame[view.key].astype(str), asof)
        for feature in view.features:
            frame[feature] = values[feature]
    frame.attrs["defaults"] = defaults
    if len(frame) != len(events):
        raise TrainingFrameError("training frame", abs(len(frame) - len(events)),
                                 "the frame's row count differs from the events'")
    return frame


def _join_view(store: FeatureStore, log: OfflineLog, view: View, keys: pd.Series,
               asof: pd.Series) -> tuple[pd.DataFrame, int]:
    """Values of `view` for every (key, asof) row, and how many of them are defaults."""
    request = pd.DataFrame({view.key: keys, TIMESTAMP: asof})
    pair_of_row = request.groupby([view.key, TIMESTAMP], sort=False).ngroup().to_numpy()
    pairs = request.drop_duplicates([view.key, TIMESTAMP]).reset_index(drop=True)
    pairs[_PAIR] = np.arange(len(pairs))
    first = _first_row_times(log, view)
    has_row = (pairs[view.key].map(first) <= pairs[TIMESTAMP]).fillna(False).to_numpy(bool)
    answered = pd.DataFrame(index=np.arange(len(pairs)), columns=view.features)
    if has_row.any():
        answered.loc[has_row] = _historical(store, view, pairs.loc[has_row])
    columns = {}
    for feature, default in view.defaults.items():
        column = answered[feature].where(pd.Series(has_row), default)
        columns[feature] = column.astype(object if isinstance(default, str) else type(default))
    values = pd.DataFrame(columns).iloc[pair_of_row].reset_index(drop=True)
    n_default = int((~has_row)[pair_of_row].sum())
    logger.info("%s: %d of %d events have no earlier feature row (defaults)", view.name,
                n_default, len(keys))
    return values, n_default


def _first_row_times(log: OfflineLog, view: View) -> pd.Series:
    """Time of each key's first feature row in the offline store."""
    rows = log.read(view.name, columns=[view.key, TIMESTAMP])
    first = rows.group_by(view.key).aggregate([(TIMESTAMP, "min")]).to_pandas()
    return pd.to_datetime(first.set_index(view.key)[f"{TIMESTAMP}_min"], utc=True)


def _historical(store: FeatureStore, view: View, pairs: pd.DataFrame) -> pd.DataFrame:
    """Feast's point-in-time values for `pairs`, each of which has an earlier feature row.

    Raises `TrainingFrameError` unless Feast answers every pair exactly once.
    """
    job = store.get_historical_features(
        entity_df=pairs, features=[f"{view.name}:{f}" for f in view.features])
    result = job.to_df()
    counts = result[_PAIR].value_counts().reindex(pairs[_PAIR], fill_value=0)
    wrong = int((counts != 1).sum()) + int((~result[_PAIR].isin(pairs[_PAIR])).sum())
    if wrong:
        raise TrainingFrameError(view.name, wrong, "each of these rows has a feature row at or "
                                 "before its time, but Feast did not answer it exactly once")
    return result.set_index(_PAIR).loc[pairs[_PAIR], view.features].to_numpy()
