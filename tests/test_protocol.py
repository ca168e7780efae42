"""The prequential protocol on a hand-built 10-event log, HR@k and NDCG@k worked out by hand."""

from __future__ import annotations

import datetime as dt
import math

import pyarrow as pa
import pytest

from evaluation.peers import ItemKNN, Popularity
from evaluation.protocol import prequential, warmup_size
from evaluation.replay import run_replay
from evaluation.stream import EventStream

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _log(rows: list[tuple[str, str, int]]) -> EventStream:
    """(user, item, second) rows, deliberately not in time order."""
    users, items, seconds = zip(*rows)
    return EventStream.from_table(pa.table({
        "user_id": list(users), "item_id": list(items),
        "timestamp": pa.array([T0 + dt.timedelta(seconds=s) for s in seconds], pa.timestamp("ms", "UTC")),
        "event_type": ["click"] * len(rows), "value": [1.0] * len(rows)}))


# Time order (ties keep file order):
#  0 a x | 1 b x | 2 b y | 3 c x     <- warm-up (floor(0.4 * 10) = 4 events)
#  4 c y | 5 a y | 6 d z | 7 a x | 8 d x | 9 e y
LOG = [("b", "x", 1), ("a", "x", 0), ("b", "y", 2), ("c", "x", 3), ("c", "y", 4), ("a", "y", 5),
       ("d", "z", 6), ("a", "x", 7), ("d", "x", 8), ("e", "y", 9)]


def test_stable_time_sort_and_warmup_prefix():
    stream = _log(LOG)
    assert [stream.user(n) + stream.item(n) for n in range(10)] == \
        ["ax", "bx", "by", "cx", "cy", "ay", "dz", "ax", "dx", "ey"]
    assert warmup_size(10, 0.4) == 4


def test_popularity_hr_and_ndcg_by_hand():
    # counts before each evaluated event; ties go to the item seen first (x before y before z)
    #  4 c->y: c had {x}; ranking over {x, y} minus {x} = [y]          -> hit at rank 0, gain 1
    #  5 a->y: a had {x}; counts x=3, y=2 -> [y]                         -> hit at rank 0, gain 1
    #  6 d->z: z never seen before                                       -> miss
    #  7 a->x: a already had x                                           -> miss (excluded)
    #  8 d->x: d had {z}; counts x=3, y=3, z=1 -> [x, y] (tie: x first)   -> hit at rank 0, gain 1
    #  9 e->y: e had {}; counts x=4, y=3, z=1 -> [x, y, z]                -> hit at rank 1, gain 1/log2(3)
    r = prequential(_log(LOG), Popularity(), k=2, warmup=0.4)
    assert r.hits.tolist() == [1, 1, 0, 0, 1, 1]
    assert r.evaluated == 6
    assert r.hr == pytest.approx(4 / 6)
    assert r.ndcg == pytest.approx((3 + 1 / math.log2(3)) / 6)


def test_k_cuts_the_list_and_include_seen_lets_repeats_count():
    r1 = prequential(_log(LOG), Popularity(), k=1, warmup=0.4)
    assert r1.hits.tolist() == [1, 1, 0, 0, 1, 0]                 # e->y is at rank 1: out of a top-1
    seen = prequential(_log(LOG), Popularity(), k=1, warmup=0.4, include_seen=True)
    # 4 c->y: counts x=3, y=1 -> [x]: miss;  5 a->y: x=3, y=2 -> miss;  7 a->x: top-1 is x -> hit
    assert seen.hits.tolist() == [0, 0, 0, 1, 1, 0]


def test_itemknn_scores_by_hand():
    # 8 d->x: d's history is [z]; z co-occurred with nothing yet -> all scores 0, ties by count:
    #         counts x=3, y=3 -> x first (larger n, then first seen)   -> hit at rank 0
    # 9 e->y: e has no history -> popularity order x(4), y(3)          -> hit at rank 1
    r = prequential(_log(LOG), ItemKNN(), k=2, warmup=0.4)
    assert r.hits.tolist()[4:] == [1, 1]
    assert r.gains.tolist()[4:] == pytest.approx([1.0, 1 / math.log2(3)])


def test_replay_json_follows_k_and_reports_every_policy():
    report = run_replay(_log(LOG), ["popularity", "itemknn"], k=2, warmup=0.4, show_progress=False)
    doc = report.document
    assert doc["protocol"]["k"] == 2 and doc["protocol"]["warmup_events"] == 4
    assert doc["dataset"] == {"source": "", "events": 10, "users": 5, "items": 3}
    assert doc["policies"]["popularity"]["hr@2"] == pytest.approx(4 / 6, abs=1e-6)
    assert set(doc["policies"]["itemknn"]) >= {"hr@2", "ndcg@2", "evaluated", "events_per_s"}
