"""The worker's durable pieces without a broker: archive, snapshots, dedup window, hand-over."""

from __future__ import annotations

import pickle
from datetime import date, datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastslow.errors import ConfigError
from streaming.archive import ARCHIVE_SCHEMA, ArchiveSegment, EventArchive, archived_count, iter_archive
from streaming.dedup import DedupWindow
from streaming.durable import TMP_PREFIX
from streaming.holdings import Holdings
from streaming.normalize import EVENT_SCHEMA
from streaming.partitioning import partition_of
from streaming.snapshots import PartitionSnapshot, SnapshotError, SnapshotStore, WorkerSnapshot
from worker_fixtures import BASE_MS, UserItemCounts, event_table, replay

DAY_MS = 86_400_000


def _segment(partition: int, table: pa.Table, first_offset: int) -> ArchiveSegment:
    segment = ArchiveSegment(partition)
    segment.add(table, np.arange(first_offset, first_offset + table.num_rows))
    return segment


def _archived_ids(root) -> list[str]:
    return sorted(i for t in iter_archive(root) for i in t.column("event_id").to_pylist())


def test_archive_splits_by_date_and_a_rewritten_range_does_not_duplicate(tmp_path):
    table = event_table(6, start_ms=BASE_MS - 3000)  # crosses no midnight...
    late = event_table(2, start_ms=BASE_MS + DAY_MS, prefix="late")  # ...these are a day later
    archive = EventArchive(tmp_path)
    both = pa.concat_tables([table, late])
    written = archive.write(_segment(1, both, 100))
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "date=2024-05-01/partition=1/00000000000000000100-00000000000000000107.parquet",
        "date=2024-05-02/partition=1/00000000000000000100-00000000000000000107.parquet"]
    archive.write(_segment(1, both, 100))  # the same range delivered again
    assert _archived_ids(tmp_path) == sorted(both.column("event_id").to_pylist())
    assert next(iter_archive(tmp_path)).schema == EVENT_SCHEMA
    assert pq.read_schema(written[0]) == ARCHIVE_SCHEMA  # the files also keep partition and offset


def test_truncate_removes_later_files_and_cuts_one_that_straddles(tmp_path):
    archive = EventArchive(tmp_path)
    table = event_table(30)
    archive.write(_segment(0, table.slice(0, 10), 0))     # offsets 0-9
    archive.write(_segment(0, table.slice(10, 10), 10))   # offsets 10-19
    archive.write(_segment(0, table.slice(20, 10), 20))   # offsets 20-29
    archive.write(_segment(2, event_table(5, seed=9), 0))  # another partition: untouched
    (tmp_path / "date=2024-05-01" / "partition=0" / f"{TMP_PREFIX}123-x.parquet").write_bytes(b"partial")
    assert archive.truncate(0, 15) == 15  # 15..29
    names = sorted(p.name for p in (tmp_path / "date=2024-05-01" / "partition=0").iterdir())
    assert names == ["00000000000000000000-00000000000000000009.parquet",
                     "00000000000000000010-00000000000000000014.parquet"]
    kept = [i for t in iter_archive(tmp_path) for i in t.column("event_id").to_pylist() if i.startswith("e0-")]
    assert kept == table.column("event_id").to_pylist()[:15]
    assert archive.truncate(2, 5) == 0


def test_iter_archive_since_keeps_later_events_only(tmp_path):
    archive = EventArchive(tmp_path)
    archive.write(_segment(0, event_table(10, start_ms=BASE_MS), 0))
    archive.write(_segment(1, event_table(10, start_ms=BASE_MS + 2 * DAY_MS, prefix="x"), 0))
    since = datetime(2024, 5, 1, 12, 0, 5, tzinfo=timezone.utc)
    assert sum(t.num_rows for t in iter_archive(tmp_path, since=since)) == 5 + 10
    assert sum(t.num_rows for t in iter_archive(tmp_path, since=date(2024, 5, 2))) == 10
    with pytest.raises(ConfigError):
        list(iter_archive(tmp_path, since=datetime(2024, 5, 1)))


def test_archived_count_reads_finished_files_and_skips_one_being_written(tmp_path):
    archive = EventArchive(tmp_path)
    archive.write(_segment(0, event_table(10), 0))
    archive.write(_segment(3, event_table(4, seed=5), 0))
    (tmp_path / "date=2024-05-01" / "partition=0" / f"{TMP_PREFIX}123-x.parquet").write_bytes(b"")  # mid-write
    assert archived_count(tmp_path) == 14
    assert archived_count(tmp_path / "missing") == 0


