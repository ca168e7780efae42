"""Streaming user and item features computed from events, one row per changed key.

`StreamAggregates.update` takes a micro-batch of events (the event-log columns) and returns,
per streaming feature view, one row for each user (item) whose features the batch changed,
describing it as of its newest event, plus rows for keys whose windows lost events because
stream time moved on, as of the stream clock (the newest event time seen). A row's
``event_timestamp`` is the time its values hold from. The feature store client pushes these
rows online and appends them offline, so a point-in-time training frame sees, for each event,
what an online lookup made between micro-batches would have seen.

Windows are half-open, ``(T - w, T]``, evaluated at the row's time T.

User features: ``events_1h``/``events_1d`` (events in the last hour/day), ``distinct_items_1d``,
``last_item``/``last_event_type`` (of the newest event), ``seconds_since_prev`` (gap between the
two newest events; -1.0 with only one). Item features: ``pop_short``/``pop_long`` (non-skip
events in the short/long window), ``pop_trend`` (short-window rate over long-window rate, 0.0
when the long window is empty). A ``skip`` says nothing good about an item, so it counts for
the user's activity but not for the item's popularity.

Row times strictly increase per key: a row that would not be newer than the key's previous row
(same-instant events in the next batch, or out-of-order events folded into the windows) is
stamped one microsecond after it, so "newer event time wins" is well defined downstream.
Events whose ``event_id`` was already seen (a redelivered message) are ignored.

>>> import pandas as pd
>>> t0 = pd.Timestamp("2024-01-01 12:00", tz="UTC")
>>> events = pd.DataFrame({
...     "event_id": ["e1", "e2", "e3", "e2"],
...     "user_id": ["u1", "u1", "u2", "u1"],
...     "item_id": ["a", "b", "a", "b"],
...     "timestamp": [t0, t0 + pd.Timedelta("30min"), t0 + pd.Timedelta("2h"),
...                   t0 + pd.Timedelta("30min")],
...     "event_type": ["click", "view", "skip", "view"],
...     "value": [1.0, 1.0, 1.0, 1.0]})
>>> rows = StreamAggregates().update(events)
>>> print(rows["user_stream"].drop(columns="last_event_type").to_string(index=False))
user_id           event_timestamp  events_1h  events_1d  distinct_items_1d last_item  seconds_since_prev
     u1 2024-01-01 12:30:00+00:00          2          2                  2         b              1800.0
     u2 2024-01-01 14:00:00+00:00          1          1                  1         a                -1.0
     u1 2024-01-01 14:00:00+00:00          0          2                  2         b              1800.0
>>> print(rows["item_stream"].to_string(index=False))
item_id           event_timestamp  pop_short  pop_long  pop_trend
      a 2024-01-01 12:00:00+00:00          1         1       24.0
      b 2024-01-01 12:30:00+00:00          1         1       24.0
      a 2024-01-01 14:00:00+00:00          0         1        0.0
      b 2024-01-01 14:00:00+00:00          0         1        0.0
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.errors import FeatureInputError
from features.schema import VIEWS

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp", "event_type")


class _UserState:
    __slots__ = ("hour", "day", "items", "now", "last", "prev", "last_item", "last_type",
                 "row_ts")

    def __init__(self) -> None:
        self.hour: deque[int] = deque()
        self.day: deque[tuple[int, str]] = deque()
        self.items: dict[str, int] = {}
        self.now = self.last = self.row_ts = -1
        self.prev: int | None = None
        self.last_item = self.last_type = ""


class _ItemState:
    __slots__ = ("short", "long", "now", "row_ts")

    def __init__(self) -> None:
        self.short: deque[int] = deque()
        self.long: deque[int] = deque()
        self.now = self.row_ts = -1


def _insert(window: deque, entry: Any) -> None:
    """Insert keeping `window` sorted; events mostly arrive in order, so scan from the right."""
    if not window or window[-1] <= entry:
        window.append(entry)
        return
    pos = len(window)
    while pos > 0 and window[pos - 1] > entry:
        pos -= 1
    window.insert(pos, entry)


def _prune(window: deque, horizon: int) -> None:
    while window and window[0] <= horizon:
        window.popleft()


def _prune_day(state: _UserState, horizon: int) -> None:
    day, items = state.day, state.items
    while day and day[0][0] <= horizon:
        _, item = day.popleft()
        left = items[item] - 1
        if left:
            items[item] = left
        else:
            del items[item]


class StreamAggregates:
    """In-memory windowed aggregates over an event stream, as feature rows.

    Parameters
    ----------
    short_window_s, long_window_s
        Item popularity windows (``pop_short``, ``pop_long``) in seconds. The user windows
        are one hour and one day, as the feature names say.
    dedup_capacity
        How many recent ``event_id`` values are remembered to ignore redelivered events.

    State is plain Python (picklable), so a worker can snapshot it with its other state.
    """

    def __init__(self, short_window_s: float = 3600.0, long_window_s: float = 86400.0,
                 dedup_capacity: int = 100_000) -> None:
        self.short_window_s = short_window_s
        self.long_window_s = long_window_s
        self.dedup_capacity = dedup_capacity
        self._short_us = int(short_window_s * 1e6)
        self._long_us = int(long_window_s * 1e6)
        self._users: dict[str, _UserState] = {}
        self._items: dict[str, _ItemState] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._due: list[tuple[int, str, str]] = []   # (time a window loses an event, view, key)
        self._scheduled: dict[tuple[str, str], int] = {}
        self.clock = -1  # newest event time seen, microseconds since the epoch

    def update(self, events: pa.Table | pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Fold a micro-batch of events in; return the changed rows per streaming view."""
        users, items, kinds, times, ids = _columns(events)
        changed_users: dict[str, None] = {}
        changed_items: dict[str, None] = {}
        for k in range(len(times)):
            if ids is not None and self._is_duplicate(ids[k]):
                continue
            ts = times[k]
            if ts > self.clock:
                self.clock = ts
            if self._user_event(users[k], items[k], kinds[k], ts):
                changed_users[users[k]] = None
            if kinds[k] != "skip" and self._item_event(items[k], ts):
                changed_items[items[k]] = None
        user_rows = [self._user_row(u, self._users[u], self._users[u].now) for u in changed_users]
        item_rows = [self._item_row(i, self._items[i], self._items[i].now) for i in changed_items]
        self._expire(user_rows, item_rows)
        return {"user_stream": VIEWS["user_stream"].frame(user_rows),
                "item_stream": VIEWS["item_stream"].frame(item_rows)}

    def forget_user(self, user: str) -> bool:
        """Drop the user's windows (a deleted user); True if there were any."""
        self._scheduled.pop(("user_stream", user), None)  # its pending expiry row is skipped
        return self._users.pop(user, None) is not None

    def _is_duplicate(self, event_id: str | None) -> bool:
        if event_id is None:
            return False
        if event_id in self._seen:
            return True
        self._seen[event_id] = None
        if len(self._seen) > self.dedup_capacity:
            self._seen.popitem(last=False)
        return False

    def _user_event(self, user: str, item: str, kind: str, ts: int) -> bool:
        """Fold one event into its user's state; False if it changes nothing."""
        st = self._users.get(user)
        if st is None:
            st = self._users[user] = _UserState()
        if ts <= st.now - DAY_US:
            return False  # older than every window
        if ts >= st.last:
            st.prev = st.last if st.last >= 0 else None
            st.last, st.last_item, st.last_type = ts, item, kind
        elif st.prev is None or ts > st.prev:
            st.prev = ts
        if ts > st.now - HOUR_US:
            _insert(st.hour, ts)
        _insert(st.day, (ts, item))
        st.items[item] = st.items.get(item, 0) + 1
        st.now = max(st.now, ts)
        return True

    def _user_row(self, user: str, st: _UserState, at: int) -> tuple:
        """The user's feature row as of `at` (no earlier than its newest event)."""
        st.now = at
        _prune(st.hour, at - HOUR_US)
        _prune_day(st, at - DAY_US)
        st.row_ts = max(at, st.row_ts + 1)
        gap = (st.last - st.prev) / 1e6 if st.prev is not None else -1.0
        self._schedule("user_stream", user, min(
            (st.hour[0] + HOUR_US) if st.hour else 2**62,
            (st.day[0][0] + DAY_US) if st.day else 2**62))
        return (user, st.row_ts, len(st.hour), len(st.day), len(st.items), st.last_item,
                st.last_type, gap)

    def _item_event(self, item: str, ts: int) -> bool:
        """Fold one event into its item's state; False if it changes nothing."""
        st = self._items.get(item)
        if st is None:
            st = self._items[item] = _ItemState()
        if ts <= st.now - self._long_us:
            return False
        if ts > st.now - self._short_us:
            _insert(st.short, ts)
        _insert(st.long, ts)
        st.now = max(st.now, ts)
        return True

    def _item_row(self, item: str, st: _ItemState, at: int) -> tuple:
        """The item's feature row as of `at` (no earlier than its newest event)."""
        st.now = at
        _prune(st.short, at - self._short_us)
        _prune(st.long, at - self._long_us)
        st.row_ts = max(at, st.row_ts + 1)
        short, long = len(st.short), len(st.long)
        trend = (short / self._short_us) / (long / self._long_us) if long else 0.0
        self._schedule("item_stream", item, min(
            (st.short[0] + self._short_us) if st.short else 2**62,
            (st.long[0] + self._long_us) if st.long else 2**62))
        return (item, st.row_ts, short, long, trend)

    def _schedule(self, view: str, key: str, due: int) -> None:
        if due >= 2**62 or self._scheduled.get((view, key)) == due:
            return
        self._scheduled[(view, key)] = due
        heapq.heappush(self._due, (due, view, key))

    def _expire(self, user_rows: list[tuple], item_rows: list[tuple]) -> None:
        """Emit rows, as of the stream clock, for keys whose windows lost events."""
        while self._due and self._due[0][0] <= self.clock:
            due, view, key = heapq.heappop(self._due)
            if self._scheduled.get((view, key)) != due:
                continue  # superseded by a later schedule
            del self._scheduled[(view, key)]
            if view == "user_stream":
                user_rows.append(self._user_row(key, self._users[key], self.clock))
            else:
                item_rows.append(self._item_row(key, self._items[key], self.clock))


def _columns(events: pa.Table | pd.DataFrame) -> tuple[list, list, list, list, list | None]:
    table = events if isinstance(events, pa.Table) else pa.Table.from_pandas(
        events, preserve_index=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise FeatureInputError("events", missing, REQUIRED_COLUMNS)
    micros = pc.cast(pc.cast(table["timestamp"], pa.timestamp("us", tz="UTC")), pa.int64())
    ids = table["event_id"].to_pylist() if "event_id" in table.column_names else None
    return (table["user_id"].to_pylist(), table["item_id"].to_pylist(),
            table["event_type"].to_pylist(), micros.to_pylist(), ids)

