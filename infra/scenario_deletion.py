"""Scenario: after ``DELETE /users/{id}`` nothing of the user is left where the system learns.

`deletion` serves the API with its in-process worker on a broker and a Feast repository,
posts events for ``users`` users (one of them the one to delete) over HTTP, pushes them to
the online features as the feature pipeline does, waits until the worker applied them, and
deletes the user. Then it looks in every place by inspection, not through the API:

- fast state: the model's users, the user's exported state and history;
- episodic memory: entries whose user row is the deleted user's;
- online features: the user's rows in every user feature view;
- the next consolidation sample: `consolidation.sampling.sample_replay` over the worker's
  event archive with the tombstones in ``deleted_users.txt`` (the archive keeps the events;
  the sample must not hold any);
- the worker's snapshot files, rewritten right after the deletion while it keeps running
  (what a restarted worker would restore): neither the user's state nor their id.
"""

from __future__ import annotations

import logging
import pickle
import time
import zlib
from pathlib import Path

from infra.faults import ScenarioResult

logger = logging.getLogger(__name__)

GONE = "u-deleted"


def deletion(bootstrap: str, data_dir: Path, ranker, *, users: int = 30, per_user: int = 8,
             timeout: float = 60.0) -> ScenarioResult:
    """Delete one user of a serving process and inspect every store (module docstring)."""
    import httpx

    from features.repository import apply_repo
    from features.store import FeatureStoreClient
    from infra.fault_streams import make_topic, wait_for
    from models.fastslow import FastSlow
    from serving.app import create_app
    from serving.runtime import Runtime
    from serving.server import BackgroundServer

    data_dir = Path(data_dir)
    apply_repo(data_dir / "feast")
    features = FeatureStoreClient(data_dir / "feast")
    topic, dlq = make_topic(bootstrap, partitions=2)
    runtime = Runtime(FastSlow(ranker=ranker.clone()), bootstrap=bootstrap, topic=topic, dlq_topic=dlq,
                      group_id=f"{topic}-serve", data_dir=data_dir, features=features,
                      worker_options={"flush_interval_s": 0.2, "durable": False})
    events = _events([GONE] + [f"u{k}" for k in range(users - 1)], per_user, sorted(ranker.items.ids()))
    with runtime, BackgroundServer(create_app(runtime)) as server, httpx.Client(base_url=server.url) as client:
        accepted = client.post("/events", json=events).json()["accepted"]
        features.push_events(_frame(events))
        wait_for(lambda: runtime.worker.stats.events_applied >= len(events), timeout, "the worker to apply the events")
        before = _footprint(runtime)
        snapshots = runtime.worker.stats.snapshots
        answer = client.delete(f"/users/{GONE}").json()
        after = _footprint(runtime)
        online = features.lookup(GONE, []).user_found
        wait_for(lambda: runtime.worker.stats.snapshots > snapshots, timeout, "the worker's next snapshot")
        snapshot = _snapshot_traces(data_dir, topic, runtime.group_id, runtime.worker_id)
    sample = _sample_traces(data_dir, topic)
    traces = {"fast_state": after["fast_state"], "memory_entries": after["memory_entries"],
              "online_feature_views": sum(online.values()), "sample_events": sample["events"],
              "snapshot_state": snapshot["state"], "snapshot_user_ids": len(snapshot["user_ids"])}
    details = {"held_before": before, "delete_answer": answer["removed"], "traces_after": traces,
               "snapshot_user_ids_where": snapshot["user_ids"], "sample_size": sample["size"],
               "archived_events_of_user": sample["archived"]}
    passed = before["fast_state"] > 0 and before["memory_entries"] > 0 and not any(traces.values())
    return ScenarioResult("deletion", passed, produced=len(events), applied=accepted,
                          lost=len(events) - accepted, details=details)


def _events(users: list[str], per_user: int, items: list[str]) -> list[dict]:
    start = int(time.time()) - 3600
    return [{"event_id": f"del-{u}-{k}", "user_id": u, "item_id": items[(zlib.crc32(u.encode()) + 7 * k) % len(items)],
             "timestamp": start + 60 * k + n, "event_type": "click"}
            for n, u in enumerate(users) for k in range(per_user)]


def _frame(events: list[dict]):
    import pandas as pd

    frame = pd.DataFrame(events)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s", utc=True).astype("datetime64[ms, UTC]")
    frame["value"], frame["context"] = 1.0, None
    return frame


def _footprint(runtime) -> dict[str, int]:
    """What the serving model holds of `GONE`: fast state (0/1), history, memory entries by user row."""
    with runtime.lock:
        model = runtime.model
        exported = pickle.loads(model.export_users([GONE]))
        row = model._users.get(GONE)
        entries = model._memory.entries()
        return {"fast_state": int(GONE in model.users() or bool(exported)), "history": len(model.history(GONE)),
                "memory_entries": int((entries.users == row).sum()) if row >= 0 else 0}


def _snapshot_traces(data_dir: Path, topic: str, group: str, worker_id: str) -> dict:
    """The deleted user's state in the worker's snapshot files, and where its id remains there."""
    from streaming.snapshots import SnapshotStore, snapshot_dir

    store = SnapshotStore(snapshot_dir(data_dir, topic, group))
    worker = store.read_worker(worker_id)
    state = int(GONE in worker.model.users()) + len(pickle.loads(worker.model.export_users([GONE])))
    ids = [f"worker snapshot users of partition {p}" for p, users in worker.users.items() if GONE in users]
    for p in worker.offsets:
        partition = store.read_partition(p)
        if partition is not None and partition.state is not None:
            state += len(pickle.loads(partition.state).get(GONE, {}))
            if GONE in partition.users:
                ids.append(f"partition {p} snapshot users")
    return {"state": state, "user_ids": ids}


def _sample_traces(data_dir: Path, topic: str) -> dict[str, int]:
    """The deleted user's events in the archive (kept: tombstones exclude them) and in the next replay sample."""
    from consolidation.sampling import read_deleted_users, sample_replay
    from serving.deletion import FILE_NAME
    from streaming.archive import archive_dir, iter_archive

    archived = {e: u for t in iter_archive(archive_dir(data_dir, topic))
                for e, u in zip(t.column("event_id").to_pylist(), t.column("user_id").to_pylist())}
    sample = sample_replay(iter_archive(archive_dir(data_dir, topic)), 10_000,
                           deleted=read_deleted_users(data_dir / FILE_NAME))
    gone_events = {e for e, u in archived.items() if u == GONE}
    return {"size": len(sample), "archived": len(gone_events),
            "events": int(sum(u == GONE for u in sample.users.tolist()) + len(gone_events & set(sample.event_ids.tolist())))}

