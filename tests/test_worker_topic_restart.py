"""A worker restored on a topic that started over skips no event (issue 15, finding 2).

The embedded broker on memory storage loses its log when restarted: the topic comes back with
offsets from 0 and a new topic id, while the worker's snapshot says to resume at the old
offsets. Resuming there would skip the new log's first events on each partition (with a lag
of 0 shown). The worker must notice, say so with the numbers, count it, keep its fast state,
and resume at the committed offset or the log start.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from worker_fixtures import UserItemCounts

from infra.broker import EmbeddedBroker
from serving.metrics import ServingMetrics
from streaming.archive import archive_dir, iter_archive
from streaming.kafka import TOPIC_INTERACTIONS, default_topics, ensure_topics, make_producer
from streaming.worker import Worker
from streaming.worker_stats import WorkerStats

pytestmark = [pytest.mark.broker, pytest.mark.slow]

GROUP = "restart-test"


def produce(bootstrap: str, per_partition: int, tag: str) -> None:
    """``per_partition`` events on each of partitions 0 and 1, users ``<tag>-p<partition>``."""
    producer = make_producer(bootstrap)
    now = time.time()
    try:
        futures = [producer.send(TOPIC_INTERACTIONS, partition=p, key=f"{tag}-p{p}".encode(), value=json.dumps(
            {"user_id": f"{tag}-p{p}", "item_id": f"{tag}-{p}-{n}", "timestamp": now + n}).encode())
            for p in (0, 1) for n in range(per_partition)]
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close()


def worker(bootstrap: str, data_dir) -> Worker:
    return Worker(UserItemCounts(), bootstrap, group_id=GROUP, data_dir=data_dir, worker_id="w1",
                  durable=False, flush_interval_s=0.2,
                  consumer_options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000})


def learned(model: UserItemCounts) -> int:
    return sum(state["events"] for state in model._users.values())


def run_until(w: Worker, condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (stats {w.stats.as_dict()})")
        w.step()


def first_life(broker: EmbeddedBroker, data_dir) -> None:
    """Four events, two per partition, applied and snapshotted at offsets [2, 2]."""
    produce(broker.bootstrap, 2, "before")
    with worker(broker.bootstrap, data_dir) as w:
        run_until(w, lambda: w.stats.events_applied == 4, "the first 4 events")
    broker.restart()   # memory storage: the log, the topic and the committed offsets are gone
    ensure_topics(broker.bootstrap, default_topics(2))


@pytest.fixture
def broker(tmp_path):
    with EmbeddedBroker(port=0, partitions=2, data_dir=tmp_path / "broker", stop_timeout=2.0) as started:
        yield started


def test_a_new_topic_incarnation_is_detected_before_any_fetch(broker, tmp_path, caplog):
    first_life(broker, tmp_path)
    produce(broker.bootstrap, 3, "after")   # offsets 0..2: the old position 2 now lies *inside* the log
    caplog.set_level(logging.WARNING, logger="streaming")
    with worker(broker.bootstrap, tmp_path) as w:
        assert learned(w.model) == 4                      # the snapshot's fast state is back
        run_until(w, lambda: w.stats.events_applied == 6, "the 6 events of the new log")
        run_until(w, lambda: w.stats.lag.keys() == {0, 1}, "a lag for both partitions")
        assert learned(w.model) == 10 and w.stats.offset_resets == 2 and w.stats.total_lag == 0
        assert {w.holdings.held[p].position for p in (0, 1)} == {3}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not resuming at offset 2" in m and "topic incarnation" in m for m in warnings), warnings
    archived = sorted(u for t in iter_archive(archive_dir(tmp_path, TOPIC_INTERACTIONS))
                      for u in t.column("user_id").to_pylist())
    assert archived == ["after-p0"] * 3 + ["after-p1"] * 3 + ["before-p0"] * 2 + ["before-p1"] * 2


def test_a_position_past_the_log_end_is_reset_when_the_broker_gives_no_topic_id(broker, tmp_path, monkeypatch,
                                                                                caplog):
    first_life(broker, tmp_path)
    monkeypatch.setattr(Worker, "_topic_id", lambda self: None)   # a broker or client without topic ids
    caplog.set_level(logging.WARNING, logger="streaming")
    with worker(broker.bootstrap, tmp_path) as w:
        run_until(w, lambda: w.stats.offset_resets == 2, "both partitions' positions to be found past the end")
        produce(broker.bootstrap, 1, "after")             # offset 0 on each partition: below the old position
        run_until(w, lambda: w.stats.events_applied == 2, "the 2 events of the new log")
        assert learned(w.model) == 6 and w.stats.total_lag == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not resuming at offset 2 (the log now runs from 0 to 0)" in m for m in warnings), warnings


def test_metrics_show_resets_and_never_hide_a_position_past_the_end():
    stats = WorkerStats(worker_id="w1")
    stats.offset_resets, stats.lag = 2, {0: -3, 1: 5}
    metrics = ServingMetrics()
    metrics.watch(lambda: {"worker": stats, "watcher": None, "features": None})
    text = metrics.render().decode()
    assert "fastslow_offset_resets_total 2.0" in text
    assert 'fastslow_consumer_lag{partition="0"} -3.0' in text
    assert "fastslow_consumer_lag_total 8.0" in text   # 3 past the end + 5 behind: never 0
