"""Helpers shared by the feature-store tests: event tables and applied Feast repositories.

Applying the repository costs several seconds, so the first test session call applies it
once into a template folder and every module gets a copy (the registry and the sqlite file
only use paths relative to the folder).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from features.repository import apply_repo
from features.store import FeatureStoreClient

T0 = pd.Timestamp("2024-03-01 12:00:00", tz="UTC")


def at(minutes: float) -> pd.Timestamp:
    """`T0` plus `minutes`."""
    return T0 + pd.Timedelta(minutes=minutes)


def make_events(rows: list[tuple], start_id: int = 0) -> pd.DataFrame:
    """Event-log frame from ``(user, item, minutes after T0[, event_type[, context]])`` tuples."""
    full = [(u, i, m, *rest, *(None, None)[len(rest):]) for u, i, m, *rest in rows]
    return pd.DataFrame({
        "event_id": [f"e{start_id + k}" for k in range(len(rows))],
        "user_id": [r[0] for r in full],
        "item_id": [r[1] for r in full],
        "timestamp": pd.Series([at(r[2]) for r in full]).astype("datetime64[ms, UTC]"),
        "event_type": [r[3] or "click" for r in full],
        "value": 1.0,
        "context": [r[4] for r in full],
    })


def applied_repo(tmp_path_factory, name: str, online_store: str = "sqlite",
                 redis_url: str | None = None) -> Path:
    """A fresh, applied repository folder (a copy of a once-applied template)."""
    template = tmp_path_factory.getbasetemp() / "feast-template"
    if not (template / "registry.db").exists():
        apply_repo(template)
    repo = tmp_path_factory.mktemp(name)
    shutil.copytree(template, repo, dirs_exist_ok=True)
    if online_store != "sqlite":
        apply_repo(repo, online_store, redis_url)
    return repo


def user_row(user: str, when: pd.Timestamp, events_1h: int) -> pd.DataFrame:
    """One hand-made `user_stream` row."""
    return pd.DataFrame({"user_id": [user], "event_timestamp": [when], "events_1h": [events_1h],
                         "events_1d": [events_1h], "distinct_items_1d": [1], "last_item": ["x"],
                         "last_event_type": ["click"], "seconds_since_prev": [1.0]})


def check_newer_event_time_wins(client: FeatureStoreClient, user: str) -> None:
    """Push a newer row, then an older one: the newer one stays (shared with the Redis test)."""
    assert client.write_rows("user_stream", user_row(user, at(60), 7)) == 1
    assert client.write_rows("user_stream", user_row(user, at(0), 1)) == 0
    assert client.lookup(user, []).user["events_1h"] == 7
    assert client.rejected["user_stream"] == 1


def check_replay_after_restart_keeps_newer(repo, user: str) -> None:
    """A restarted worker replaying older events (fresh state) does not overwrite newer values."""
    first = FeatureStoreClient(repo)
    first.push_events(make_events([(user, "a", 0), (user, "b", 10), (user, "c", 20)]))
    restarted = FeatureStoreClient(repo)
    restarted.push_events(make_events([(user, "a", 0)]))
    context = restarted.lookup(user, [])
    assert (context.user["events_1h"], context.user["last_item"]) == (3, "c")


def check_stored_time_precision(repo, user: str, same_second_rejected: bool) -> None:
    """Sub-second updates: exact within one client; a client that did not write the stored row
    can only beat it by a full second on sqlite (it keeps whole seconds), exactly on Redis."""
    writer = FeatureStoreClient(repo)
    half = pd.Timedelta(milliseconds=500)
    assert writer.write_rows("user_stream", user_row(user, T0 + half, 5)) == 1
    assert writer.write_rows("user_stream", user_row(user, T0 + half * 1.4, 6)) == 1
    other = FeatureStoreClient(repo)
    assert other.write_rows("user_stream", user_row(user, T0 + half * 1.2, 1)) == 0
    accepted = other.write_rows("user_stream", user_row(user, T0 + half * 1.8, 8))
    assert accepted == (0 if same_second_rejected else 1)
    assert other.write_rows("user_stream", user_row(user, T0 + half * 3, 9)) == 1
    assert other.lookup(user, []).user["events_1h"] == 9
