"""End to end, the README's path without the demo, against the real pieces (issue 15):

``fastslow broker --partitions 2`` -> ``fastslow consolidate --events LOG`` -> ``fastslow serve``
-> ``POST /events`` -> the user's list has ``k`` items and changes; then the broker (memory
storage: its log is gone) and the server restart on the same data dir -> ``POST /events`` ->
the events are applied and the list changes again.

Every command runs as its own process, as a user would start it. Every wait polls with a
deadline (the CI box is a loaded 2-core machine).
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from consolidation_fixtures import cluster_events, fresh_tracking_uri

pytestmark = [pytest.mark.broker, pytest.mark.slow]

FASTSLOW = Path(sys.executable).parent / "fastslow"
START_S, APPLY_S, CONSOLIDATE_S = 120.0, 60.0, 240.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_log(path: Path) -> None:
    """A small clustered log (users stick to one of 4 item clusters ``i<c>-<k>``) as CSV."""
    table = cluster_events(users=60, per_user=15)
    stamps = table.column("timestamp").cast(pa.int64()).to_pylist()
    with open(path, "w", newline="") as file:
        out = csv.writer(file)
        out.writerow(["user_id", "item_id", "timestamp"])
        for user, item, ms in zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist(), stamps):
            out.writerow([user, item, ms])


class Process:
    """A ``fastslow`` command in the background, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], folder: Path) -> None:
        self.name, self.log = name, folder / f"{name}.log"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen([str(FASTSLOW), *args], stdout=out, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def check(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.output()[-4000:]}")

    def stop(self, timeout: float = 60.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def poll(condition, timeout: float, what: str, *watched: Process):
    """Call ``condition()`` until it returns something truthy; fail after ``timeout`` s, or at
    once when a watched process exits."""
    deadline = time.monotonic() + timeout
    while True:
        for process in watched:
            process.check()
        try:
            found = condition()
        except httpx.TransportError:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in watched)
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")
        time.sleep(0.25)


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def recommend(client: httpx.Client, user: str, k: int) -> dict:
    response = client.get("/recommend", params={"user_id": user, "k": k})
    assert response.status_code == 200, response.text
    return response.json()


def items(body: dict) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def test_readme_path_broker_consolidate_serve_post_restart_post(tmp_path):
    data_dir = tmp_path / "data"
    broker_port, serve_port = free_port(), free_port()
    env = {**os.environ, "FASTSLOW_DATA_DIR": str(data_dir), "FASTSLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker_port}",
           "FASTSLOW_LOG_LEVEL": "INFO", "OMP_NUM_THREADS": "1", "FASTSLOW_CONSOLIDATION_EPOCHS": "1",
           "FASTSLOW_CHAMPION_POLL_S": "60"}
    log = tmp_path / "log.csv"
    write_log(log)
    fresh_tracking_uri(data_dir)   # the data dir's MLflow db, already migrated (saves seconds per command)
    started: list[Process] = []

    def start(name: str, *args: str) -> Process:
        started.append(Process(name, list(args), env, tmp_path))
        return started[-1]

    def start_broker(name: str) -> Process:
        broker = start(name, "broker", "--partitions", "2", "--port", str(broker_port))
        poll(lambda: "Kafka bootstrap" in broker.output(), START_S, "the broker", broker)
        return broker

    def start_serve(name: str, broker: Process) -> Process:
        serve = start(name, "serve", "--port", str(serve_port))
        poll(lambda: client.get("/readyz").status_code == 200, START_S, "the server to be ready", serve, broker)
        return serve

    client = httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=30.0)
    try:
        broker = start_broker("broker-1")
        consolidate = subprocess.run([str(FASTSLOW), "consolidate", "--events", str(log)], env=env,
                                     capture_output=True, text=True, timeout=CONSOLIDATE_S)
        assert consolidate.returncode == 0, consolidate.stderr[-3000:]
        serve = start_serve("serve-1", broker)

        cold = recommend(client, "ann", 10)
        assert cold["cold_start"] and len(items(cold)) == 10
        posted = client.post("/events", json=[{"user_id": "ann", "item_id": "i2-1"},
                                              {"user_id": "ann", "item_id": "i2-4"}])
        assert posted.status_code == 202 and posted.json()["timestamps"] == ["received", "received"]
        poll(lambda: metric(client, "fastslow_events_applied_total") >= 2, APPLY_S, "the 2 clicks applied", serve)
        for k in (3, 10):
            body = recommend(client, "ann", k)
            assert len(items(body)) == k and not body["cold_start"]
            assert not {"i2-1", "i2-4"} & set(items(body))
        before = items(recommend(client, "ann", 10))
        assert before != items(cold)
        newcomer = recommend(client, "zed", 5)
        assert len(items(newcomer)) == 5 and all(i["reason"].startswith("fallback:") for i in newcomer["items"])

        serve.stop()
        broker.stop()   # memory storage: the topic comes back empty, with a new topic id
        broker = start_broker("broker-2")
        serve = start_serve("serve-2", broker)
        posted = client.post("/events", json=[{"user_id": "ann", "item_id": "i2-6"},
                                              {"user_id": "ann", "item_id": "i1-0"}])
        assert posted.status_code == 202
        poll(lambda: metric(client, "fastslow_events_applied_total") >= 2, APPLY_S,
             "the 2 clicks after the restart applied", serve)
        assert metric(client, "fastslow_offset_resets_total") >= 1
        poll(lambda: metric(client, "fastslow_consumer_lag_total") == 0, APPLY_S, "no lag", serve)
        after = recommend(client, "ann", 10)
        assert len(items(after)) == 10 and not after["cold_start"]
        assert not {"i2-1", "i2-4", "i2-6", "i1-0"} & set(items(after))   # her history survived the restart
        assert items(after) != before
        assert "not resuming at offset" in serve.output()
    finally:
        client.close()
        for process in reversed(started):
            process.stop()
