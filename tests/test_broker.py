"""The embedded broker on a real Tansu process: lifecycle, topics, ordering, groups, durability."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import TopicPartition

from fastslow.errors import ConfigError, ServiceError
from infra.broker import EmbeddedBroker
from infra.services import port_open
from streaming.kafka import (
    TOPIC_DLQ,
    TOPIC_FAST_STATE,
    TOPIC_INTERACTIONS,
    TopicSpec,
    committed_offsets,
    consumer_lag,
    end_offsets_of,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _pids_with_arg(fragment: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``fragment``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if fragment in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> dict[int, int]:
    producer = make_producer(bootstrap)
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in records]
        producer.flush()
        return end_offsets_of(f.get(timeout=10) for f in futures)
    finally:
        producer.close()


def _read_all(bootstrap: str, topic: str, partitions: int, expected: int, timeout: float = 20.0):
    consumer = make_consumer(bootstrap, None)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    records = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def test_start_stop_on_free_port_leaves_no_process(tmp_path):
    broker = EmbeddedBroker(port=0, data_dir=tmp_path)
    with broker:
        bootstrap = broker.bootstrap
        port = int(bootstrap.rsplit(":", 1)[1])
        assert port != 9092 and port_open("127.0.0.1", port)
        assert _pids_with_arg(f"tcp://127.0.0.1:{port}")
    assert not broker.running
    assert not port_open("127.0.0.1", port)
    assert _pids_with_arg(f"tcp://127.0.0.1:{port}") == []
    assert (tmp_path / "broker.log").exists()


def test_temporary_data_dir_is_removed_on_stop():
    broker = EmbeddedBroker(port=0)
    with broker:
        log_dir = broker.log_path.parent
        assert log_dir.is_dir()
    assert not log_dir.exists()


def test_default_topics_exist_with_their_partition_counts(broker):
    admin = make_admin(broker)
    try:
        described = admin.describe_topics([TOPIC_INTERACTIONS, TOPIC_DLQ, TOPIC_FAST_STATE])
    finally:
        admin.close()
    counts = {t["name"]: len(t["partitions"]) for t in described}
    assert counts == {TOPIC_INTERACTIONS: 4, TOPIC_DLQ: 1, TOPIC_FAST_STATE: 4}


def test_ensure_topics_creates_once_and_then_does_nothing(broker):
    spec = TopicSpec(_unique("idem"), partitions=3)
    assert ensure_topics(broker, [spec]) == [spec.name]
    assert ensure_topics(broker, [spec]) == []


def test_keyed_round_trip_keeps_each_users_order_across_partitions(broker):
    topic = _unique("order")
    ensure_topics(broker, [TopicSpec(topic, partitions=4)])
    users = [f"user-{u}" for u in range(20)]
    records = [(users[i % 20].encode(), f"{users[i % 20]}:{i // 20}".encode())
               for i in range(2000)]
    ends = _produce(broker, topic, records)
    assert sum(ends.values()) == 2000

    received = _read_all(broker, topic, 4, expected=2000)
    assert len(received) == 2000
    by_partition_order = sorted(received, key=lambda r: (r.partition, r.offset))
    sequences, partitions_of = defaultdict(list), defaultdict(set)
    for record in by_partition_order:
        user, seq = record.value.decode().split(":")
        assert record.key.decode() == user
        sequences[user].append(int(seq))
        partitions_of[user].add(record.partition)
    assert all(sequences[u] == list(range(100)) for u in users)  # complete, in produce order
    assert all(len(p) == 1 for p in partitions_of.values())       # one partition per user
    assert len(set().union(*partitions_of.values())) > 1          # users spread out


def test_lag_from_producer_ends_and_committed_offsets(broker):
    topic, group = _unique("lag"), _unique("group")
    ensure_topics(broker, [TopicSpec(topic, partitions=2)])
    ends = _produce(broker, topic, [(f"u{i}".encode(), b"x") for i in range(40)])
    consumer = make_consumer(broker, group)
    tp0 = TopicPartition(topic, 0)
    consumer.assign([tp0])
    from kafka.structs import OffsetAndMetadata

    consumer.commit({tp0: OffsetAndMetadata(ends[0] - 3, "", -1)})
    consumer.close()
    committed = committed_offsets(broker, group, topic)
    assert committed == {0: ends[0] - 3, 1: None}
    assert consumer_lag(ends, committed) == {0: 3, 1: ends[1]}


@pytest.mark.slow
def test_two_group_members_split_the_partitions(broker):
    """Each member polls in its own thread, as two workers would: a rebalance needs both to
    rejoin, which one thread alternating between blocking polls cannot guarantee under load."""
    import threading

    topic, group = _unique("split"), _unique("group")
    ensure_topics(broker, [TopicSpec(topic, partitions=4)])
    members = [make_consumer(broker, group, [topic]) for _ in range(2)]
    owned: list[set[int]] = [set(), set()]
    settled = threading.Event()

    def poll_loop(index: int) -> None:
        while not settled.is_set():
            members[index].poll(timeout_ms=200)
            owned[index] = {tp.partition for tp in members[index].assignment()}

    threads = [threading.Thread(target=poll_loop, args=(i,), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snapshot = [set(o) for o in owned]
            if all(snapshot) and sum(map(len, snapshot)) == 4:
                break
            time.sleep(0.1)
        settled.set()
        for thread in threads:
            thread.join(timeout=10)
        assert all(snapshot), f"a member got nothing: {snapshot}"
        assert snapshot[0].isdisjoint(snapshot[1]) and snapshot[0] | snapshot[1] == {0, 1, 2, 3}
    finally:
        settled.set()
        for member in members:
            member.close()


def test_startup_failure_reports_the_broker_log(tmp_path):
    broker = EmbeddedBroker(port=0, storage_engine="sqlite://nowhere.db", data_dir=tmp_path,
                            ready_timeout=10)
    with pytest.raises(ServiceError) as caught:
        broker.start()
    assert "exited with status" in str(caught.value)
    assert str(tmp_path / "broker.log") in str(caught.value)
    assert not broker.running


def test_a_taken_port_is_refused_instead_of_shared(broker, tmp_path):
    port = int(broker.rsplit(":", 1)[1])
    with pytest.raises(ServiceError, match=f"port {port} .* is in use"):
        EmbeddedBroker(port=port, data_dir=tmp_path).start()


def test_storage_engine_and_durable_dir_conflict(tmp_path):
    with pytest.raises(ConfigError, match="storage_engine"):
        EmbeddedBroker(storage_engine="memory://tansu/", durable_dir=tmp_path)


@pytest.mark.slow
def test_durable_restart_keeps_messages_and_committed_offsets(tmp_path):
    values = [f"event-{i}".encode() for i in range(300)]
    group = "durable-group"
    with EmbeddedBroker(port=0, durable_dir=tmp_path) as first:
        ends = _produce(first.bootstrap, TOPIC_INTERACTIONS,
                        [(f"u{i % 40}".encode(), v) for i, v in enumerate(values)])
        ends = {p: ends.get(p, 0) for p in range(4)}  # commit() also covers empty partitions
        consumer = make_consumer(first.bootstrap, group)
        consumer.assign([TopicPartition(TOPIC_INTERACTIONS, p) for p in range(4)])
        seen = 0
        deadline = time.monotonic() + 30
        while seen < 300 and time.monotonic() < deadline:
            seen += sum(len(b) for b in consumer.poll(timeout_ms=500).values())
        consumer.commit()
        consumer.close()
        first.restart(hard=True)  # broker process SIGKILLed, store kept: nothing lost
        assert committed_offsets(first.bootstrap, group, TOPIC_INTERACTIONS) == ends
    assert seen == 300
    assert _pids_with_arg(str(tmp_path)) == []  # weed is gone too

    with EmbeddedBroker(port=0, durable_dir=tmp_path) as second:
        assert committed_offsets(second.bootstrap, group, TOPIC_INTERACTIONS) == ends
        again = _read_all(second.bootstrap, TOPIC_INTERACTIONS, 4, expected=300)
    assert sorted(r.value for r in again) == sorted(values)


def _start_cli(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    cli = Path(sys.executable).parent / "fastslow"
    env = {**os.environ, "FASTSLOW_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([str(cli), "broker", "--port", "0", "--partitions", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        if line.startswith("Kafka bootstrap: "):
            return proc, line.split()[2]
    raise AssertionError(f"fastslow broker exited ({proc.wait()}) without printing its address")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_broker_command_serves_until_signalled_and_stops_the_broker(tmp_path, stop_signal):
    proc, bootstrap = _start_cli(tmp_path)
    try:
        admin = make_admin(bootstrap)
        assert TOPIC_INTERACTIONS in admin.list_topics()
        admin.close()
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=20) == 0
        assert "broker stopped" in proc.stdout.read()
    finally:
        proc.kill()
    assert _pids_with_arg(f"tcp://{bootstrap}") == []
    assert (tmp_path / "broker" / "broker.log").exists()


def test_broker_dies_with_a_killed_parent(tmp_path):
    proc, bootstrap = _start_cli(tmp_path)
    proc.kill()  # SIGKILL: no finally block runs in the parent
    proc.wait()
    deadline = time.monotonic() + 5
    while _pids_with_arg(f"tcp://{bootstrap}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_with_arg(f"tcp://{bootstrap}") == []


def test_bootstrap_or_embedded_uses_a_given_cluster_or_starts_one(broker):
    from infra.broker import bootstrap_or_embedded

    with bootstrap_or_embedded(broker) as given:
        assert given == broker
    with bootstrap_or_embedded(None, partitions=2) as started:
        assert started != broker
        admin = make_admin(started)
        counts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([TOPIC_INTERACTIONS])}
        admin.close()
        assert counts == {TOPIC_INTERACTIONS: 2}
    port = int(started.rsplit(":", 1)[1])
    assert not port_open("127.0.0.1", port)
