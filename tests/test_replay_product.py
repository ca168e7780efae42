"""`fast-slow` in replay is the product: the fast path learning every event through the worker's
``learn_one``, consolidated on a schedule scaled to the log by the job's own code."""

from __future__ import annotations

import pytest

from evaluation.replay import consolidation_every, run_replay
from evaluation.stream import EventStream
from evaluation.synth import SynthConfig, generate
from models.fastslow import FastSlow

pytestmark = pytest.mark.slow   # the slow model trains at warm-up and at each consolidation


@pytest.fixture(scope="module")
def stream() -> EventStream:
    return EventStream.from_table(generate(SynthConfig.preset("tiny", n_events=1_200, seed=5)).events_table())


def test_fast_slow_consolidates_five_times_by_default_and_learns_through_learn_one(stream, monkeypatch):
    calls = []
    learn_one = FastSlow.learn_one

    def counting(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return learn_one(self, *args, **kwargs)

    monkeypatch.setattr(FastSlow, "learn_one", counting)
    report = run_replay(stream, ["fast-slow", "fast-slow-frozen"], warmup=0.5, show_progress=False)
    doc = report.document
    every = consolidation_every(600)
    assert every == 101 and doc["protocol"]["consolidate_every"] == every
    product, frozen = doc["policies"]["fast-slow"], doc["policies"]["fast-slow-frozen"]
    # five consolidations at 101, 202, ..., 505 learned events: all inside the scored part
    assert product["consolidate_every"] == every and product["consolidations"] == 5
    assert 0 <= product["promotions"] <= 5
    assert "consolidations" not in frozen
    # every event (the warm-up's too) went through FastSlow.learn_one, for both policies
    assert calls.count("FastSlow") == calls.count("FastSlowFrozen") == len(stream) == 1_200


def test_consolidate_every_sets_the_schedule(stream):
    report = run_replay(stream, ["fast-slow", "ewc"], warmup=0.5, consolidate_every=250, show_progress=False)
    policies = report.document["policies"]
    assert report.document["protocol"]["consolidate_every"] == 250
    for name in ("fast-slow", "ewc"):
        assert policies[name]["consolidate_every"] == 250 and policies[name]["consolidations"] == 2


def test_a_consolidation_distils_the_fast_path_and_swaps_a_promoted_model_in(stream):
    from consolidation.policy import fast_slow

    policy = fast_slow(seed=0)
    policy.reschedule(150)
    policy.learn_warmup(*stream.slice(0, 600).columns())
    before = policy.model.slow_model
    for u, i, t, e, v in zip(*stream.slice(600, 900).columns()):
        policy.learn_one(u, i, float(t), e, float(v))
    assert [entry["learned"] for entry in policy.log] == [750, 900]
    assert all(entry["distilled_users"] > 0 for entry in policy.log)
    if any(entry["promoted"] for entry in policy.log):
        assert policy.model.slow_model is not before
    else:
        assert policy.model.slow_model is before
