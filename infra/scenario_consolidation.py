"""Scenario: consolidation is killed mid-training and mid-registration while the API serves.

`consolidation_crash` trains a first champion, starts a serving `serving.runtime.Runtime`
(with its champion watcher) behind the HTTP API, and keeps asking ``/recommend`` on a
thread. Meanwhile ``fastslow``'s consolidation job runs in child processes that SIGKILL
themselves (`infra.faults.kill_self`): once after the first epoch, once right after the new
version is registered with the ``challenger`` alias (before the champion alias could move).
After each crash the champion must be unchanged; the next, undisturbed run must succeed and
promote, and the running server must pick that champion up without a restart. Every request
along the way must be answered.

The world: users stick to one of four item clusters; the champion learns an old day, and on
the recent day every cluster gets new items, so a consolidation over both days learns
something the champion cannot know and passes the gate.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infra.faults import ScenarioResult

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
T0_MS = 1_714_521_600_000  # 2024-05-01T00:00Z
CRASHES = ("train", "register")
_CONFIG = {"epochs": 3, "probe_fraction": 0.2, "ewc_lambda": 1000.0, "tolerance": 0.02}


def cluster_day(day: int, item_prefix: str, seed: int, users: int = 40, per_user: int = 12) -> pa.Table:
    """One day of events: user u takes items of cluster u % 4 (``{prefix}{cluster}-{k}``, 8 per cluster).

    >>> cluster_day(0, "i", seed=0).num_rows
    480
    """
    rng = np.random.default_rng(seed)
    owners = rng.permutation(np.repeat(np.arange(users), per_user))
    n = len(owners)
    times = T0_MS + day * DAY_MS + np.linspace(0, DAY_MS, n, endpoint=False).astype(np.int64)
    return pa.table({
        "event_id": [f"{item_prefix}{day}-{k}" for k in range(n)], "user_id": [f"u{u}" for u in owners],
        "item_id": [f"{item_prefix}{u % 4}-{p}" for u, p in zip(owners, rng.integers(0, 8, n))],
        "timestamp": pa.array(times).cast(pa.timestamp("ms", "UTC")),
        "event_type": ["click"] * n, "value": [1.0] * n,
    })


def consolidation_crash(data_dir: Path, *, seed: int = 0, timeout: float = 180.0) -> ScenarioResult:
    """Kill consolidation mid-training and mid-registration under a serving API (module docstring)."""
    from consolidation.job import bootstrap_champion
    from consolidation.registry import ModelRegistry, default_tracking_uri
    from consolidation.train import ConsolidationConfig
    from models.fastslow import FastSlow
    from models.slow import SlowRanker
    from serving.app import create_app
    from serving.runtime import Runtime
    from serving.server import BackgroundServer

    data_dir = Path(data_dir)
    old, new = cluster_day(0, "i", seed), cluster_day(1, "n", seed + 1)
    pq.write_table(pa.concat_tables([old, new]), data_dir / "events.parquet")
    registry = ModelRegistry(default_tracking_uri(data_dir))
    first = bootstrap_champion(registry, old, SlowRanker(dim=16, epochs=20, batch_size=64, seed=seed),
                               ConsolidationConfig(**_CONFIG), show_progress=False)
    model = FastSlow(ranker=registry.load(first.version))
    model.learn_warmup(*(old.column(c).to_pylist() for c in ("user_id", "item_id")),
                       (old.column("timestamp").cast(pa.int64()).to_numpy() / 1000).tolist(),
                       old.column("event_type").to_pylist(), old.column("value").to_pylist())
    runtime = Runtime(model, data_dir=data_dir / "serve", registry=registry, champion_version=first.version,
                      poll_interval_s=0.2)
    crashes, champions = [], []
    with runtime, BackgroundServer(create_app(runtime)) as server:
        prober = _Prober(server.url, [f"u{u}" for u in range(40)])
        try:
            for where in CRASHES:
                crashes.append(_crash(data_dir, where, timeout))
                champions.append(registry.champion_version())
            started = time.monotonic()
            result = _consolidate(registry, data_dir)
            if result.promoted:
                _wait(lambda: prober.versions and prober.versions[-1] == result.version, timeout)
            swap_s = round(time.monotonic() - started, 2)
        finally:
            prober.stop()
    details = {"crashes": crashes, "champion_before": first.version, "champion_after_each_crash": champions,
               "next_run": {"version": result.version, "promoted": result.promoted, "reason": result.reason},
               "served_versions": sorted(set(prober.versions)), "requests_failed": prober.failed,
               "seconds_to_serve_next_champion": swap_s}
    passed = (all(c["killed"] for c in crashes) and champions == [first.version] * len(CRASHES)
              and result.promoted and prober.failed == 0 and prober.versions[-1] == result.version)
    return ScenarioResult("consolidation_crash", passed, produced=prober.sent, applied=prober.sent - prober.failed,
                          lost=prober.failed, details=details)


def _crash(data_dir: Path, where: str, timeout: float) -> dict:
    """Run the job in a child process that kills itself at ``where``; what it left behind."""
    code = f"from infra.scenario_consolidation import run_and_die; run_and_die({str(data_dir)!r}, {where!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    killed = done.returncode == -9 and "fault injected" in done.stderr
    if not killed:
        logger.warning("consolidation meant to die at %s exited %s:\n%s", where, done.returncode, done.stderr[-2000:])
    return {"at": where, "killed": killed, "exit": done.returncode}


def run_and_die(data_dir: str, where: str) -> None:
    """Child process: consolidate the scenario's events, SIGKILLing itself at ``where``."""
    from consolidation.job import consolidate
    from consolidation.registry import CHALLENGER, ModelRegistry, default_tracking_uri
    from infra.faults import kill_self

    class DyingRegistry(ModelRegistry):
        def set_alias(self, alias: str, version: int) -> None:
            super().set_alias(alias, version)
            if alias == CHALLENGER and where == "register":
                kill_self(f"registration: v{version} is challenger, the champion alias not moved yet")

    def on_epoch(epoch: int, loss: float) -> None:
        if where == "train":
            kill_self(f"training, after epoch {epoch}")

    registry = DyingRegistry(default_tracking_uri(Path(data_dir)))
    consolidate(registry, _sample(registry, Path(data_dir)), _config(), on_epoch=on_epoch, show_progress=False)
    raise SystemExit(f"consolidation was not killed at {where}")


