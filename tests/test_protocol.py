"""The prequential protocol on a hand-built 10-event log, HR@k and NDCG@k worked out by hand."""

from __future__ import annotations

import datetime as dt
import math

import pyarrow as pa
import pytest

from evaluation.peers import ItemKNN, Popularity
from evaluation.policies import make_policy
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


class Recorder(Popularity):
    """Popularity that logs every call the protocol makes, and the lists it returned."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def learn_warmup(self, users, items, timestamps, event_types, values) -> None:
        self.calls.append(("warmup", list(items)))
        for item in items:
            self._items.add(item)

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        self.calls.append(("learn", user_id, item_id))
        super().learn_one(user_id, item_id, timestamp, event_type, value)

    def recommend(self, user_id, k, exclude=()) -> list[str]:
        top = super().recommend(user_id, k, exclude)
        self.calls.append(("rank", user_id, sorted(exclude), top))
        return top


# warm-up: 0 a x | 1 b y (two of five events); then 2 c z and 3 c z share second 5, 4 d z at second 6
TIED = [("a", "x", 0), ("b", "y", 1), ("c", "z", 5), ("c", "z", 5), ("d", "z", 6)]


def test_tied_events_are_one_step_under_group_and_file_order_under_order():
    grouped = Recorder()
    r = prequential(_log(TIED), grouped, k=3, warmup=0.4)
    # both c->z are ranked against the state before second 5: z unseen, c had nothing
    assert grouped.calls == [
        ("warmup", ["x", "y"]),
        ("rank", "c", [], ["x", "y"]), ("rank", "c", [], ["x", "y"]),
        ("learn", "c", "z"), ("learn", "c", "z"),
        ("rank", "d", [], ["z", "x", "y"]), ("learn", "d", "z")]
    assert r.hits.tolist() == [0, 0, 1]

    ordered = Recorder()
    r = prequential(_log(TIED), ordered, k=3, warmup=0.4, ties="order")
    # the second c->z sees the first: z is known now, but c already had it (excluded)
    assert ordered.calls[1:4] == [("rank", "c", [], ["x", "y"]), ("learn", "c", "z"),
                                  ("rank", "c", ["z"], ["x", "y"])]
    assert r.hits.tolist() == [0, 0, 1]
    # a third user at second 5 (file order after c) is where order and group differ in score
    log = TIED[:3] + [("e", "z", 5)] + TIED[4:]
    assert prequential(_log(log), Popularity(), k=3, warmup=0.4).hits.tolist() == [0, 0, 1]
    ordered = prequential(_log(log), Popularity(), k=3, warmup=0.4, ties="order")
    assert ordered.hits.tolist() == [0, 1, 1]
    assert ordered.gains.tolist() == pytest.approx([0, 1 / math.log2(4), 1])


def test_a_step_straddling_the_warmup_boundary_is_learned_after_its_scored_events():
    # 0 a x | 1 b y | 2 c y | 3 d y | 4 e x; warm-up = 2 events, but events 1 and 2 share second 1
    log = [("a", "x", 0), ("b", "y", 1), ("c", "y", 1), ("d", "y", 2), ("e", "x", 3)]
    grouped = Recorder()
    r = prequential(_log(log), grouped, k=2, warmup=0.4)
    assert r.evaluated == 3                       # the boundary stays an event index
    assert grouped.calls[:4] == [("warmup", ["x"]), ("rank", "c", [], ["x"]),
                                 ("learn", "b", "y"), ("learn", "c", "y")]
    # c->y: y unseen before the step -> miss; d->y: y=2, x=1 -> rank 0; e->x: y=3, x=1 -> rank 1
    assert r.hits.tolist() == [0, 1, 1]
    assert r.gains.tolist() == pytest.approx([0, 1, 1 / math.log2(3)])
    ordered = prequential(_log(log), Popularity(), k=2, warmup=0.4, ties="order")
    # b->y is warm-up: c->y finds x=1, y=1 -> [x, y], rank 1
    assert ordered.gains.tolist() == pytest.approx([1 / math.log2(3), 1, 1 / math.log2(3)])


def test_unknown_ties_mode_is_a_config_error():
    from fastslow.errors import ConfigError

    with pytest.raises(ConfigError, match="--ties"):
        prequential(_log(LOG), Popularity(), ties="random")


class Oracle(Popularity):
    """Knows the next item: puts it first (what a perfect policy scores: NDCG 1)."""

    def __init__(self, future: list[str]) -> None:
        super().__init__()
        self.future = list(future)

    def recommend(self, user_id, k, exclude=()) -> list[str]:
        return [self.future.pop(0)]


def test_best_peer_and_vs_best_peer_arithmetic():
    stream = _log(LOG)
    future = [stream.item(n) for n in range(4, 10)]
    make = lambda name, seed=0: Oracle(future) if name == "oracle" else make_policy(name, seed=seed)  # noqa: E731
    report = run_replay(stream, ["popularity", "itemknn", "oracle"], k=2, warmup=0.4, show_progress=False,
                        make=make)
    doc, policies = report.document, report.document["policies"]
    # popularity's NDCG@2 is (3 + 1/log2 3) / 6 (test above); the oracle is not a peer
    pop = round((3 + 1 / math.log2(3)) / 6, 6)
    knn = policies["itemknn"]["ndcg@2"]
    assert policies["popularity"]["ndcg@2"] == pytest.approx(pop)
    best = max([("popularity", pop), ("itemknn", knn)], key=lambda p: p[1])
    assert doc["best_peer"] == {"name": best[0], "ndcg@2": best[1]}
    assert policies["oracle"]["ndcg@2"] == 1.0
    assert policies["oracle"]["vs_best_peer"] == round(1.0 / best[1], 4)
    assert policies[best[0]]["vs_best_peer"] == 1.0
    assert doc["protocol"]["ties"] == "group"


def test_no_peer_run_means_no_best_peer():
    report = run_replay(_log(LOG), ["oracle"], k=2, warmup=0.4, show_progress=False,
                        make=lambda name, seed=0: Oracle([_log(LOG).item(n) for n in range(4, 10)]))
    assert report.document["best_peer"] is None
    assert report.document["policies"]["oracle"]["vs_best_peer"] is None


def test_replay_command_takes_ties_and_records_it(tmp_path):
    import json

    from typer.testing import CliRunner

    from fastslow.cli import app

    log = tmp_path / "log.csv"
    # u0 buys x (the warm-up); u1, u2 and u3 buy y in the same second; then u4 buys x
    log.write_text("user_id,item_id,timestamp\nu0,x,1714564800\nu1,y,1714564801\nu2,y,1714564801\n"
                   "u3,y,1714564801\nu4,x,1714564802\n")
    out = {}
    for ties in ("group", "order"):
        result = CliRunner().invoke(app, ["replay", str(log), "-p", "popularity", "-p", "sr", "--k", "1",
                                          "--warmup", "0.2", "--ties", ties])
        assert result.exit_code == 0, result.output
        out[ties] = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["group"]["protocol"]["ties"] == "group" and out["order"]["protocol"]["ties"] == "order"
    # group: u1, u2, u3 -> y all see only x (miss); u4 -> x: y=3 beats x=1 (miss)
    assert out["group"]["policies"]["popularity"]["hr@1"] == 0.0
    # order: u2 sees y=1 vs x=1 (x first: miss), u3 sees y=2 (hit), u4 misses
    assert out["order"]["policies"]["popularity"]["hr@1"] == 0.25
    assert out["group"]["best_peer"]["name"] in ("popularity", "sr")
    bad = CliRunner().invoke(app, ["replay", str(log), "-p", "popularity", "--ties", "random"])
    assert bad.exit_code == 2 and "--ties" in bad.output


class Scheduled(Popularity):
    """Popularity with a consolidation schedule, as `ewc` and `fast-slow` have (counts only)."""

    def __init__(self) -> None:
        super().__init__()
        self.every, self.learned, self.consolidations = 0, 0, []

    def reschedule(self, every: int) -> None:
        self.every = every

    def learn_warmup(self, users, items, timestamps, event_types, values) -> None:
        for item in items:   # the schedule counts from the end of the warm-up, as `Schedule` does
            self._items.add(item)

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        super().learn_one(user_id, item_id, timestamp, event_type, value)
        self.learned += 1
        if self.learned % self.every == 0:
            self.consolidations.append(self.learned)

    def report(self) -> dict:
        return {"consolidations": self.consolidations}


def test_the_default_schedule_puts_five_consolidations_inside_the_scored_part():
    # 40 events, warm-up 10; events 4..11 share second 4, so 4..9 are learned after ranking 10 and 11:
    # 36 events go through learn_one, and no consolidation may fall after the last one
    seconds = [0, 1, 2, 3] + [4] * 8 + list(range(5, 33))
    log = [(f"u{n % 7}", f"i{n % 5}", s) for n, s in enumerate(seconds)]
    report = run_replay(_log(log), ["scheduled"], warmup=0.25, show_progress=False,
                        make=lambda name, seed=0: Scheduled())
    assert report.document["protocol"]["consolidate_every"] == 36 // 6 + 1 == 7
    assert report.document["policies"]["scheduled"]["consolidations"] == [7, 14, 21, 28, 35]
    fixed = run_replay(_log(log), ["scheduled"], warmup=0.25, consolidate_every=10, show_progress=False,
                       make=lambda name, seed=0: Scheduled())
    assert fixed.document["policies"]["scheduled"]["consolidations"] == [10, 20, 30]