def test_dedup_window_forgets_the_oldest_and_restores_in_order():
    window = DedupWindow(3, ["a", "b", "c", "d"])
    assert window.ids() == ["b", "c", "d"] and "a" not in window
    assert window.add("c") is False and window.add("a") is True
    assert DedupWindow(3, window.ids()).ids() == ["c", "d", "a"]


def test_partition_snapshot_is_never_rolled_back_and_formats_are_checked(tmp_path):
    store = SnapshotStore(tmp_path)
    assert store.write_partition(PartitionSnapshot("t", 3, 50, "a", ["u"], ["e"], b"state"))
    assert not store.write_partition(PartitionSnapshot("t", 3, 49, "b", [], [], None))
    assert store.write_partition(PartitionSnapshot("t", 3, 50, "b", ["v"], [], None))
    assert store.read_partition(3).writer == "b"
    store.partition_path(4).write_bytes(pickle.dumps({"format": 99}))
    with pytest.raises(SnapshotError, match="format 99"):
        store.read_partition(4)
    store.partition_path(5).write_bytes(b"garbage")
    with pytest.raises(SnapshotError, match="cannot be read"):
        store.read_partition(5)


def test_one_worker_id_cannot_run_twice(tmp_path):
    store = SnapshotStore(tmp_path)
    held = store.lock("w1")
    with pytest.raises(ConfigError, match="another --worker-id"):
        store.lock("w1")
    held.close()
    store.lock("w1").close()
    with pytest.raises(ConfigError):
        store.lock("../w1")


def _holdings(tmp_path, worker_id: str) -> Holdings:
    return Holdings(SnapshotStore(tmp_path / "snap"), EventArchive(tmp_path / "archive"), topic="t",
                    group_id="g", worker_id=worker_id, dedup_window=100)


def _learn_into(holdings: Holdings, model: UserItemCounts, table: pa.Table, n_partitions: int = 2) -> None:
    """What the worker does for each event: learn it and note its user on its partition."""
    replay(model, table)
    for user in table.column("user_id").to_pylist():
        holdings.held[partition_of(user, n_partitions)].users.add(user)
    for p, holding in holdings.held.items():
        holding.position = (holding.position or 0) + 10


def test_users_move_with_their_partition_and_stay_with_the_old_owner_otherwise(tmp_path):
    table = event_table(200, users=20)
    a, model_a = _holdings(tmp_path, "a"), UserItemCounts()
    a.assign([0, 1], model_a)
    a.start_at(0, 0), a.start_at(1, 0)
    _learn_into(a, model_a, table)
    a.snapshot(model_a)
    b, model_b = _holdings(tmp_path, "b"), UserItemCounts()
    assert b.assign([1], model_b) == {1: 10}
    a.assign([0], model_a)  # a gives partition 1 up
    reference = replay(UserItemCounts(), table).user_state()
    moved = {u: s for u, s in reference.items() if partition_of(u, 2) == 1}
    assert moved and model_b.user_state() == moved
    assert model_a.user_state() == {u: s for u, s in reference.items() if partition_of(u, 2) == 0}
    assert model_b.global_state() == UserItemCounts().global_state()  # global state stays with a


def test_a_restarted_worker_restores_its_model_and_keeps_its_own_newer_state(tmp_path):
    table = event_table(100, users=10)
    a, model = _holdings(tmp_path, "a"), UserItemCounts()
    a.assign([0, 1], model)
    a.start_at(0, 0), a.start_at(1, 0)
    _learn_into(a, model, table)
    a.snapshot(model)
    again = _holdings(tmp_path, "a")
    restored = again.restore_worker(UserItemCounts())
    assert restored.user_state() == model.user_state() and restored.global_state() == model.global_state()
    assert again.assign([0, 1], restored) == {0: 10, 1: 10}
    with pytest.raises(SnapshotError, match="holds a UserItemCounts model"):
        _holdings(tmp_path, "a").restore_worker(object())


def test_worker_snapshot_round_trips_offsets_users_and_dedup(tmp_path):
    store = SnapshotStore(tmp_path)
    store.write_worker(WorkerSnapshot("t", "g", "w", {"model": 1}, {0: 5}, {0: ["u"]}, {0: ["e1", "e2"]}))
    back = store.read_worker("w")
    assert (back.model, back.offsets, back.users, back.dedup) == ({"model": 1}, {0: 5}, {0: ["u"]}, {0: ["e1", "e2"]})
    assert store.read_worker("other") is None
