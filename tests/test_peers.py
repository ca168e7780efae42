"""The sequence-aware peers `recency-knn` and `sr` against hand-computed 6-event examples."""

from __future__ import annotations

import pytest

from evaluation.peers import ItemKNN, RecencyKNN, SequentialRules
from evaluation.policies import make_policy


def _learn(policy, events: list[tuple[str, str]]):
    for t, (u, i) in enumerate(events):
        policy.learn_one(u, i, float(t))
    return policy


# recency-knn: C and n_j as itemknn (C symmetric, over each user's last 20 items)
#  1 u p | 2 u q  -> C[p,q] = 1
#  3 v p | 4 v r  -> C[p,r] = 1
#  5 w q | 6 w s  -> C[q,s] = 1          n: p=2, q=2, r=1, s=1
KNN_LOG = [("u", "p"), ("u", "q"), ("v", "p"), ("v", "r"), ("w", "q"), ("w", "s")]


def test_recency_knn_weights_recent_items_by_hand():
    knn = _learn(RecencyKNN(), KNN_LOG)
    # u's history [p, q]: q (latest) weighs 1, p weighs 0.85; score_j = sum_h w_h C[h,j] / sqrt(n_j + 1)
    #   r: 0.85 * C[p,r] / sqrt(2) = 0.601     s: 1.0 * C[q,s] / sqrt(2) = 0.707
    #   p: 1.0 * C[q,p] / sqrt(3) = 0.577      q: 0.85 * C[p,q] / sqrt(3) = 0.491
    assert knn.recommend("u", 2, exclude={"p", "q"}) == ["s", "r"]
    assert knn.recommend("u", 4) == ["s", "r", "p", "q"]
    # unweighted itemknn ties r and s (1/sqrt(2) each, n equal) and takes the one seen first
    assert _learn(ItemKNN(), KNN_LOG).recommend("u", 2, exclude={"p", "q"}) == ["r", "s"]
    # a user without history: every score 0, ties by n_j (p=q=2 before r=s=1), then first seen
    assert knn.recommend("new", 4) == ["p", "q", "r", "s"]


def test_recency_knn_decay_counts_age_in_the_users_recent_items():
    # z's history (oldest first) [p, r, q]: ages 2, 1, 0 -> weights 0.7225, 0.85, 1
    knn = _learn(RecencyKNN(), KNN_LOG + [("z", "p"), ("z", "r"), ("z", "q")])
    # C now: C[p,q]=2, C[p,r]=2, C[q,s]=1, C[r,q]=1; n: p=3, q=3, r=2, s=1
    #   s: 1 * C[q,s] / sqrt(2) = 0.707
    # and for z without exclusions, e.g. p: (0.85 * C[r,p] + 1 * C[q,p]) / sqrt(4) = (1.7 + 2) / 2 = 1.85
    #   q: (0.7225 * 2 + 0.85 * 1) / 2 = 1.1475;  r: (0.7225 * 2 + 1 * 1) / sqrt(3) = 1.412
    assert knn.recommend("z", 4) == ["p", "r", "q", "s"]


# sr: when u learns b, R[a, b] += 1/d for u's previous (up to) 10 items a at distance d
#  1 u a
#  2 u b  -> R[a,b] += 1
#  3 u c  -> R[b,c] += 1, R[a,c] += 1/2
#  4 v c
#  5 w a
#  6 y c                                    n: a=2, b=1, c=3
SR_LOG = [("u", "a"), ("u", "b"), ("u", "c"), ("v", "c"), ("w", "a"), ("y", "c")]


def test_sequential_rules_by_hand():
    sr = _learn(SequentialRules(), SR_LOG)
    # w's last item a: R[a,b] = 1 > R[a,c] = 1/2 (with weight 1 per step they would tie and
    # the more popular c would win)
    assert sr.recommend("w", 2, exclude={"a"}) == ["b", "c"]
    # v's last item c: rules are directed, R[c, .] = 0 -> ties by n_j: a (2) before b (1)
    assert sr.recommend("v", 2, exclude={"c"}) == ["a", "b"]
    # no history: popularity, c (3), a (2), b (1)
    assert sr.recommend("nobody", 3) == ["c", "a", "b"]
    rules, rows = sr._rules, sr._items.items
    assert rules.get(rows.get("a"), rows.get("c")) == pytest.approx(0.5)
    assert rules.get(rows.get("c"), rows.get("a")) == 0.0


def test_sequential_rules_reach_back_ten_items():
    sr = _learn(SequentialRules(), [("u", f"i{n}") for n in range(12)])
    rules, row = sr._rules, sr._items.items.get
    # i11's previous 10 items are i1..i10, at d = 10..1; i0 is 11 back and gets nothing
    assert rules.get(row("i10"), row("i11")) == pytest.approx(1.0)
    assert rules.get(row("i1"), row("i11")) == pytest.approx(0.1)
    assert rules.get(row("i0"), row("i11")) == 0.0


@pytest.mark.parametrize("name", ["recency-knn", "sr"])
def test_peers_are_registered_and_deterministic(name):
    a, b = make_policy(name), make_policy(name)
    assert a.name == name
    for policy in (a, b):
        _learn(policy, SR_LOG + KNN_LOG)
    assert [a.recommend(u, 5) for u in "uvwy"] == [b.recommend(u, 5) for u in "uvwy"]


def test_implicit_als_gives_a_user_without_items_the_popular_items():
    from evaluation.als import ImplicitALS

    als = ImplicitALS(factors=4, iterations=3, refit_every=1_000)
    # z is seen last but bought most: a user without items scores 0 everywhere, ties by n_j
    als.learn_warmup(["u1", "u2", "u3", "u4", "u5", "u1"], ["a", "b", "z", "z", "z", "z"],
                     [0.0] * 6, ["click"] * 6, [1.0] * 6)
    assert als.recommend("new", 3) == ["z", "a", "b"]
