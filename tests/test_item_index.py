"""ItemIndex: exact top-k equals numpy's; the approximate index finds most of the true top-k."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fastslow.errors import ConfigError
from models.item_index import ItemIndex
from models.memory import IndexInputError


def _clustered(rng, n, d=16, clusters=20):
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(clusters, size=n)] + 0.5 * rng.standard_normal((n, d))
    return (x * rng.lognormal(0, 0.3, size=(n, 1))).astype(np.float32)


def test_exact_search_matches_numpy_argsort_with_row_labels():
    rng = np.random.default_rng(0)
    vectors = _clustered(rng, 500)
    rows = rng.permutation(10_000)[:500]
    index = ItemIndex().build(vectors, rows=rows)
    assert index.is_exact and len(index) == 500 and index.dim == 16
    for query in _clustered(rng, 5):
        scores = vectors @ query
        order = np.argsort(-scores, kind="stable")[:10]
        got_rows, got_scores = index.search(query, 10)
        assert got_rows.tolist() == rows[order].tolist()
        assert np.allclose(got_scores, scores[order], rtol=1e-5)


def test_excluded_rows_never_come_back_and_do_not_cost_result_slots():
    rng = np.random.default_rng(1)
    vectors = _clustered(rng, 300)
    index = ItemIndex().build(vectors)
    query = _clustered(rng, 1)[0]
    best = np.argsort(-(vectors @ query))
    excluded = set(best[:25].tolist())
    rows, _ = index.search(query, 10, exclude_rows=excluded)
    assert rows.tolist() == best[25:35].tolist()
    rows, _ = index.search(query, 1000, exclude_rows=excluded)
    assert len(rows) == 275 and not set(rows.tolist()) & excluded


def test_rebuild_replaces_the_catalogue():
    rng = np.random.default_rng(2)
    index = ItemIndex().build(_clustered(rng, 50))
    fresh = _clustered(rng, 20)
    index.build(fresh, rows=np.arange(100, 120))
    rows, _ = index.search(fresh[3], 20)
    assert len(index) == 20 and sorted(rows.tolist()) == list(range(100, 120))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_finds_most_of_the_true_top_k(kind):
    rng = np.random.default_rng(3)
    vectors = _clustered(rng, 4000)
    index = ItemIndex(exact_max=1000, kind=kind).build(vectors)
    assert not index.is_exact
    queries = vectors[rng.integers(4000, size=50, dtype=np.int64)] + 0.1
    recalls = []
    for query in queries:
        truth = set(np.argsort(-(vectors @ query))[:20].tolist())
        rows, scores = index.search(query, 20)
        assert np.allclose(scores, vectors[rows] @ query, rtol=1e-4, atol=1e-4)
        recalls.append(len(truth & set(rows.tolist())) / 20)
    assert np.mean(recalls) >= 0.9


@pytest.mark.parametrize(("exact_max", "kind"), [(10_000, "ivf"), (100, "ivf"), (100, "hnsw")])
def test_pickle_round_trip_gives_identical_results(exact_max, kind):
    rng = np.random.default_rng(4)
    vectors = _clustered(rng, 600)
    index = ItemIndex(exact_max=exact_max, kind=kind, ef_search=40, nprobe=3)
    index.build(vectors, rows=np.arange(600) * 3)
    copy = pickle.loads(pickle.dumps(index))
    assert copy.is_exact == index.is_exact == (exact_max > 600)
    for query in _clustered(rng, 10):
        a, b = index.search(query, 15, exclude_rows=[0, 3]), copy.search(query, 15, exclude_rows=[0, 3])
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_unbuilt_index_finds_nothing_and_bad_inputs_are_refused():
    assert len(ItemIndex().search(np.ones(4), 5)[0]) == 0
    index = ItemIndex().build(np.eye(4, dtype=np.float32))
    with pytest.raises(IndexInputError, match="query"):
        index.search(np.ones(3), 2)
    with pytest.raises(IndexInputError, match="rows"):
        ItemIndex().build(np.eye(4), rows=[1, 2])
    with pytest.raises(IndexInputError, match="item vectors"):
        ItemIndex().build(np.ones(4))
    with pytest.raises(ConfigError):
        ItemIndex(hnsw_m=0)
    with pytest.raises(ConfigError):
        ItemIndex(kind="lsh")
