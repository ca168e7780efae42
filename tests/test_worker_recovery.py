"""Fast state survives kill -9 and moves between workers: exact comparisons with a replay."""

from __future__ import annotations

import signal
import threading

import pyarrow as pa
import pytest

from streaming.archive import archive_dir, iter_archive
from streaming.kafka import committed_offsets, make_producer
from streaming.partitioning import partition_of
from streaming.producer import produce_events
from streaming.snapshots import SnapshotStore, snapshot_dir
from streaming.worker import Worker
from worker_fixtures import (UserItemCounts, committed_total, event_table, make_topics, replay, start_worker, unique,
                             wait_for, wait_in_log)

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_kill_9_mid_stream_then_restart_gives_the_state_of_an_uninterrupted_replay(broker, tmp_path):
    topic, _ = make_topics(broker)
    group, log = unique("group"), tmp_path / "worker.log"
    table = event_table(20_000, users=300, items=200, seed=3)
    first = start_worker(broker, topic, group, tmp_path, log)
    try:
        wait_in_log(log, "assigned partitions", first, 30)
        producer = make_producer(broker)
        sending = threading.Thread(target=produce_events, args=(producer, table, topic, 5000))
        sending.start()
        wait_for(lambda: committed_total(broker, group, topic) >= 6000, 30, "the worker to get a third in")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = committed_total(broker, group, topic)
        second = start_worker(broker, topic, group, tmp_path, log)
        sending.join(30)
        producer.close()
        wait_for(lambda: committed_total(broker, group, topic) == table.num_rows, 60, "every event committed")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        for process in (first, locals().get("second")):
            if process is not None and process.poll() is None:
                process.kill()
    assert first.returncode == -signal.SIGKILL and killed_at < table.num_rows
    assert "restored worker snapshot" in log.read_text()

    snapshot = SnapshotStore(snapshot_dir(tmp_path, topic, group)).read_worker("w1")
    expected = replay(UserItemCounts(), table)
    assert snapshot.model.user_state() == expected.user_state()  # nothing lost, nothing twice
    assert snapshot.model.global_state() == expected.global_state()
    assert snapshot.offsets == {p: o for p, o in committed_offsets(broker, group, topic).items()}
    archived = [i for t in iter_archive(archive_dir(tmp_path, topic)) for i in t.column("event_id").to_pylist()]
    assert len(archived) == table.num_rows and set(archived) == set(table.column("event_id").to_pylist())


def test_sigterm_finishes_the_batch_commits_snapshots_and_exits_0(broker, tmp_path):
    topic, _ = make_topics(broker)
    group, log = unique("group"), tmp_path / "worker.log"
    table = event_table(700, users=20)
    producer = make_producer(broker)
    produce_events(producer, table, topic)
    producer.close()
    worker = start_worker(broker, topic, group, tmp_path, log, flush_interval=600, snapshot_interval=600)
    try:
        wait_in_log(log, '"records": 700', worker, 30)  # consumed, but nothing flushed or committed yet
        assert committed_total(broker, group, topic) == 0
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert committed_total(broker, group, topic) == 700
    snapshot = SnapshotStore(snapshot_dir(tmp_path, topic, group)).read_worker("w1")
    assert sum(snapshot.offsets.values()) == 700
    assert snapshot.model.user_state() == replay(UserItemCounts(), table).user_state()
    summary = log.read_text().strip().splitlines()[-1]
    assert '"events_applied": 700' in summary and summary.startswith("{")


def _run_in_thread(worker: Worker) -> threading.Thread:
    def run() -> None:
        with worker:
            worker.run()

    thread = threading.Thread(target=run, name=worker.worker_id)
    thread.start()
    return thread


def test_two_workers_split_partitions_and_the_survivor_takes_over_users_with_their_state(broker, tmp_path):
    topic, dlq = make_topics(broker)
    group = unique("group")
    parts = [event_table(n, users=40, items=30, seed=s, prefix=f"p{s}-") for n, s in ((1500, 1), (800, 2), (500, 3))]
    producer = make_producer(broker)

    def send(table: pa.Table) -> None:
        produce_events(producer, table, topic)

    workers = {name: Worker(UserItemCounts(), broker, topic=topic, dlq_topic=dlq, group_id=group, data_dir=tmp_path,
                            worker_id=name, flush_interval_s=0.2) for name in ("a", "b")}
    a, b = workers["a"], workers["b"]
    threads = {"a": _run_in_thread(a)}
    try:
        send(parts[0])
        wait_for(lambda: a.stats.events_applied == parts[0].num_rows, 30, "a to apply the first part")
        threads["b"] = _run_in_thread(b)
        wait_for(lambda: a.stats.assigned and b.stats.assigned, 30, "a rebalance giving both workers partitions")
        assert sorted(a.stats.assigned + b.stats.assigned) == [0, 1, 2, 3]
        seen = replay(UserItemCounts(), parts[0]).user_state()
        with b.lock:  # b adopted its partitions' users from a's snapshots
            assert b.model.user_state() == {u: s for u, s in seen.items() if partition_of(u, 4) in b.stats.assigned}
        with a.lock:  # and a forgot them
            assert set(a.model.users()) == {u for u in seen if partition_of(u, 4) in a.stats.assigned}

        send(parts[1])
        wait_for(lambda: committed_total(broker, group, topic) == 2300, 30, "both workers to commit the second part")
        a.stop()
        threads["a"].join(30)  # a leaves the group after a final snapshot
        wait_for(lambda: b.stats.assigned == [0, 1, 2, 3], 30, "b to take over every partition")
        send(parts[2])
        wait_for(lambda: b.caught_up() and committed_total(broker, group, topic) == 2800, 30, "b to apply the rest")
    finally:
        producer.close()
        for worker in workers.values():
            worker.stop()
        for thread in threads.values():
            thread.join(30)
    expected = replay(UserItemCounts(), pa.concat_tables(parts)).user_state()
    assert b.model.user_state() == expected  # every user's state, wherever it was learnt
    assert not a.stats.assigned and not threads["a"].is_alive() and not threads["b"].is_alive()
