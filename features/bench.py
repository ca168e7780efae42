"""`fastslow bench features`: online lookup latency for one user and N candidate items.

Sets up its own repository in a temporary folder, pushes synthetic events through the
streaming aggregates (a few thousand users and items, with item attributes), then times
`FeatureStoreClient.lookup` for a random user and N random known items. For comparison it
also times Feast's generic `get_online_features` over the same feature service. The last
stdout line is one JSON object:
``{"lookup_ms": {"p50": x, "p99": x, "n": N}, "candidates": 200, ...}`` (wall clock), plus
``lookup_cpu_ms`` (the lookup thread's CPU time), ``get_online_features_ms``,
``push_events_per_s`` and the ``missing`` counters.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import ExitStack

import typer


def bench_features(
    users: int = typer.Option(3000, help="Users with pushed features."),
    items: int = typer.Option(3000, help="Items with pushed features."),
    events: int = typer.Option(30000, help="Synthetic events pushed to build the features."),
    candidates: int = typer.Option(200, help="Candidate items per lookup."),
    lookups: int = typer.Option(1000, help="Timed lookups."),
    online_store: str = typer.Option("sqlite", help="sqlite, or redis (starts a redis-server)."),
    json_only: bool = typer.Option(False, "--json", help="Print only the JSON result."),
) -> None:
    """Time online feature lookups for 1 user + N candidate items."""
    import numpy as np

    if events < max(users, items) or candidates > items:
        raise typer.BadParameter("need events >= users and items, and candidates <= items")

    from features.repository import apply_repo
    from features.store import FeatureStoreClient
    from infra.redis import RedisServer

    rng = np.random.default_rng(0)
    with ExitStack() as stack:
        repo = stack.enter_context(tempfile.TemporaryDirectory(prefix="fastslow-bench-"))
        redis_url = (stack.enter_context(RedisServer()).url if online_store == "redis"
                     else None)
        store = apply_repo(repo, online_store, redis_url)
        client = FeatureStoreClient(repo)
        push_s = _push(client, rng, users, items, events)
        item_ids = np.array([f"i{k}" for k in range(items)])
        requests = [(f"u{rng.integers(users)}",
                     item_ids[rng.choice(items, candidates, replace=False)].tolist())
                    for _ in range(lookups + 50)]
        lookup = _time(lambda user, cands: client.lookup(user, cands), requests)
        service = store.get_feature_service("ranker_context")

        def feast_lookup(user: str, cands: list[str]) -> None:
            rows = [{"user_id": user, "item_id": i} for i in cands]
            store.get_online_features(features=service, entity_rows=rows).to_dict()

        feast = _time(feast_lookup, requests[: max(70, lookups // 10)])
    lookup_ms, feast_ms = lookup["wall"], feast["wall"]
    result = {"lookup_ms": lookup_ms, "candidates": candidates, "online_store": online_store,
              "lookup_cpu_ms": lookup["cpu"], "get_online_features_ms": feast_ms,
              "push_events_per_s": round(events / push_s, 1),
              "missing": dict(client.missing)}
    if not json_only:
        typer.echo(f"1 user + {candidates} items, {online_store}: p50 {lookup_ms['p50']} ms, "
                   f"p99 {lookup_ms['p99']} ms (Feast get_online_features p50 "
                   f"{feast_ms['p50']} ms); pushed {events} events in {push_s:.2f} s")
    typer.echo(json.dumps(result))


def _push(client, rng, users: int, items: int, events: int) -> float:
    """Push `events` synthetic events in batches of 1,000; return the seconds it took."""
    import numpy as np
    import pandas as pd

    start = pd.Timestamp("2024-01-01", tz="UTC")
    seconds = np.sort(rng.integers(0, 2 * 86400, events))
    frame = pd.DataFrame({
        "event_id": [f"e{k}" for k in range(events)],
        "user_id": [f"u{k}" for k in rng.integers(users, size=events)],
        "item_id": [f"i{k}" for k in rng.integers(items, size=events)],
        "timestamp": start + pd.to_timedelta(seconds, unit="s"),
        "event_type": rng.choice(["view", "click", "purchase"], events),
        "value": 1.0,
    })
    # Every user and item gets at least one event, so every lookup finds all of them.
    frame.loc[: users - 1, "user_id"] = [f"u{k}" for k in range(users)]
    frame.loc[: items - 1, "item_id"] = [f"i{k}" for k in range(items)]
    frame["context"] = [json.dumps({"category": f"c{int(i[1:]) % 20}",
                                    "price": 1.0 + int(i[1:]) % 7}) for i in frame["item_id"]]
    began = time.perf_counter()
    for lo in range(0, events, 1000):
        client.push_events(frame.iloc[lo: lo + 1000])
    return time.perf_counter() - began


def _time(call, requests: list[tuple[str, list[str]]]) -> dict[str, dict[str, float]]:
    """Wall-clock and CPU percentiles (ms) of `call(*request)`; the first 50 only warm up.

    CPU time (this thread's) is reported too: on a machine shared with other jobs the wall
    clock includes waiting for a core.
    """
    import numpy as np

    wall, cpu = [], []
    for user, cands in requests:
        began, began_cpu = time.perf_counter(), time.thread_time()
        call(user, cands)
        cpu.append((time.thread_time() - began_cpu) * 1e3)
        wall.append((time.perf_counter() - began) * 1e3)

    def summary(took: list[float]) -> dict[str, float]:
        took = took[50:]
        return {"p50": round(float(np.percentile(took, 50)), 3),
                "p99": round(float(np.percentile(took, 99)), 3), "n": len(took)}

    return {"wall": summary(wall), "cpu": summary(cpu)}
