"""A served FastSlow ranks over the champion's whole catalogue from the first request (issue 15,
finding 1): `k` items come back whenever the catalogue has `k` items the user has not had, with
``fallback`` reasons for a user nothing is known about yet.

The model here has seen *no* stream event when the first request comes, as a server started
right after `fastslow consolidate --events` has not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from consolidation_fixtures import one_torch_thread  # noqa: F401 (autouse)
from serving_fixtures import LAST_S, clustered_ranker

from models.fastslow import FastSlow
from models.scorer import FALLBACK
from serving.catalogue import _grow
from serving.runtime import Runtime

@pytest.fixture(scope="module")
def ranker():
    return clustered_ranker()


def served(ranker, tmp_path) -> Runtime:
    return Runtime(FastSlow(ranker=ranker.clone(), catalogue=True), data_dir=tmp_path)


def items(body: dict) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def test_a_user_with_two_clicks_gets_k_items_from_the_whole_catalogue(ranker, tmp_path):
    catalogue = set(ranker.items.ids())
    with served(ranker, tmp_path) as runtime:
        runtime.model.learn_one("ann", "i2-1", LAST_S + 1)   # what the worker does with her two clicks
        runtime.model.learn_one("ann", "i2-4", LAST_S + 2)
        for k in (3, 10):
            got = runtime.recommend("ann", k)
            assert len(items(got)) == k and not got["cold_start"]
            assert set(items(got)) <= catalogue - {"i2-1", "i2-4"}
        everything = items(runtime.recommend("ann", 100))
        assert len(everything) == len(catalogue) - 2 and len(set(everything)) == len(everything)


def test_a_new_user_gets_k_fallback_items_before_any_event(ranker, tmp_path):
    with served(ranker, tmp_path) as runtime:
        got = runtime.recommend("new-user", 5)
    assert got["cold_start"] and len(items(got)) == 5
    assert all(item["reason"].startswith(FALLBACK) for item in got["items"])
    # the cold list is the slow model's best guess for an unknown user: its top 5 by score
    scores = ranker.score("new-user", [], ranker.items.ids())
    best = [ranker.items.ids()[n] for n in np.argsort(-scores, kind="stable")[:5]]
    assert sorted(items(got)) == sorted(best)


def test_a_known_user_gets_personal_reasons(ranker, tmp_path):
    with served(ranker, tmp_path) as runtime:
        runtime.model.learn_one("ann", "i2-1", LAST_S + 1)
        reasons = [item["reason"] for item in runtime.recommend("ann", 5)["items"]]
    assert not any(reason.startswith(FALLBACK) for reason in reasons)


def test_items_of_a_promoted_champion_are_candidates_at_once(ranker, tmp_path):
    grown = ranker.clone()
    _grow(grown, ["new-1", "new-2"], torch, np.random.default_rng(0), 0.5)
    with served(ranker, tmp_path) as runtime:
        runtime.model.learn_one("ann", "i2-1", LAST_S + 1)
        with runtime.lock:
            runtime.model.use_ranker(grown, keep_fast=0.0)
        everything = items(runtime.recommend("ann", 100))
    assert {"new-1", "new-2"} <= set(everything) and len(everything) == len(grown.items) - 1


def test_replay_models_still_rank_only_what_the_stream_showed(ranker):
    model = FastSlow(ranker=ranker.clone())   # catalogue=False: the prequential protocol's candidates
    model.learn_one("ann", "i2-1", LAST_S + 1)
    model.learn_one("bob", "i3-0", LAST_S + 2)
    assert model.recommend("ann", 10, exclude=model.history("ann")) == ["i3-0"]
