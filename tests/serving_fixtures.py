"""Helpers for the serving tests: a small clustered model, the API on a real server, polling.

Users ``u0..u39`` each stick to one of 4 item clusters (``i{cluster}-{k}``, 8 items each,
`consolidation_fixtures.cluster_events`), so a new user who takes a few items of one cluster
should be recommended the rest of it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx
import pyarrow as pa
import torch
from consolidation_fixtures import cluster_events, trained_ranker

from models.fastslow import FastSlow
from models.slow import SlowRanker
from serving.app import create_app
from serving.runtime import Runtime
from serving.server import BackgroundServer

EVENTS = cluster_events(users=40, per_user=12)
LAST_S = EVENTS.column("timestamp").cast(pa.int64()).to_pylist()[-1] / 1000
CLUSTER_2 = [f"i2-{k}" for k in range(8)]


def clustered_ranker(**params) -> SlowRanker:
    """A slow ranker trained on `EVENTS` (about a second; one torch thread, as module-scoped
    fixtures run before the autouse `consolidation_fixtures.one_torch_thread`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return trained_ranker(EVENTS, **{"epochs": 6, **params})
    finally:
        torch.set_num_threads(before)


def clustered_model(ranker: SlowRanker) -> FastSlow:
    """A FastSlow over a copy of ``ranker`` that has learned every event of `EVENTS`."""
    model = FastSlow(ranker=ranker.clone())
    stamps = EVENTS.column("timestamp").cast(pa.int64()).to_pylist()
    for user, item, ms in zip(EVENTS.column("user_id").to_pylist(), EVENTS.column("item_id").to_pylist(), stamps):
        model.learn_one(user, item, ms / 1000)
    model.flush()
    return model


def event(user: str, item: str, seconds_after_log: float, **fields) -> dict:
    """An HTTP event body (ISO timestamp) just after the last event of `EVENTS`."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(LAST_S + seconds_after_log))
    return {"user_id": user, "item_id": item, "timestamp": stamp, **fields}


@contextlib.contextmanager
def serving(runtime: Runtime, api_key: str | None = None) -> Iterator[httpx.Client]:
    """Start ``runtime``, serve its app with uvicorn on a free loopback port; yield a client."""
    with runtime, BackgroundServer(create_app(runtime, api_key)) as server, \
            httpx.Client(base_url=server.url, timeout=30.0) as client:
        yield client


def recommended(client: httpx.Client, user: str, k: int = 4) -> list[str]:
    response = client.get("/recommend", params={"user_id": user, "k": k})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def wait_for(condition, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition()`` until true; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
