"""Point-in-time training frames from a real Feast repository (parquet offline store)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from features_fixtures import applied_repo, at, make_events, user_row

from features.errors import TrainingFrameError
from features.store import FeatureStoreClient
from features.training import training_frame

pytestmark = pytest.mark.slow  # applies a Feast repository (~7 s once per session)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return FeatureStoreClient(applied_repo(tmp_path_factory, "training"))


def test_value_written_after_the_event_is_not_used(client):
    client.write_rows("user_stream", user_row("uma", at(-60), 3))
    client.write_rows("user_stream", user_row("uma", at(60), 7))  # one hour after the event
    frame = client.training_frame(make_events([("uma", "a", 0), ("uma", "a", 120)]))
    assert frame["events_1h"].tolist() == [3, 7]


def test_row_written_at_the_event_time_is_not_used(client):
    # a batch's rows describe the state after it: an event must not see its own label, nor
    # the state after a same-instant event of its batch
    events = make_events([("vic", "a", 0), ("vic", "b", 10), ("vic", "c", 10)], start_id=100)
    client.push_events(events.iloc[:1])
    client.push_events(events.iloc[1:])
    frame = client.training_frame(events)
    assert frame["events_1h"].tolist() == [0, 1, 1]
    assert frame["last_item"].tolist() == ["", "a", "a"]
    assert frame["pop_long"].tolist() == [0, 0, 0]


def test_entity_row_earlier_than_all_feature_rows_is_kept_with_defaults(client):
    client.write_rows("user_stream", user_row("walt", at(0), 4))
    events = make_events([("walt", "never-seen", -30), ("walt", "a", 30), ("nobody", "a", 30)])
    frame = client.training_frame(events)
    assert len(frame) == 3
    assert frame["events_1h"].tolist() == [0, 4, 0]
    assert frame["seconds_since_prev"].tolist() == [-1.0, 1.0, -1.0]
    assert frame.attrs["defaults"]["user_stream"] == 2
    assert frame.attrs["defaults"]["user_attributes"] == 3


def test_events_keep_their_order_columns_and_types(client):
    events = make_events([("xia", "q", 50), ("xia", "q", 5), ("yan", "r", 5)], start_id=200)
    frame = client.training_frame(events)
    assert frame["event_id"].tolist() == ["e200", "e201", "e202"]
    assert list(frame.columns[: len(events.columns)]) == list(events.columns)
    assert str(frame["events_1h"].dtype) == "int64" and frame["last_item"].dtype == object


def test_training_frame_accepts_a_bare_feast_store(client):
    frame = training_frame(client.store, make_events([("uma", "a", 0)]), views=["user_stream"])
    assert frame["events_1h"].tolist() == [3]
    assert "pop_long" not in frame.columns


def test_rows_feast_fails_to_answer_raise(tmp_path_factory):
    # With a TTL, Feast ignores rows older than it: those events have an earlier feature row
    # but get no answer, which must raise rather than silently become defaults.
    from features.repo.definitions import user_stream

    client = FeatureStoreClient(applied_repo(tmp_path_factory, "ttl"))
    client.write_rows("user_stream", user_row("zed", at(0), 2))
    short_lived = user_stream.__copy__()
    short_lived.ttl = timedelta(seconds=1)
    client.store.apply([short_lived])
    with pytest.raises(TrainingFrameError, match="user_stream lost or duplicated 1"):
        training_frame(client.store, make_events([("zed", "a", 60)]), views=["user_stream"])
