"""Context for the slow ranker: encoding, online lookups, point-in-time examples, the model side.

One Feast repository per module (applying costs seconds); the model tests need none.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from features_fixtures import applied_repo, at, make_events

from features.context import (ITEM_FEATURES, USER_FEATURES, ContextSpec, FeatureContext, ItemTable, category_bucket, encode_items,
                              encode_user)
from features.pusher import FeaturePusher, FeaturePushError
from features.store import FeatureStoreClient
from models.slow import ContextArrays, Examples, SlowRanker
from models.slow_context import ItemContextTable

SPEC = {"user": ["events_1h", "has_prev", "last_click"], "item": ["pop_long", "price", "has_price"],
        "categories": 8}


# ---- encoding (no store) ------------------------------------------------------------------

def test_encoding_matches_a_hand_computation():
    spec = ContextSpec(USER_FEATURES, ITEM_FEATURES, price_mean=2.0, price_std=0.5)
    user = encode_user(spec, {"events_1h": np.array([3]), "events_1d": np.array([10]),
                              "distinct_items_1d": np.array([4]), "seconds_since_prev": np.array([60.0]),
                              "last_event_type": np.array(["cart"], dtype=object)})[0]
    expected = [math.log1p(3), math.log1p(10), math.log1p(4), math.log1p(60), 1.0,
                0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert user.tolist() == pytest.approx(expected, rel=1e-6)
    numeric, categories = encode_items(spec, {"pop_short": np.array([0, 2]), "pop_long": np.array([5, 9]),
                                              "pop_trend": np.array([0.0, 1.5]), "price": np.array([0.0, 19.0]),
                                              "category": np.array(["", "shoes"], dtype=object)})
    assert numeric[0].tolist() == pytest.approx([0.0, math.log1p(5), 0.0, 0.0, 0.0])
    assert numeric[1].tolist() == pytest.approx([math.log1p(2), math.log1p(9), math.log1p(1.5),
                                                 (math.log1p(19) - 2.0) / 0.5, 1.0], rel=1e-6)
    assert categories.tolist() == [0, category_bucket("shoes", 4096)]


def test_missing_features_encode_as_zeros():
    spec = ContextSpec(USER_FEATURES, ITEM_FEATURES)
    user = encode_user(spec, {"events_1h": [0], "events_1d": [0], "distinct_items_1d": [0],
                              "seconds_since_prev": [-1.0], "last_event_type": np.array([""], dtype=object)})
    numeric, categories = encode_items(spec, {"pop_short": [0], "pop_long": [0], "pop_trend": [0.0],
                                              "price": [0.0], "category": np.array([""], dtype=object)})
    assert not user.any() and not numeric.any() and categories.tolist() == [0]


def test_spec_travels_as_a_plain_dict_and_rejects_unknown_features():
    spec = ContextSpec(USER_FEATURES, ITEM_FEATURES, categories=64).fit_price([9.0, 99.0])
    assert ContextSpec.from_dict(pickle.loads(pickle.dumps(spec.as_dict()))) == spec
    assert spec.price_mean == pytest.approx((math.log(10) + math.log(100)) / 2)
    with pytest.raises(ValueError, match="colour"):
        ContextSpec.from_dict({"user": [], "item": ["colour"]})


# ---- the model side (no store) ------------------------------------------------------------

def _context_ranker(seed: int = 0, **kwargs) -> tuple[SlowRanker, Examples]:
    ranker = SlowRanker(dim=8, epochs=3, batch_size=8, seed=seed, context=SPEC, **kwargs)
    users, items = ["a", "a", "b", "b", "c"] * 4, ["x", "y", "x", "z", "y"] * 4
    rng = np.random.default_rng(seed)
    examples = ranker.build_examples(users, items).with_context(
        rng.random((20, 3)), rng.random((20, 3)), rng.integers(0, 8, 20), times=np.arange(20.0))
    ranker.set_item_table(["x", "y", "z"], rng.random((3, 3)), np.array([1, 2, 3]), times=np.zeros(3))
    ranker.fit(examples)
    return ranker, examples


def test_numpy_context_scores_equal_the_torch_network():
    ranker, _ = _context_ranker()
    rng = np.random.default_rng(1)
    context = ContextArrays(rng.random(3).astype(np.float32), rng.random((4, 3)).astype(np.float32),
                            np.array([0, 5, 7, 2]))
    rows = np.array([0, 2, -1, 1])
    ids = ["x", "z", "never-trained", "y"]
    numpy_scores = ranker.score("a", ["y"], ids, context)
    net = ranker.net.eval()
    with torch.no_grad():
        history = torch.tensor([[ranker.items.get("y") + 1] + [0] * (ranker.history - 1)])
        weights = torch.zeros(1, ranker.history)
        weights[0, 0] = 1.0
        torch_scores = net(torch.tensor([ranker.users.get("a")]), history, weights, torch.tensor(rows),
                           context=torch.tensor(context.user)[None], item_context=torch.tensor(context.items),
                           item_category=torch.tensor(context.categories))[0].numpy()
    assert numpy_scores == pytest.approx(torch_scores, abs=1e-5)
    # the additive term is exactly what context adds to the id-only score of known items
    base = ranker.user_vector("a", ["y"])
    id_only = ranker.score("a", ["y"], ids)
    term = ranker.context_scores(base, rows, context)
    assert (id_only[[0, 1, 3]] + term[[0, 1, 3]]) == pytest.approx(numpy_scores[[0, 1, 3]], abs=1e-5)
    assert np.isneginf(id_only[2]) and term[2] == pytest.approx(numpy_scores[2], abs=1e-6)


def test_context_model_pickles_clones_and_grows_with_its_context_weights():
    ranker, _ = _context_ranker()
    context = ContextArrays(np.ones(3, np.float32), np.ones((2, 3), np.float32), np.array([1, 4]))
    before = ranker.score("b", ["x"], ["x", "new"], context)
    for copy in (pickle.loads(pickle.dumps(ranker)), ranker.clone()):
        assert copy.score("b", ["x"], ["x", "new"], context) == pytest.approx(before)
    category = ranker.net.category.weight.detach().clone()
    grown = ranker.net.grow(5000, 5000)
    assert torch.equal(grown.category.weight, category) and grown.n_item_context == 3


def test_a_context_layer_starts_at_zero_so_an_untrained_context_model_scores_like_one_without():
    plain = SlowRanker(dim=8, seed=3)
    with_context = SlowRanker(dim=8, seed=3, context=SPEC)
    for ranker in (plain, with_context):
        ranker.build_examples(["u", "u"], ["x", "y"])
        ranker.refresh()
    context = ContextArrays(np.ones(3), np.ones((2, 3)), np.array([1, 2]))
    assert with_context.score("u", ["x"], ["x", "y"], context) == pytest.approx(plain.score("u", ["x"], ["x", "y"]))


def test_a_ranker_without_context_is_unchanged_and_ignores_context():
    ranker = SlowRanker(dim=8, epochs=2, seed=0)
    ranker.fit(ranker.build_examples(["a", "b"], ["x", "y"]))
    context = ContextArrays(np.ones(3), np.ones((2, 3)), np.array([1, 2]))
    assert not ranker.uses_context and ranker.context_scores(np.ones(8), np.array([0, -1]), context).tolist() == [0, 0]
    assert ranker.score("a", [], ["x", "y"], context) == pytest.approx(ranker.score("a", [], ["x", "y"]))


def test_examples_without_context_are_filled_with_all_missing_when_joined():
    ranker, examples = _context_ranker()
    plain = ranker.build_examples(["d"], ["x"])
    joined = examples.concat(plain)
    assert len(joined) == 21 and joined.item_context[-1].tolist() == [0, 0, 0]
    assert joined.item_category[-1] == 0 and joined.times is None
    with pytest.raises(ValueError, match="rows"):
        plain.with_context(np.zeros((2, 3)), np.zeros((1, 3)), np.zeros(1))


def test_negatives_read_item_context_as_of_their_batch():
    table = ItemContextTable(["x", "x", "y"], np.array([[1.0], [2.0], [3.0]]), np.array([1, 2, 3]),
                             times=np.array([100.0, 200.0, 150.0]))
    codes = table.rows_of(["x", "y", "z"])
    assert table.as_of(codes, 100.0)[0].ravel().tolist() == [0.0, 0.0, 0.0]
    assert table.as_of(codes, 150.5)[0].ravel().tolist() == [1.0, 3.0, 0.0]
    assert table.as_of(codes, 1e9)[1].tolist() == [2, 3, 0]


def test_category_context_lets_the_model_rank_items_it_never_trained_on():
    ranker = SlowRanker(dim=8, epochs=40, seed=0, context={"user": [], "item": [], "categories": 4})
    pairs = [("a", "x1"), ("a", "x2"), ("b", "y1"), ("b", "y2")] * 10
    category = {"x1": 1, "x2": 1, "y1": 2, "y2": 2}
    examples = ranker.build_examples(*zip(*pairs))
    cats = np.array([category[i] for _, i in pairs])
    ranker.set_item_table(list(category), np.zeros((4, 0)), np.array(list(category.values())))
    ranker.fit(examples.with_context(np.zeros((40, 0)), np.zeros((40, 0)), cats))
    fresh = ContextArrays(np.zeros(0), np.zeros((2, 0)), np.array([1, 2]))   # x3 (category 1), y3 (2)
    assert ranker.score("a", ["x1"], ["x3", "y3"], fresh)[0] > ranker.score("a", ["x1"], ["x3", "y3"], fresh)[1]
    assert ranker.score("b", ["y1"], ["x3", "y3"], fresh)[1] > ranker.score("b", ["y1"], ["x3", "y3"], fresh)[0]


# ---- with a real Feast repository ---------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return applied_repo(tmp_path_factory, "context")


@pytest.mark.slow
def test_lookup_encodes_the_online_values_and_counts_missing(repo):
    client = FeatureStoreClient(repo)
    client.push_events(make_events([("ann", "a", 0, "click", '{"category": "shoes", "price": 19}'),
                                    ("ann", "b", 30, "cart")]))
    provider = FeatureContext(client, ContextSpec(USER_FEATURES, ITEM_FEATURES, price_mean=2.0, price_std=0.5))
    context = provider.lookup("ann", ["a", "b", "unknown"])
    user = dict(zip(provider.spec.user, context.user.tolist()))
    assert user["events_1h"] == pytest.approx(math.log1p(2)) and user["gap"] == pytest.approx(math.log1p(1800))
    assert user["last_cart"] == 1.0 and user["last_click"] == 0.0
    price = provider.spec.item.index("price")
    assert context.items[:, price].tolist() == pytest.approx([(math.log1p(19) - 2.0) / 0.5, 0.0, 0.0])
    assert context.categories.tolist() == [category_bucket("shoes", 4096), 0, 0]
    assert dict(provider.missing) == {"user_stream": 0, "item_stream": 1, "item_attributes": 2}


@pytest.mark.slow
def test_cached_answers_equal_fresh_ones_after_more_pushes(repo):
    client = FeatureStoreClient(repo)
    every = ContextSpec(USER_FEATURES, ITEM_FEATURES)
    cached, fresh = FeatureContext(client, every, cache=True), FeatureContext(client, every)
    table = ItemTable(cached)
    table.add(["p", "q"])
    batches = [[("bob", "p", 0), ("bob", "q", 1)], [("bob", "q", 5), ("cy", "p", 6)], [("cy", "q", 90, "purchase")]]
    seen = []
    for step, batch in enumerate(batches):
        client.push_events(make_events(batch, start_id=100 + 10 * step))
        for user in ("bob", "cy"):
            a, b = cached.lookup(user, ["p", "q"]), fresh.lookup(user, ["p", "q"])
            assert np.array_equal(a.user, b.user) and np.array_equal(a.items, b.items)
            assert np.array_equal(table.arrays()[0], b.items)
        seen.append(fresh.lookup("cy", ["p", "q"]))
    assert not np.array_equal(seen[1].user, seen[2].user)   # the pushes did change what is read
    reads = fresh.lookups
    fresh.lookup("bob", ["p", "q"])
    assert fresh.lookups == reads + 2                          # one user read, one read of both items
    reads = cached.lookups
    cached.lookup("bob", ["p", "q"])
    cached.items(["q"])
    assert cached.lookups == reads                             # answered from the cache: no reads


@pytest.mark.slow
def test_training_examples_never_use_a_value_written_after_their_event(repo):
    client = FeatureStoreClient(repo)
    provider = FeatureContext(client, ContextSpec(USER_FEATURES, ITEM_FEATURES))
    client.write_rows("item_attributes", pd.DataFrame({
        "item_id": ["late"], "event_timestamp": [at(60)], "category": ["boots"], "price": [50.0]}))
    client.push_events(make_events([("dee", "late", 10)], start_id=300))
    events = make_events([("dee", "late", 10), ("eve", "late", 61), ("dee", "late", 120)], start_id=300)
    context = provider.training_context(events)
    assert context.categories.tolist() == [0, category_bucket("boots", 4096), category_bucket("boots", 4096)]
    # dee's own push (minute 10) is not visible at minute 10, only after it
    assert context.user[:, provider.spec.user.index("events_1h")].tolist() == pytest.approx([0, 0, math.log1p(1)])
    ranker = SlowRanker(dim=8, seed=0, context=provider.spec.as_dict())
    examples = ranker.build_examples(events["user_id"].tolist(), events["item_id"].tolist())
    examples = examples.with_context(*context)
    assert examples.item_category.tolist() == context.categories.tolist()
    ids, numeric, categories, times = provider.item_history(["late"])
    history = ItemContextTable(ids, numeric, categories, times)
    code = history.rows_of(["late"])
    assert history.as_of(code, at(60).timestamp())[1].tolist() == [0]       # not strictly before
    assert history.as_of(code, at(61).timestamp())[1].tolist() == [category_bucket("boots", 4096)]


@pytest.mark.slow
def test_pusher_pushes_in_the_background_and_raises_a_failed_push(repo):
    client = FeatureStoreClient(repo)
    pusher = FeaturePusher(client)
    for k in range(3):
        pusher.push(make_events([("fay", f"i{k}", k)], start_id=400 + k))
    pusher.flush()
    assert pusher.events == 3 and client.lookup("fay", []).user["events_1h"] == 3
    pusher.push(make_events([("fay", "i9", 9)]).drop(columns=["item_id"]))
    with pytest.raises(FeaturePushError, match="item_id"):
        pusher.close()
    with pytest.raises(FeaturePushError, match="events"):
        FeaturePusher(client, background=False)(object())


@pytest.mark.slow
def test_fastslow_scores_candidates_with_online_context_when_its_slow_model_reads_it(repo):
    """The serving path: `FastSlow.context` set to a `FeatureContext` over the store; an item the
    slow model never trained on is scored by its pushed category instead of sitting at the bottom."""
    from models.fastslow import FastSlow

    names = [f"cat{k}" for k in range(40)]
    cat_x = names[0]
    cat_y = next(n for n in names if category_bucket(n, 4) != category_bucket(cat_x, 4))
    bucket = {cat_x: category_bucket(cat_x, 4), cat_y: category_bucket(cat_y, 4)}
    ranker = SlowRanker(dim=8, epochs=40, seed=0, context={"user": [], "item": [], "categories": 4})
    pairs = [("a", "x1"), ("a", "x2"), ("b", "y1"), ("b", "y2")] * 10
    category = {"x1": bucket[cat_x], "x2": bucket[cat_x], "y1": bucket[cat_y], "y2": bucket[cat_y]}
    examples = ranker.build_examples(*zip(*pairs))
    ranker.set_item_table(list(category), np.zeros((4, 0)), np.array(list(category.values())))
    ranker.fit(examples.with_context(np.zeros((40, 0)), np.zeros((40, 0)), np.array([category[i] for _, i in pairs])))

    client = FeatureStoreClient(repo)
    client.push_events(make_events([("c", "x3", 0, "click", f'{{"category": "{cat_x}"}}'),
                                    ("c", "y3", 1, "click", f'{{"category": "{cat_y}"}}')], start_id=900))
    model = FastSlow(ranker=ranker, seed=0)
    for n, (user, item) in enumerate([("a", "x1"), ("b", "y1"), ("c", "x3"), ("c", "y3")]):
        model.learn_one(user, item, float(n))

    def slow_of(item: str) -> float:
        scored = model.score("a", exclude=["x1"])
        rows = [model._stats.items.id_of(int(r)) for r in scored.rows]
        return float(scored.slow[rows.index(item)])

    assert slow_of("x3") == slow_of("y3")            # no context: both unknown to the slow model
    model.context = FeatureContext(client, ranker.context)
    assert slow_of("x3") > slow_of("y3")             # the category a's taste is in
    assert pickle.loads(pickle.dumps(model)).context is None   # a live connection never travels
