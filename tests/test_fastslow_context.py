"""FastSlow over a slow model trained with item context: the fast path reads id + context vectors.

The context source here is a fixed table (what `features.context.FeatureContext` reads from
Feast); no feature store is needed.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from models.fastslow import FastSlow
from models.gate import FAST_SIGNALS, normalise
from models.item_space import ContextItems
from models.slow import ContextArrays, SlowRanker, below_known, slow_scores

SPEC = {"user": ["events_1h", "has_prev", "last_click"], "item": ["pop_long", "price", "has_price"],
        "categories": 8}
ATTRIBUTES = {"x": ([0.2, 1.0, 1.0], 1), "y": ([0.5, -0.3, 1.0], 2), "z": ([0.9, 0.4, 1.0], 1),
              "new": ([0.1, 0.7, 1.0], 2)}
USER = np.array([0.3, 1.0, 0.0], np.float32)
FAST_WEIGHTS = FAST_SIGNALS.index("fast_weights")


class Catalogue:
    """Fixed item attributes and one user context for everyone; an unknown item reads as missing."""

    def __init__(self, attributes: dict[str, tuple[list[float], int]]) -> None:
        self.attributes = dict(attributes)
        self.reads = 0

    def items(self, item_ids):
        self.reads += len(item_ids)
        rows = [self.attributes.get(i, ([0.0, 0.0, 0.0], 0)) for i in item_ids]
        return (np.array([r[0] for r in rows], np.float32).reshape(len(rows), 3),
                np.array([r[1] for r in rows], np.int64))

    def user(self, user_id):
        return USER

    def context(self, item_ids) -> ContextArrays:
        return ContextArrays(USER, *self.items(item_ids))


@pytest.fixture(scope="module")
def ranker() -> SlowRanker:
    """A context model trained on x, y, z (it has no id row for "new")."""
    ranker = SlowRanker(dim=8, epochs=5, batch_size=8, seed=0, context=SPEC)
    users, items = ["a", "a", "b", "b", "c"] * 6, ["x", "y", "x", "z", "y"] * 6
    catalogue = Catalogue(ATTRIBUTES)
    numeric, categories = catalogue.items(items)
    ranker.fit(ranker.build_examples(users, items).with_context(np.tile(USER, (len(items), 1)), numeric, categories))
    return ranker


def _model(ranker: SlowRanker, context: Catalogue | None) -> FastSlow:
    model = FastSlow(ranker=ranker.clone(), seed=0)
    model.context = context
    for n, (user, item) in enumerate([("a", "x"), ("b", "y"), ("c", "new"), ("a", "new"), ("b", "z")]):
        model.learn_one(user, item, float(n))
    return model


def test_context_item_vectors_give_the_full_slow_score(ranker):
    """V @ u + b (`SlowRanker.context_item_vectors`) equals `slow_scores` with the same context
    for items with an id row, and the context-only score for one without (before `below_known`);
    one item checked against a plain-Python sum of its parts."""
    ids = ["x", "z", "new"]
    rows = ranker.items.lookup(ids)
    context = Catalogue(ATTRIBUTES).context(ids)
    base = ranker.user_vector("a", ["y"])
    vectors, biases = ranker.context_item_vectors(rows, context.items, context.categories)
    full = vectors @ ranker.context_user_vector(base, context.user) + biases
    assert full[:2] == pytest.approx(slow_scores(ranker, base, rows, context)[:2], abs=1e-5)
    assert full[2] == pytest.approx(ranker.context_scores(base, rows, context)[2], abs=1e-5)

    weights, row = ranker._context, int(rows[0])
    u = [float(b) + sum(float(w) * float(c) for w, c in zip(weights.user_w[d], USER)) for d, b in enumerate(base)]
    numeric, category = ATTRIBUTES["x"]
    part = [sum(float(w) * c for w, c in zip(weights.item_w[d], numeric)) + float(weights.category[category][d])
            for d in range(ranker.dim + 1)]
    by_hand = (sum((float(ranker.item_vectors[row][d]) + part[d]) * u[d] for d in range(ranker.dim))
               + float(ranker.item_biases[row]) + part[ranker.dim])
    assert math.isclose(full[0], by_hand, rel_tol=1e-5, abs_tol=1e-5)


def test_a_fastslow_with_a_context_source_scores_and_learns_with_id_plus_context_vectors(ranker):
    model = _model(ranker, Catalogue(ATTRIBUTES))
    scored = model.score("a", exclude=["x"])
    ids = model._stats.items.ids_of(scored.rows)
    slow_rows = model.slow_model.items.lookup(ids)
    context = Catalogue(ATTRIBUTES).context(ids)
    vectors, biases = model.slow_model.context_item_vectors(slow_rows, context.items, context.categories)
    base, fast_vec = model._user_vector("a")
    user = model.slow_model.context_user_vector(base, USER)
    known = slow_rows >= 0
    assert "new" in ids and not known[ids.index("new")]
    assert scored.slow == pytest.approx(normalise(below_known(vectors @ user + biases, known)), abs=1e-5)
    # the slow score is the one the slow model gives with this context (what scoring used before)
    assert scored.slow == pytest.approx(normalise(slow_scores(model.slow_model, base, slow_rows, context)), abs=1e-5)
    assert scored.fast[:, FAST_WEIGHTS] == pytest.approx(normalise(vectors @ fast_vec), abs=1e-5)
    # "new" has no id row, yet it has a vector: the fast path learned it and its index finds it
    space = model._item_space()
    assert np.abs(model._fast.vector("c", model.clock)).sum() > 0
    new_row = model._stats.items.get("new")
    assert new_row in space.index.search(space.vectors[new_row], k=len(space.index))[0].tolist()


def test_without_a_context_source_the_fast_path_reads_the_id_vectors(ranker):
    model = _model(ranker, None)
    scored = model.score("a", exclude=["x"])
    ids = model._stats.items.ids_of(scored.rows)
    slow_rows = model.slow_model.items.lookup(ids)
    known = slow_rows >= 0
    base, fast_vec = model._user_vector("a")
    raw = np.zeros(len(ids))
    raw[known] = model.slow_model.item_vectors[slow_rows[known]] @ base + model.slow_model.item_biases[slow_rows[known]]
    raw[~known] = raw[known].min()
    assert scored.slow == pytest.approx(normalise(raw), abs=1e-6)
    fast = np.zeros(len(ids))
    fast[known] = model.slow_model.item_vectors[slow_rows[known]] @ fast_vec
    assert scored.fast[:, FAST_WEIGHTS] == pytest.approx(normalise(fast), abs=1e-6)
    assert not np.abs(model._fast.vector("c", model.clock)).any()   # "new" has no vector: nothing learned
    # a source set and removed again leaves no trace in scoring
    model.context = Catalogue(ATTRIBUTES)
    model.score("a", exclude=["x"])
    model.context = None
    again = model.score("a", exclude=["x"])
    assert np.array_equal(again.rows, scored.rows) and np.array_equal(again.slow, scored.slow)


def test_context_vectors_follow_a_changed_attribute_a_new_model_and_never_travel(ranker):
    catalogue = Catalogue(ATTRIBUTES)
    model = _model(ranker, catalogue)
    model.score("a")                                         # every item's vector computed
    row = model._stats.items.get("z")
    before = model._item_space().vectors[row].copy()
    catalogue.attributes["z"] = ([0.9, 0.4, 1.0], 3)      # z's category arrived late
    model.score("a")
    assert np.array_equal(model._item_space().vectors[row], before)   # not read per request
    model.learn_one("c", "z", 10.0)                          # the event on z reads it again
    model.flush()
    space = model._item_space()
    expected = model.slow_model.context_item_vectors(model.slow_model.items.lookup(["z"]), *catalogue.items(["z"]))
    assert np.array_equal(space.vectors[row], expected[0][0]) and space.biases[row] == expected[1][0]

    promoted = ranker.clone()
    promoted.net.category.weight.data += 0.5
    promoted.refresh()
    reads = catalogue.reads
    model.use_ranker(promoted)
    space = model._item_space()
    assert catalogue.reads == reads        # a new champion: same context, new vectors, nothing re-read
    model.context = catalogue              # serving sets the same source again after a promotion
    model._item_space()
    assert catalogue.reads == reads
    ids = model._stats.items.ids()
    vectors, biases = promoted.context_item_vectors(promoted.items.lookup(ids), *catalogue.items(ids))
    assert np.array_equal(space.vectors, vectors) and np.array_equal(space.biases, biases)

    copy = pickle.loads(pickle.dumps(model))
    assert copy.context is None and copy._context_items is None


def test_context_items_rebuild_their_index_when_it_has_doubled(ranker):
    items = ContextItems(ranker)
    numeric, categories = Catalogue(ATTRIBUTES).items(["x", "y"])
    items.update(np.array([0, 1]), ranker.items.lookup(["x", "y"]), numeric, categories)
    items.update(np.array([1]), ranker.items.lookup(["y"]), numeric[1:] + 1.0, categories[1:])   # changed: re-added
    assert len(items.space().index) == 3
    items.update(np.array([2]), np.array([-1]), numeric[:1], categories[:1])                    # 4 >= 2 * 2: rebuilt
    space = items.space()
    assert len(space.index) == 3 and space.count == 3
    vectors, _ = ranker.context_item_vectors(np.r_[ranker.items.lookup(["x", "y"]), -1],
                                             np.r_[numeric[:1], numeric[1:] + 1.0, numeric[:1]],
                                             np.r_[categories, categories[:1]])
    assert np.array_equal(space.vectors, vectors)


def test_a_model_with_user_context_only_keeps_the_id_vectors_and_adds_the_user_part():
    ranker = SlowRanker(dim=8, epochs=3, batch_size=8, seed=0, context={"user": SPEC["user"], "item": [], "categories": 0})
    users, items = ["a", "a", "b", "b", "c"] * 6, ["x", "y", "x", "z", "y"] * 6
    ranker.fit(ranker.build_examples(users, items).with_context(np.tile(USER, (30, 1)), np.zeros((30, 0)), np.zeros(30)))
    model = _model(ranker, Catalogue(ATTRIBUTES))
    scored = model.score("a", exclude=["x"])
    ids = model._stats.items.ids_of(scored.rows)
    rows = model.slow_model.items.lookup(ids)
    known = rows >= 0
    base, _ = model._user_vector("a")
    full = slow_scores(model.slow_model, base, rows, Catalogue(ATTRIBUTES).context(ids))
    assert scored.slow[known] == pytest.approx(normalise(full[known]), abs=1e-5)
    assert model._item_space().vectors is model.slow_model.item_vectors
