"""The gate learns the mix from what users chose: on a stream where one signal is right it puts
its weight there (and ranks as well as that signal), and where two signals each know half of
the answer it ranks better than either alone."""

from __future__ import annotations

import numpy as np
import pytest

from models.gate import FAST_SIGNALS, REQUEST_FEATURES, Gate

N_CANDIDATES = 60


def _requests(rng, n: int, truth) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """(slow, fast, request, chosen position) per request: every column uniform noise in [0, 1]
    (as min-max normalised signals), the chosen candidate the best by ``truth(slow, fast)``."""
    out = []
    for _ in range(n):
        slow, fast = rng.random(N_CANDIDATES), rng.random((N_CANDIDATES, len(FAST_SIGNALS)))
        request = np.concatenate([[1.0], rng.random(len(REQUEST_FEATURES))])
        out.append((slow, fast, request, int(np.argmax(truth(slow, fast)))))
    return out


def _top1(scores_of, requests) -> float:
    """Share of requests whose chosen candidate the scores put first."""
    return float(np.mean([np.argmax(scores_of(s, f, r)) == p for s, f, r, p in requests]))


def _learned(train) -> Gate:
    gate = Gate()
    for slow, fast, request, positive in train:
        gate.learn(slow, fast, request, positive)
    return gate


@pytest.mark.parametrize("signal", ["recency_knn", "sequential_rules", "cooccurrence", "popularity"])
def test_the_gate_puts_its_weight_on_the_signal_that_is_right(signal):
    c = FAST_SIGNALS.index(signal)
    rng = np.random.default_rng(c)
    right = lambda slow, fast: fast[:, c] + 0.05 * rng.standard_normal(N_CANDIDATES)   # noqa: E731
    gate = _learned(_requests(rng, 1000, right))
    test = _requests(rng, 300, right)
    assert int(np.argmax(gate.w)) == c, gate.w
    alone = _top1(lambda s, f, r: f[:, c], test)
    assert _top1(gate.scores, test) >= alone - 0.03, (_top1(gate.scores, test), alone)


def test_the_gate_trusts_the_slow_model_when_it_is_right():
    rng = np.random.default_rng(9)
    right = lambda slow, fast: slow + 0.05 * rng.standard_normal(N_CANDIDATES)   # noqa: E731
    gate = _learned(_requests(rng, 3000, right))   # the slow share (v, theta) takes longer than w
    test = _requests(rng, 300, right)
    assert _top1(gate.scores, test) >= _top1(lambda s, f, r: s, test) - 0.03
    request = np.concatenate([[1.0], np.full(len(REQUEST_FEATURES), 0.5)])
    assert 1.0 - gate.value(request) + gate.value(request) * gate.v > np.abs(gate.w).max()


def test_where_two_signals_disagree_the_mix_beats_each():
    knn, sr = FAST_SIGNALS.index("recency_knn"), FAST_SIGNALS.index("sequential_rules")
    rng = np.random.default_rng(11)
    both = lambda slow, fast: fast[:, knn] + fast[:, sr]   # noqa: E731
    gate = _learned(_requests(rng, 600, both))
    test = _requests(rng, 300, both)
    mixed = _top1(gate.scores, test)
    singles = [_top1(lambda s, f, r, c=c: f[:, c], test) for c in (knn, sr)]
    assert mixed > max(singles) + 0.2, (mixed, singles)
    assert sorted(np.argsort(-gate.w)[:2].tolist()) == sorted([knn, sr]), gate.w
