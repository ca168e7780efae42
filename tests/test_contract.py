"""The same checks over every replay policy: a short prequential run, seeded determinism,
pickle round-trip, clone, and no mutation of what the caller passes in."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from evaluation.policies import POLICIES, make_policy
from evaluation.protocol import prequential
from evaluation.stream import EventStream
from evaluation.synth import SynthConfig, generate

pytestmark = pytest.mark.slow   # every policy trains: ~1 min in all


@pytest.fixture(scope="module")
def stream() -> EventStream:
    return EventStream.from_table(generate(SynthConfig.preset("tiny", n_events=1_200, seed=5)).events_table())


def _warm(policy, stream: EventStream, n: int) -> None:
    policy.learn_warmup(*stream.slice(0, n).columns())


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_contract(name, stream):
    n_warm = 600
    users = stream.columns()[0]

    # a short prequential run gives sane numbers
    result = prequential(stream, make_policy(name, seed=1), k=10, warmup=0.5)
    assert result.evaluated == len(stream) - n_warm
    assert 0.0 <= result.ndcg <= result.hr <= 1.0 and np.isfinite(result.gains).all()

    # seeded determinism: same seed, same events -> same lists
    a, b = make_policy(name, seed=1), make_policy(name, seed=1)
    for policy in (a, b):
        _warm(policy, stream, n_warm)
    probe = sorted(set(users[n_warm:n_warm + 40]))[:10]
    assert [a.recommend(u, 10) for u in probe] == [b.recommend(u, 10) for u in probe]

    # learning and ranking leave the caller's inputs alone
    columns = stream.slice(n_warm, n_warm + 50).columns()
    before = copy.deepcopy(columns)
    exclude = {stream.item(0)}
    for u, i, t, e, v in zip(*columns):
        a.learn_one(u, i, float(t), e, float(v))
        a.recommend(u, 10, exclude=exclude)
    assert [list(c) for c in columns] == [list(c) for c in before] and exclude == {stream.item(0)}

    # pickle round-trip keeps behaviour; clone is the same kind of policy with the same parameters
    restored = pickle.loads(pickle.dumps(a))
    assert [restored.recommend(u, 10) for u in probe] == [a.recommend(u, 10) for u in probe]
    twin = a.clone()
    assert type(twin) is type(a) and twin.name == a.name == name
    assert sorted(twin.params()) == sorted(a.params())
