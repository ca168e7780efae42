"""Arbitrary input never breaks the API: generated bodies and query strings get an answer
with a reason (4xx) or are accepted, never a server error."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from serving_fixtures import clustered_model, clustered_ranker, event, serving

from serving.runtime import Runtime

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children,
                                                                                      max_size=5),
                    max_leaves=20)
FIELDS = st.sampled_from(["event_id", "user_id", "item_id", "timestamp", "event_type", "value", "context"])
ALMOST_EVENTS = st.builds(lambda base, extra, drop: {k: v for k, v in {**base, **extra}.items() if k not in drop},
                          st.just(event("u1", "i0-1", 1)), st.dictionaries(FIELDS | st.text(max_size=8), JSON,
                                                                           max_size=3),
                          st.sets(FIELDS, max_size=2))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    runtime = Runtime(clustered_model(clustered_ranker()), data_dir=tmp_path_factory.mktemp("fuzz"))
    with serving(runtime) as client:
        yield client


def _check(response) -> None:
    assert response.status_code < 500 or response.status_code == 503, response.text  # 503: no broker here
    if response.status_code == 503:
        assert "no Kafka broker configured" in response.json()["detail"]
    elif response.status_code == 422:
        for problem in response.json()["detail"]:
            assert problem["field"] and problem["reason"].startswith("expected") and problem["message"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=JSON | st.lists(ALMOST_EVENTS, max_size=4) | ALMOST_EVENTS)
def test_any_json_body_posted_as_events_is_answered_with_reasons(client, body):
    _check(client.post("/events", json=body))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user_id=st.text(max_size=300), k=st.text(max_size=6) | st.integers(-5, 200).map(str),
       exclude=st.sampled_from(["true", "false", "1", "0", "yes", "maybe", ""]))
def test_any_query_string_to_recommend_is_answered_with_reasons(client, user_id, k, exclude):
    response = client.get("/recommend", params={"user_id": user_id, "k": k, "exclude_seen": exclude})
    _check(response)
    assert response.status_code in (200, 422)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
@example(raw=b'{"user_id": "u", "item_id": "i", "timestamp": 1714564800, "value": NaN}')
@example(raw=b'[{"user_id": "u", "item_id": "i", "timestamp": Infinity}]')
@example(raw=b"[" * 100_000 + b"]" * 100_000)
def test_any_bytes_posted_as_events_are_answered_with_reasons(client, raw):
    _check(client.post("/events", content=raw, headers={"content-type": "application/json"}))
