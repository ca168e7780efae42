"""An event log held as time-sorted columns: what replay, warm-up training and benchmarks iterate.

Ids are dictionary-encoded (an int code per event plus one string per distinct id), so a log of
millions of events costs a few arrays, not one Python object per event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _encode(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    encoded = column.combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
    names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    return codes, names


@dataclass(frozen=True)
class EventStream:
    """Events sorted by timestamp (stable: ties keep file order), as parallel arrays.

    Examples
    --------
    >>> import pyarrow as pa, datetime as dt
    >>> t = lambda s: dt.datetime(2024, 1, 1, 0, 0, s, tzinfo=dt.timezone.utc)
    >>> table = pa.table({"user_id": ["a", "b", "a"], "item_id": ["x", "y", "y"],
    ...                   "timestamp": pa.array([t(5), t(1), t(5)], pa.timestamp("ms", "UTC")),
    ...                   "event_type": ["click"] * 3, "value": [1.0, 2.0, 3.0]})
    >>> s = EventStream.from_table(table)
    >>> [s.user(n) for n in range(len(s))], [s.item(n) for n in range(len(s))]
    (['b', 'a', 'a'], ['y', 'x', 'y'])
    >>> s.timestamps.tolist(), s.values.tolist()
    ([1704067201.0, 1704067205.0, 1704067205.0], [2.0, 1.0, 3.0])
    """

    user_codes: np.ndarray
    user_names: np.ndarray
    item_codes: np.ndarray
    item_names: np.ndarray
    timestamps: np.ndarray
    """Unix seconds (float64)."""
    type_codes: np.ndarray
    type_names: np.ndarray
    values: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table) -> "EventStream":
        """Sort a normalized event table by time (stable) and encode its columns."""
        ts_ms = pc.cast(table.column("timestamp"), pa.int64()).to_numpy()
        order = np.argsort(ts_ms, kind="stable")
        table = table.take(pa.array(order))
        users, user_names = _encode(table.column("user_id"))
        items, item_names = _encode(table.column("item_id"))
        types, type_names = _encode(table.column("event_type"))
        return cls(user_codes=users, user_names=user_names, item_codes=items, item_names=item_names,
                   timestamps=ts_ms[order].astype(np.float64) / 1000.0, type_codes=types,
                   type_names=type_names, values=table.column("value").to_numpy().astype(np.float64))

    def __len__(self) -> int:
        return len(self.timestamps)

    def user(self, n: int) -> str:
        """User id of event `n`."""
        return self.user_names[self.user_codes[n]]

    def item(self, n: int) -> str:
        """Item id of event `n`."""
        return self.item_names[self.item_codes[n]]

    def slice(self, start: int, stop: int) -> "EventStream":
        """Events start..stop-1 (sharing the id tables)."""
        return EventStream(self.user_codes[start:stop], self.user_names, self.item_codes[start:stop],
                           self.item_names, self.timestamps[start:stop], self.type_codes[start:stop],
                           self.type_names, self.values[start:stop])

    def columns(self) -> tuple[list, list, np.ndarray, list, np.ndarray]:
        """(users, items, timestamps, event_types, values) as the learn_warmup call takes them."""
        return (self.user_names[self.user_codes].tolist(), self.item_names[self.item_codes].tolist(),
                self.timestamps, self.type_names[self.type_codes].tolist(), self.values)

    @property
    def n_users(self) -> int:
        """Distinct users in these events."""
        return int(np.unique(self.user_codes).size)

    @property
    def n_items(self) -> int:
        """Distinct items in these events."""
        return int(np.unique(self.item_codes).size)