def _consolidate(registry, data_dir: Path):
    from consolidation.job import consolidate

    return consolidate(registry, _sample(registry, data_dir), _config(), show_progress=False)


def _sample(registry, data_dir: Path):
    from consolidation.sampling import sample_replay

    since = int(registry.version_info(registry.champion_version()).tags["until_ms"])
    return sample_replay([pq.read_table(data_dir / "events.parquet")], 2000, since_ms=since, recent_fraction=0.5)


def _config():
    from consolidation.train import ConsolidationConfig

    return ConsolidationConfig(**_CONFIG)


def _wait(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


class _Prober(threading.Thread):
    """Asks ``/recommend`` for one user after another every ``interval_s``; counts failures."""

    def __init__(self, url: str, users: list[str], interval_s: float = 0.05) -> None:
        super().__init__(name="recommend-prober", daemon=True)
        self.url, self.users, self.interval_s = url, users, interval_s
        self.sent = self.failed = 0
        self.versions: list[int] = []
        self._halt = threading.Event()
        self.start()

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self._halt.is_set():
                user = self.users[self.sent % len(self.users)]
                self.sent += 1
                try:
                    response = client.get("/recommend", params={"user_id": user, "k": 5})
                    body = response.json()
                    if response.status_code != 200 or len(body["items"]) != 5:
                        raise ValueError(f"{response.status_code}: {json.dumps(body)[:200]}")
                    self.versions.append(body["model_version"])
                except (httpx.HTTPError, ValueError) as exc:
                    self.failed += 1
                    logger.warning("recommend for %s failed: %s", user, exc)
                self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
