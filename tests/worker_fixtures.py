"""Helpers for the producer and worker tests: event tables, a small partitioned model, replay.

`UserItemCounts` is a real (if tiny) recommender that implements
`streaming.state.PartitionedState` honestly, and whose whole state does not depend on how
events of different users interleave, so a worker's state can be compared exactly with an
in-process replay of the same events.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Collection
from pathlib import Path

import pyarrow as pa

from infra.fault_streams import BASE_MS, keyed_events, make_topic, unique  # noqa: F401 (unique: for the tests)
from models.base import Recommender
from streaming.kafka import committed_offsets



def make_topics(bootstrap: str, partitions: int = 4) -> tuple[str, str]:
    """A fresh interactions topic and its dead-letter topic."""
    return make_topic(bootstrap, partitions, prefix="interactions")


def event_table(n: int, users: int = 50, items: int = 40, seed: int = 0, start_ms: int = BASE_MS,
                prefix: str = "e") -> pa.Table:
    """``n`` events with unique ids, ``users`` users, ``items`` items, one per second."""
    return keyed_events(n, users=users, items=items, seed=seed, start_ms=start_ms, step_ms=1000, prefix=prefix)


def replay(model: Recommender, table: pa.Table) -> Recommender:
    """Learn every event of ``table`` in row order, as the prequential replay does."""
    stamps = table.column("timestamp").cast(pa.int64()).to_pylist()
    for u, i, t, e, v in zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist(), stamps,
                             table.column("event_type").to_pylist(), table.column("value").to_pylist()):
        model.learn_one(u, i, t / 1000, e, v)
    return model


def wait_for(condition, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``condition()`` until true; fail the test with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


TESTS_DIR = Path(__file__).parent
FASTSLOW = Path(sys.executable).parent / "fastslow"


def start_worker(broker: str, topic: str, group: str, data_dir: Path, log: Path, *extra: str,
                 model: str = "worker_fixtures:UserItemCounts", flush_interval: float = 0.2,
                 snapshot_interval: float = 1.0, snapshot_events: int = 2500,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """`fastslow worker` as a child process (worker id ``w1``), its output appended to ``log``.

    ``model=None`` leaves ``--model`` out (the command's default: FastSlow over the champion).
    """
    argv = [str(FASTSLOW), "worker", "--bootstrap-servers", broker, "--topic", topic, "--dlq-topic", topic + ".dlq",
            "--group", group, "--worker-id", "w1", "--data-dir", str(data_dir),
            "--flush-interval", str(flush_interval), "--snapshot-interval", str(snapshot_interval),
            "--snapshot-events", str(snapshot_events), "--stats-interval", "0.5", *extra]
    if model is not None:
        argv += ["--model", model]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
           "FASTSLOW_LOG_LEVEL": "INFO", **(env or {})}
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_in_log(log: Path, text: str, process: subprocess.Popen, timeout: float) -> None:
    """Wait until ``text`` appears in ``log``; fail at once if the process exits first."""
    def seen() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"worker exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        return text in log.read_text()

    wait_for(seen, timeout, f"{text!r} in the worker log")


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    return sum(o or 0 for o in committed_offsets(bootstrap, group, topic).values())


class UserItemCounts(Recommender):
    """Per user: weight per item, last item, event count, last time. Global: item weights and
    transitions (a user's previous item -> next item). Recommends by transitions from the user's
    last item, then by item weight, then by item id."""

    name = "user-item-counts"

    def __init__(self) -> None:
        self._users: dict[str, dict] = {}
        self._popularity: Counter[str] = Counter()
        self._transitions: dict[str, Counter[str]] = {}

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        state = self._users.setdefault(user_id, {"items": {}, "last": None, "events": 0, "time": 0.0})
        if state["last"] is not None:
            self._transitions.setdefault(state["last"], Counter())[item_id] += 1
        state["items"][item_id] = state["items"].get(item_id, 0.0) + value
        state["last"], state["events"], state["time"] = item_id, state["events"] + 1, timestamp
        self._popularity[item_id] += value

    def recommend(self, user_id: str, k: int, exclude: Collection[str] = ()) -> list[str]:
        state = self._users.get(user_id)
        nexts = self._transitions.get(state["last"], Counter()) if state else Counter()
        ranked = sorted(self._popularity, key=lambda i: (-nexts[i], -self._popularity[i], i))
        return [i for i in ranked if i not in exclude][:k]

    # PartitionedState
    def users(self) -> list[str]:
        return list(self._users)

    def export_users(self, user_ids: Collection[str]) -> bytes:
        return pickle.dumps({u: self._users[u] for u in user_ids if u in self._users})

    def import_users(self, blob: bytes) -> None:
        self._users.update(pickle.loads(blob))

    def forget_users(self, user_ids: Collection[str]) -> None:
        for user in user_ids:
            self._users.pop(user, None)

    # for exact comparisons
    def user_state(self) -> dict:
        return {u: dict(s, items=dict(s["items"])) for u, s in self._users.items()}

    def global_state(self) -> dict:
        return {"popularity": dict(self._popularity),
                "transitions": {h: dict(c) for h, c in self._transitions.items()}}
