"""Two serving processes that own different partitions show the same "popular right now"
(issue 15, finding 6): each reads every partition's events for it (`TopicPopularity`), while
its worker learns only its own partitions."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from consolidation_fixtures import one_torch_thread  # noqa: F401 (autouse)
from serving_fixtures import clustered_ranker, wait_for
from worker_fixtures import make_topics

from models.fastslow import FastSlow
from serving.catalogue import _grow
from serving.runtime import Runtime
from streaming.kafka import make_producer

pytestmark = pytest.mark.broker

# partition 0's users took i0-1 five times, partition 1's users i3-2 three times and i3-5 once
PARTITION_EVENTS = {0: [("a1", "i0-1"), ("a2", "i0-1"), ("a1", "i0-1"), ("a3", "i0-1"), ("a2", "i0-1")],
                    1: [("b1", "i3-2"), ("b2", "i3-2"), ("b1", "i3-5"), ("b3", "i3-2")]}


@pytest.fixture(scope="module")
def ranker():
    return clustered_ranker()


def process(ranker, broker: str, topic: str, dlq: str, partition: int, start: float, tmp_path) -> Runtime:
    """A serving process whose worker owns ``partition`` only (its model learned just that one)."""
    model = FastSlow(ranker=ranker.clone(), catalogue=True)
    for n, (user, item) in enumerate(PARTITION_EVENTS[partition]):
        model.learn_one(user, item, start + n)
    return Runtime(model, bootstrap=broker, topic=topic, dlq_topic=dlq, consume=False,
                   data_dir=tmp_path / f"p{partition}")


def test_both_processes_show_the_popularity_of_every_partition(ranker, broker, tmp_path):
    topic, dlq = make_topics(broker, partitions=2)
    start = time.time() - 60
    producer = make_producer(broker)
    for partition, events in PARTITION_EVENTS.items():
        for n, (user, item) in enumerate(events):
            producer.send(topic, partition=partition, key=user.encode(), value=json.dumps(
                {"user_id": user, "item_id": item, "timestamp": start + n, "event_id": f"{partition}-{n}"}).encode())
    producer.send(topic, partition=0, key=b"a1", value=json.dumps(   # a redelivery: counted once
        {"user_id": "a1", "item_id": "i0-1", "timestamp": start, "event_id": "0-0"}).encode())
    producer.flush()
    producer.close()

    first = process(ranker, broker, topic, dlq, 0, start, tmp_path)
    second = process(ranker, broker, topic, dlq, 1, start, tmp_path)
    with first, second:
        for runtime in (first, second):
            wait_for(lambda runtime=runtime: runtime.popularity.events == 9, 30, "every partition's events counted")
        shown = [runtime.model.trending(3) for runtime in (first, second)]
    assert shown[0] == shown[1]
    assert [item for item, _ in shown[0]] == ["i0-1", "i3-2", "i3-5"]
    # recency-weighted counts: about 5, 3 and 1 (events a few seconds apart, half-life one day)
    assert [round(score) for _, score in shown[0]] == [5, 3, 1]


def test_a_model_without_a_source_ranks_its_own_stream():
    model = FastSlow()
    for n, item in enumerate(["x", "y", "x"]):
        model.learn_one(f"u{n}", item, 1714564800.0 + n)
    assert [item for item, _ in model.trending(5)] == ["x", "y"]


def test_readyz_warns_when_the_popularity_reader_stopped(ranker, tmp_path):
    from serving_fixtures import serving

    from streaming.popularity import TopicPopularity

    runtime = Runtime(FastSlow(ranker=ranker.clone()), data_dir=tmp_path)
    with serving(runtime) as client:
        assert "warnings" not in client.get("/readyz").json()
        runtime.popularity = TopicPopularity("127.0.0.1:1")
        runtime.popularity.error = ConnectionError("broker gone")
        warnings = client.get("/readyz").json()["warnings"]
    assert warnings == ["popularity reader stopped with ConnectionError('broker gone'): 'trending now' keeps "
                        "the counts of the 0 events read before (see the log)"]


class FixedPopularity:
    """A popularity source answering a fixed ranking (items this model may never have seen)."""

    def __init__(self, ranking: list[tuple[str, float]]) -> None:
        self.ranking = ranking

    def top(self, n: int) -> list[tuple[str, float]]:
        return self.ranking[:n]

    def item_scores(self, item_ids):
        scores = dict(self.ranking)
        return np.array([scores.get(item, 0.0) for item in item_ids])


def test_items_trending_elsewhere_become_candidates_even_past_the_model_s_item_capacity(ranker):
    grown = ranker.clone()   # a catalogue filling the model's first item arrays (1,024 rows)
    _grow(grown, [f"cat-{n}" for n in range(1024 - len(ranker.items) - 5)], torch, np.random.default_rng(0), 0.5)
    model = FastSlow(ranker=grown, catalogue=True)
    elsewhere = [(f"new-{n}", 20.0 - n) for n in range(20)]   # seen only on other partitions
    model.popularity = FixedPopularity(elsewhere)
    shown = [item for item, _ in model.trending(3)]
    listed = model.recommend("nobody", 1050)
    assert shown == ["new-0", "new-1", "new-2"]
    assert {item for item, _ in elsewhere} <= set(listed) and len(listed) == len(grown.items) + 20
