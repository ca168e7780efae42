"""The worker's fetch max wait goes up when the broker answers empty while data waits."""

from __future__ import annotations

from kafka import TopicPartition

from infra.fault_streams import make_topic
from streaming.kafka import FetchWait, make_consumer


def _longest_fetch_ms(consumer, polls: int) -> float:
    """Poll an empty partition; the longest fetch the broker held so far (kafka-python's metric)."""
    for _ in range(polls):
        consumer.poll(timeout_ms=500)
    return consumer.metrics()["consumer-fetch-manager-metrics"]["fetch-latency-max"]


def test_the_raised_wait_is_the_one_the_broker_holds_an_empty_fetch_for(broker):
    topic, _ = make_topic(broker, partitions=1, prefix="fetchwait")
    consumer = make_consumer(broker, None, fetch_max_wait_ms=10)
    consumer.assign([TopicPartition(topic, 0)])
    try:
        short = _longest_fetch_ms(consumer, 4)            # an empty topic: each fetch is held ~10 ms
        wait = FetchWait(consumer, patience=1, maximum_ms=640)
        assert [wait.after_poll(0, behind=True) for _ in range(6)] == [20, 40, 80, 160, 320, 640]
        long = _longest_fetch_ms(consumer, 4)             # now up to 640 ms each
    finally:
        consumer.close()
    assert short < 150 and long > 300, (short, long)


def test_a_flowing_or_caught_up_consumer_keeps_its_wait():
    class Fetcher:
        config = {"fetch_max_wait_ms": 10}

    class Consumer:
        _fetcher = Fetcher()

    wait = FetchWait(Consumer(), patience=2)
    for records, behind in [(0, True), (5, True), (0, True), (0, False), (0, True)]:
        assert wait.after_poll(records, behind=behind) is None   # never two empty polls in a row while behind
    assert Fetcher.config["fetch_max_wait_ms"] == 10 and wait.wait_ms == 10
