"""Streaming aggregates and attribute rows, checked against hand computations (no Feast)."""

from __future__ import annotations

import json
import math
import pickle

import pandas as pd
import pyarrow as pa
import pytest
from features_fixtures import at, make_events

from features.aggregates import StreamAggregates
from features.attributes import AttributeTracker
from features.errors import FeatureInputError


def _last(rows: pd.DataFrame, key_col: str, key: str) -> dict:
    return rows[rows[key_col] == key].iloc[-1].to_dict()


def _one_batch_per_event(agg: StreamAggregates, events: pd.DataFrame, view: str) -> pd.DataFrame:
    """The first row each single-event batch gives for that event's key."""
    key = "user_id" if view == "user_stream" else "item_id"
    firsts = []
    for k in range(len(events)):
        rows = agg.update(events.iloc[[k]])[view]
        firsts.append(rows[rows[key] == events[key].iloc[k]].iloc[:1])
    return pd.concat(firsts, ignore_index=True)


def test_one_row_per_changed_key_per_batch():
    events = make_events([("u", "a", 0), ("u", "b", 5), ("v", "a", 7), ("u", "a", 9)])
    rows = StreamAggregates().update(events)
    assert rows["user_stream"][["user_id", "event_timestamp", "events_1h"]].values.tolist() == [
        ["u", at(9), 3], ["v", at(7), 1]]
    assert rows["item_stream"][["item_id", "pop_short"]].values.tolist() == [["a", 3], ["b", 1]]


def test_user_windows_count_the_last_hour_and_day():
    events = make_events([("u", "a", 0), ("u", "b", 50), ("u", "a", 100), ("u", "c", 1500)])
    per_event = _one_batch_per_event(StreamAggregates(), events, "user_stream")
    # at 100 min: events in (40, 100] -> 2; in the day -> 3; distinct {a, b} -> 2
    assert per_event.iloc[2][["events_1h", "events_1d", "distinct_items_1d"]].tolist() == [2, 3, 2]
    # at 1500 min (25 h): the hour holds only itself; the day (60, 1500] holds 100 and 1500
    assert per_event.iloc[3][["events_1h", "events_1d", "distinct_items_1d"]].tolist() == [1, 2, 2]
    assert per_event.iloc[3]["seconds_since_prev"] == pytest.approx((1500 - 100) * 60)
    assert per_event.iloc[3]["last_item"] == "c"


def test_item_popularity_and_trend_match_hand_computation():
    agg = StreamAggregates(short_window_s=600, long_window_s=3600)
    events = make_events([("u1", "a", 0), ("u2", "a", 30), ("u3", "a", 55), ("u4", "a", 58),
                          ("u5", "a", 59, "skip")])
    rows = agg.update(events)["item_stream"]
    assert len(rows) == 1  # one item changed; the skip adds nothing
    last = rows.iloc[0]
    # at 58 min: short window (48, 58] holds 55 and 58; long window holds all four
    assert (last["pop_short"], last["pop_long"]) == (2, 4)
    assert math.isclose(last["pop_trend"], (2 / 600) / (4 / 3600))


def test_expired_windows_emit_rows_as_of_the_stream_clock():
    agg = StreamAggregates()
    agg.update(make_events([("u", "a", 0)]))
    rows = agg.update(make_events([("v", "b", 90)], start_id=1))
    user = _last(rows["user_stream"], "user_id", "u")
    item = _last(rows["item_stream"], "item_id", "a")
    assert user["event_timestamp"] == at(90)
    assert (user["events_1h"], user["events_1d"]) == (0, 1)
    assert (item["pop_short"], item["pop_long"], item["pop_trend"]) == (0, 1, 0.0)


def test_row_times_strictly_increase_per_key_for_ties_and_late_events():
    events = make_events([("u", "a", 10), ("u", "b", 10), ("u", "c", 5)])
    rows = _one_batch_per_event(StreamAggregates(), events, "user_stream")
    times = rows["event_timestamp"].tolist()
    assert times == [at(10), at(10) + pd.Timedelta(microseconds=1),
                     at(10) + pd.Timedelta(microseconds=2)]
    late = rows.iloc[2]
    # the late event counts in the windows but does not become the last event
    assert (late["events_1h"], late["last_item"]) == (3, "b")
    # the two newest events are the tie at 10 min: gap 0
    assert late["seconds_since_prev"] == 0.0


def test_redelivered_event_ids_are_ignored():
    agg = StreamAggregates()
    events = make_events([("u", "a", 0), ("u", "b", 1)])
    agg.update(events)
    again = agg.update(events)
    assert again["user_stream"].empty and again["item_stream"].empty


def test_events_older_than_every_window_change_nothing():
    agg = StreamAggregates()
    agg.update(make_events([("u", "a", 3000)]))
    rows = agg.update(make_events([("u", "b", 0)], start_id=5))
    assert rows["user_stream"].empty


def test_accepts_arrow_tables_and_survives_pickle():
    agg = StreamAggregates()
    agg.update(pa.Table.from_pandas(make_events([("u", "a", 0)]), preserve_index=False))
    clone = pickle.loads(pickle.dumps(agg))
    rows = clone.update(make_events([("u", "b", 1)], start_id=1))["user_stream"]
    assert rows.iloc[0]["events_1h"] == 2


def test_update_does_not_mutate_its_input():
    events = make_events([("u", "a", 0), ("u", "b", 1)])
    before = events.copy()
    StreamAggregates().update(events)
    pd.testing.assert_frame_equal(events, before)


def test_missing_columns_are_named():
    with pytest.raises(FeatureInputError, match=r"\['item_id'\]"):
        StreamAggregates().update(make_events([("u", "a", 0)]).drop(columns="item_id"))


def test_attributes_emit_only_changes_and_keep_unmentioned_values():
    ctx = json.dumps
    events = make_events([
        ("u", "a", 0, None, ctx({"category": 3, "price": 9.5})),
        ("u", "a", 1, None, ctx({"category": 3})),
        ("u", "a", 2, None, ctx({"price": 7})),
        ("v", "b", 3, None, ctx({"user_segment": "pro", "user_country": "FR"})),
    ])
    tracker = AttributeTracker()
    rows = tracker.update(events)
    items = rows["item_attributes"]
    assert items[["item_id", "category", "price"]].values.tolist() == [
        ["a", "3", 9.5], ["a", "3", 7.0]]
    assert items["event_timestamp"].tolist() == [at(0), at(2)]
    assert rows["user_attributes"][["user_id", "segment", "country"]].values.tolist() == [
        ["v", "pro", "FR"]]
