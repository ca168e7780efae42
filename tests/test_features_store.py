"""The feature store client against a real Feast repository with the sqlite online store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from features_fixtures import (
    applied_repo,
    at,
    check_newer_event_time_wins,
    check_replay_after_restart_keeps_newer,
    check_stored_time_precision,
    make_events,
    user_row,
)

from features.errors import FeatureInputError
from features.schema import VIEWS
from features.store import FeatureStoreClient

pytestmark = pytest.mark.slow  # applies a Feast repository (~7 s once per session)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return applied_repo(tmp_path_factory, "sqlite-store")


def test_pushed_events_read_back_with_hand_computed_values(repo):
    client = FeatureStoreClient(repo)
    events = make_events([
        ("alice", "a", 0, "view", json.dumps({"category": "shoes", "price": 30})),
        ("alice", "b", 20, "click"),
        ("bob", "a", 30, "purchase", json.dumps({"user_segment": "pro"})),
        ("alice", "a", 40, "cart"),
    ])
    written = client.push_events(events)
    assert written == {"user_stream": 2, "item_stream": 2, "user_attributes": 1,
                       "item_attributes": 1}
    context = client.lookup("alice", ["a", "b", "never-seen"])
    assert context.user == {"events_1h": 3, "events_1d": 3, "distinct_items_1d": 2,
                            "last_item": "a", "last_event_type": "cart",
                            "seconds_since_prev": 1200.0, "segment": "", "country": ""}
    assert context.items["pop_short"].tolist() == [3, 1, 0]
    assert context.items["pop_trend"].tolist() == pytest.approx([24.0, 24.0, 0.0])
    assert context.items["category"].tolist() == ["shoes", "", ""]
    assert context.items["price"].tolist() == [30.0, 0.0, 0.0]
    assert client.lookup("bob", []).user["segment"] == "pro"


def test_missing_features_fall_back_to_defaults_and_are_counted(repo):
    client = FeatureStoreClient(repo)
    client.push_events(make_events([("carol", "m", 0)]))
    context = client.lookup("nobody", ["m", "n1", "n2"])
    assert context.user["events_1d"] == 0 and context.user["seconds_since_prev"] == -1.0
    assert context.user_found == {"user_stream": False, "user_attributes": False}
    assert context.items_found["item_stream"].tolist() == [True, False, False]
    assert context.items["pop_long"].dtype == np.int64
    assert context.missing == 2 + 2 + 3  # user views, item_stream n1/n2, item_attributes all
    assert dict(client.missing) == {"user_stream": 1, "user_attributes": 1, "item_stream": 2,
                                    "item_attributes": 3}
    assert dict(client.reads) == {"user_stream": 1, "user_attributes": 1, "item_stream": 3,
                                  "item_attributes": 3}
    assert client.lookups == 1


def test_newer_event_time_wins_sqlite(repo):
    check_newer_event_time_wins(FeatureStoreClient(repo), "dave")


def test_replay_after_restart_keeps_newer_values_sqlite(repo):
    check_replay_after_restart_keeps_newer(repo, "erin")


def test_sub_second_updates_sqlite(repo):
    check_stored_time_precision(repo, "frank", same_second_rejected=True)


def test_every_newer_row_goes_offline_and_only_the_newest_online(repo):
    client = FeatureStoreClient(repo)
    events = make_events([("gina", "z", 0), ("gina", "z", 5), ("gina", "y", 9)])
    for k in range(len(events)):
        client.push_events(events.iloc[[k]])
    offline = client.offline.read("user_stream").to_pandas()
    mine = offline[offline["user_id"] == "gina"].sort_values("event_timestamp")
    assert mine["events_1h"].tolist() == [1, 2, 3]
    assert mine["event_timestamp"].tolist() == [at(0), at(5), at(9)]
    assert client.lookup("gina", []).user["events_1h"] == 3


def test_write_rows_names_missing_columns(repo):
    client = FeatureStoreClient(repo)
    with pytest.raises(FeatureInputError, match="events_1d"):
        client.write_rows("user_stream", user_row("x", at(0), 1).drop(columns="events_1d"))


def test_a_catalogue_table_is_cast_to_the_view_types(repo):
    client = FeatureStoreClient(repo)
    catalogue = pd.DataFrame({"item_id": ["k1", "k2"], "category": [3, 7], "price": [10, None],
                              "introduced": "2024", "event_timestamp": [at(-1e4)] * 2})
    assert client.write_rows("item_attributes", catalogue) == 2
    context = client.lookup("anyone", ["k1", "k2"])
    assert context.items["category"].tolist() == ["3", "7"]
    assert context.items["price"].tolist() == [10.0, 0.0]


def test_fast_sqlite_reads_equal_feasts_own(repo):
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    from features.store import _entity_key

    client = FeatureStoreClient(repo)
    client.push_events(make_events([("hana", "p", 0), ("ivan", "q", 0.5), ("hana", "q", 1)]))
    client.write_rows("user_stream", user_row("ivan", at(2) + pd.Timedelta(milliseconds=700), 4))
    assert type(client._online).__name__ == "FastSqliteOnlineStore"
    config = client.store.config
    cases = [("user_stream", ["hana", "ivan", "nobody"]), ("item_stream", ["q", "p", "no-item"])]
    for view, keys in cases:
        entity_keys = [_entity_key(VIEWS[view].key, k) for k in keys]
        fv = client.store.get_feature_view(view)
        fast = client._online.online_read(config, fv, entity_keys)
        stock = SqliteOnlineStore().online_read(config, fv, entity_keys)
        assert fast == stock and fast[2] == (None, None) and fast[0][0] is not None
        # the scoring read: the same values as picking them out of Feast's rows, ids repeated too
        asked = [*keys, keys[0]]
        columns, found = client._online.read_columns(config, fv, VIEWS[view].key, asked, VIEWS[view].defaults)
        rows = SqliteOnlineStore().online_read(config, fv, [_entity_key(VIEWS[view].key, k) for k in asked])
        assert found == [values is not None for _, values in rows] == [True, True, False, True]
        for feature, default in VIEWS[view].defaults.items():
            want = [default if values is None else getattr(values[feature], values[feature].WhichOneof("val"))
                    for _, values in rows]
            assert columns[feature] == want, feature
