"""`fastslow demo`: the whole system on one machine, end to end, in a few minutes.

1. start the embedded Kafka broker and apply the Feast feature repository;
2. train the first slow model on the first part of a log (the shared Online Retail log when
   present, else a synthetic stream) and register it in MLflow as the champion;
3. start the worker and the HTTP API in this process, warm the fast path on the same prefix;
4. stream the rest of the log through Kafka at a steady rate, asking `/recommend` for each
   probed user *before* producing their event (test-then-learn; events sharing a timestamp are
   one step, as in `fastslow replay`: all of a step's probes come first), while a live view shows
   events/s, consumer lag, freshness, rolling HR@10 and the champion version;
5. halfway, consolidate (replay + EWC + distillation of the fast path) and promote or refuse,
   with the reason; the running API hot-swaps a promoted model;
6. show one user's recommendations before and after a burst of that user's events;
7. write `report.json` and `quality.png`, stop everything it started, exit 0.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.live import Live

from fastslow.demo_view import DemoStats, percentile, render, write_report
from fastslow.settings import Settings

logger = logging.getLogger(__name__)

#: Where the shared Online Retail log lives relative to a checkout (../shared next to it).
SHARED_LOG = Path(__file__).resolve().parents[2] / "shared" / "data" / "online-retail-ii" / "events.csv.gz"


@dataclass(frozen=True)
class DemoConfig:
    """What one demo run does (the `fastslow demo` options)."""

    events: Path | None = None
    limit: int = 40_000
    warmup: float = 0.3
    rate: float = 400.0
    epochs: int = 3
    probe_every: int = 10
    burst: int = 5
    forever: bool = False
    port: int = 0


def load_log(config: DemoConfig, demo_dir: Path, console: Console) -> tuple[pa.Table, str]:
    """The first `limit` events of the log (time-sorted), and where they came from."""
    from streaming.readers import read_events

    path = config.events or (SHARED_LOG if SHARED_LOG.is_file() else None)
    if path is None:
        from evaluation.synth import SynthConfig, synth

        path = demo_dir / "synthetic.parquet"
        synth(path, SynthConfig.preset("small", n_events=config.limit))
        source = f"synthetic stream ({path}; the shared Online Retail log was not found at {SHARED_LOG})"
    else:
        source = str(path)
    table = read_events(path).slice(0, config.limit)
    order = pc.sort_indices(table, [("timestamp", "ascending")])   # stable: ties keep log order
    console.print(f"[bold]log[/bold]: {table.num_rows:,} events from {source}")
    return table.take(order), source


class Demo:
    """One demo run: everything it starts is stopped by `close` (also on Ctrl-C)."""

    def __init__(self, config: DemoConfig, settings: Settings, console: Console) -> None:
        self.config, self.console = config, console
        self.dir = settings.data_dir / "demo"
        self.settings = settings.model_copy(update={"data_dir": self.dir, "champion_poll_s": 1.0})
        self.stats = DemoStats()
        self.stack = contextlib.ExitStack()
        self.report: dict = {"consolidation": None}
        self._stop = threading.Event()
        self._consolidation_error: BaseException | None = None

    # -- set-up ----------------------------------------------------------------------------
    def start(self, table: pa.Table) -> None:
        from consolidation.job import bootstrap_champion
        from consolidation.registry import ModelRegistry, default_tracking_uri
        from consolidation.train import ConsolidationConfig
        from features.repository import apply_repo
        from infra.broker import EmbeddedBroker
        from models.slow import SlowRanker
        from serving.app import create_app
        from serving.runtime import Runtime
        from serving.server import BackgroundServer

        n_warm = int(table.num_rows * self.config.warmup)
        self.warm, self.stream = table.slice(0, n_warm), table.slice(n_warm)
        self._phase("starting the embedded Kafka broker")
        self.broker = self.stack.enter_context(EmbeddedBroker(port=0, data_dir=self.dir / "broker"))
        self._phase("applying the Feast feature repository")
        apply_repo(self.dir / "feast")
        from features.context import FeatureContext
        from features.store import FeatureStoreClient

        self.features = FeatureContext(FeatureStoreClient(self.dir / "feast"))
        self._phase(f"pushing the {n_warm:,} warm-up events to the feature store")
        for start in range(0, n_warm, 500):   # micro-batches like the worker's: each writes its keys'
            self.features.client.push_events(self.warm.slice(start, 500))   # newest rows
        self._phase(f"training the first slow model on {n_warm:,} events (point-in-time Feast context)")
        self.registry = ModelRegistry(default_tracking_uri(self.dir), self.settings.model_name)
        first = bootstrap_champion(self.registry, self.warm,
                                   SlowRanker(epochs=self.config.epochs, context=self.features.spec.as_dict()),
                                   ConsolidationConfig(epochs=self.config.epochs), show_progress=False,
                                   features=self.features)
        self.stats.note(f"champion v{first.version} registered: {first.reason}")
        self.runtime = Runtime.from_settings(self.settings, bootstrap=self.broker.bootstrap)
        self._phase("warming the fast path on the same prefix")
        from evaluation.stream import EventStream

        self.runtime.model.learn_warmup(*EventStream.from_table(self.warm).columns())
        self.stack.callback(self.runtime.stop)
        self.runtime.start()
        self.server = self.stack.enter_context(
            BackgroundServer(create_app(self.runtime), port=self.config.port))
        self.http = self.stack.enter_context(httpx.Client(base_url=self.server.url, timeout=10.0))
        self.console.print(f"[bold]API[/bold] at {self.server.url}  (try {self.server.url}/recommend?user_id=...)")
        self.stats.champion = self.runtime.champion_version

    def _phase(self, text: str) -> None:
        self.stats.phase = text
        self.console.print(f"[cyan]>[/cyan] {text}")

    # -- streaming with probes -------------------------------------------------------------
    def _produce(self) -> None:
        from streaming.kafka import TOPIC_INTERACTIONS, make_producer
        from streaming.partitioning import user_key
        from evaluation.protocol import steps
        from streaming.producer import TokenBucket, event_values

        producer = make_producer(self.broker.bootstrap)
        try:
            bucket = TokenBucket(self.config.rate)
            users = self.stream.column("user_id").to_pylist()
            items = self.stream.column("item_id").to_pylist()
            starts = steps(pc.cast(self.stream.column("timestamp"), pa.int64()).to_numpy()).tolist()
            previous = _previous_event(users, starts)
            step = 0
            for n, value in enumerate(event_values(self.stream)):
                if self._stop.is_set():
                    break
                if n == starts[step]:   # a new step: its probes before any of its events
                    step += 1
                    for m in range(n, starts[step]):
                        if m % self.config.probe_every == 0:
                            # a person's next click comes seconds after the last one, not the 2 ms the
                            # compressed log leaves: let the worker apply the user's previous event first
                            self._wait_applied(previous[m] + 1, timeout=0.5)
                            self.stats.probe(items[m] in self._top10(users[m]))
                bucket.take(1)
                producer.send(TOPIC_INTERACTIONS, key=user_key(users[n]), value=value)
                self.stats.produced = n + 1
            producer.flush()
        finally:
            producer.close()

    def _wait_applied(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        worker = self.runtime.worker
        while worker is not None and worker.stats.events_applied < count and time.monotonic() < deadline:
            time.sleep(0.001)

    def _top10(self, user_id: str) -> set[str]:
        reply = self.http.get("/recommend", params={"user_id": user_id, "k": 10})
        reply.raise_for_status()
        return {item["item_id"] for item in reply.json()["items"]}

    def _consolidate_in_thread(self) -> None:
        """Run `_consolidate`, keeping its error for the main thread to raise (a thread's error
        would otherwise only be printed, and the demo would end as if nothing had failed)."""
        try:
            self._consolidate()
        except BaseException as error:   # re-raised by stream_log
            logger.exception("the demo's consolidation failed")
            self._consolidation_error = error

    def _consolidate(self) -> None:
        """Consolidate the archive the worker wrote (plus the warm-up), distilling the fast path."""
        from consolidation.distill import distiller
        from consolidation.job import consolidate
        from consolidation.sampling import sample_replay
        from consolidation.train import ConsolidationConfig
        from streaming.archive import archive_dir, iter_archive

        self.stats.note("consolidating: replay sample + EWC + distillation of the fast path")
        self._wait_archived(self.runtime.worker.stats.events_applied, timeout=15.0)
        until = self.registry.version_info(self.registry.champion_version()).tags.get("until_ms")
        tables = [self.warm, *iter_archive(archive_dir(self.dir, "interactions"))]
        sample = sample_replay(tables, self.settings.replay_sample_size, since_ms=int(until) if until else None,
                               recent_fraction=self.settings.replay_recent_fraction, seed=0)
        model = self.runtime.model
        since = float(pc.min(self.stream.column("timestamp")).value) / 1000.0
        result = consolidate(self.registry, sample, ConsolidationConfig(epochs=self.config.epochs),
                             distill=distiller(model, since, lock=self.runtime.lock), show_progress=False,
                             features=self.features)
        verdict = "promoted to champion" if result.promoted else "refused (champion kept)"
        self.stats.note(f"consolidation v{result.version} {verdict}: {result.reason}")
        self.report["consolidation"] = result.summary()

    def _wait_archived(self, count: int, timeout: float) -> None:
        """Wait until the worker's archive (written every few seconds) holds `count` events."""
        from streaming.archive import archive_dir, archived_count

        root, deadline = archive_dir(self.dir, "interactions"), time.monotonic() + timeout
        while time.monotonic() < deadline:
            if archived_count(root) >= count:
                return
            time.sleep(0.25)

    def stream_log(self) -> None:
        """Produce the rest of the log with probes; consolidate halfway; show it all live."""
        self.stats.to_produce = self.stream.num_rows
        self._phase("streaming the log through Kafka")
        producer = threading.Thread(target=self._produce, name="demo-producer", daemon=True)
        consolidation: threading.Thread | None = None
        started, last_applied, last_t, steady = time.monotonic(), 0, time.monotonic(), False
        producer.start()
        with Live(render(self.stats, None, 0.0), console=self.console, refresh_per_second=4) as live:
            while producer.is_alive() or (consolidation and consolidation.is_alive()) or not self._caught_up():
                time.sleep(0.25)
                worker = self.runtime.worker.stats if self.runtime.worker else None
                now = time.monotonic()
                applied = worker.events_applied if worker else 0
                rate = (applied - last_applied) / max(now - last_t, 1e-6)
                last_applied, last_t = applied, now
                self.stats.champion = self.runtime.champion_version
                steady = steady or (worker is not None and worker.events_applied > 0 and worker.total_lag == 0)
                if steady and worker.last_apply_latency_ms is not None and rate > 0:
                    self.stats.freshness_ms.append(worker.last_apply_latency_ms)   # after start-up
                self.stats.timeline.append((now - started, self.stats.rolling_hr, rate, self.stats.champion or 0))
                if consolidation is None and self.stats.produced >= self.stats.to_produce // 2:
                    consolidation = threading.Thread(target=self._consolidate_in_thread, name="demo-consolidation",
                                                     daemon=True)
                    consolidation.start()
                live.update(render(self.stats, worker, rate))
        if self._consolidation_error is not None:
            raise RuntimeError(f"the demo's consolidation failed: {self._consolidation_error!r}; "
                               "the traceback is in the log above") from self._consolidation_error
        self._wait_for_champion_swap()
        self.report["stream_seconds"] = round(time.monotonic() - started, 1)

    def _caught_up(self) -> bool:
        worker = self.runtime.worker
        return worker is not None and worker.stats.events_applied >= self.stats.produced

    def _wait_for_champion_swap(self, timeout: float = 15.0) -> None:
        latest = self.registry.champion_version()
        deadline = time.monotonic() + timeout
        while self.runtime.champion_version != latest and time.monotonic() < deadline:
            time.sleep(0.2)
        self.stats.champion = self.runtime.champion_version

    # -- one user, before and after a burst --------------------------------------------------
    def showcase(self) -> None:
        """Show a user's list, produce a burst of events of another taste, show the new list."""
        from streaming.kafka import TOPIC_INTERACTIONS, make_producer
        from streaming.partitioning import user_key
        from streaming.producer import event_values

        self._phase("one user, before and after a burst of events")
        users = self.stream.column("user_id").to_pylist()
        user = max(set(users), key=users.count)
        with self.runtime.lock:
            model = self.runtime.model
            mine = set(model.history(user))
            donor = next(u for u in sorted(model.users(), key=lambda u: -len(model.history(u)))
                         if u != user and len(set(model.history(u)) - mine) >= self.config.burst)
            burst = [i for i in reversed(model.history(donor)) if i not in mine][: self.config.burst]
        before = self.http.get("/recommend", params={"user_id": user, "k": 10}).json()
        start_ts = int(pc.max(self.stream.column("timestamp")).value)
        table = pa.table({"event_id": [f"demo-burst-{n}" for n in range(len(burst))], "user_id": [user] * len(burst),
                          "item_id": burst,
                          "timestamp": pa.array([start_ts + 1000 * (n + 1) for n in range(len(burst))],
                                                pa.timestamp("ms", "UTC")),
                          "event_type": ["click"] * len(burst), "value": [1.0] * len(burst),
                          "context": pa.nulls(len(burst), pa.string())})
        producer = make_producer(self.broker.bootstrap)
        sent = time.perf_counter()
        try:
            for value in event_values(table):
                producer.send(TOPIC_INTERACTIONS, key=user_key(user), value=value)
            producer.flush()
        finally:
            producer.close()
        before_ids = [r["item_id"] for r in before["items"]]
        after, changed_ms = before, None
        while time.perf_counter() - sent < 10.0:
            after = self.http.get("/recommend", params={"user_id": user, "k": 10}).json()
            if [r["item_id"] for r in after["items"]] != before_ids:
                changed_ms = (time.perf_counter() - sent) * 1000
                break
            time.sleep(0.002)
        self.report["showcase"] = {"user_id": user, "burst_items": burst, "before": before["items"],
                                   "after": after["items"], "list_changed_after_ms": changed_ms}
        self._print_showcase(user, burst, before["items"], after["items"], changed_ms)

    def _print_showcase(self, user: str, burst: list[str], before: list, after: list, changed_ms) -> None:
        from rich.table import Table

        table = Table(title=f"user {user}: top-10 before and after clicking {', '.join(burst)}")
        table.add_column("before")
        table.add_column("after")
        table.add_column("why (after)")
        for n in range(max(len(before), len(after))):
            b = before[n]["item_id"] if n < len(before) else ""
            a = after[n] if n < len(after) else {"item_id": "", "reason": ""}
            table.add_row(b, a["item_id"], a["reason"])
        self.console.print(table)
        when = f"{changed_ms:.1f} ms" if changed_ms is not None else "not within 10 s"
        self.console.print(f"the list changed {when} after the burst was produced")

    # -- the end -----------------------------------------------------------------------------
    def finish(self, source: str) -> tuple[Path, Path]:
        worker = self.runtime.worker.stats if self.runtime.worker else None
        stats = self.stats
        self.report.update({
            "log": source, "events": {"warmup": self.warm.num_rows, "streamed": stats.produced,
                                      "applied": worker.events_applied if worker else None,
                                      "dead_letters": worker.dlq if worker else None},
            "rate_target_per_s": self.config.rate,
            "freshness_ms": {"p50": percentile(stats.freshness_ms, 50), "p99": percentile(stats.freshness_ms, 99),
                             "n": len(stats.freshness_ms)},
            "hr_at_10": {"probes": stats.probes, "overall": stats.probe_hits / max(stats.probes, 1),
                         "rolling_last_500": stats.rolling_hr},
            "champion_version": self.runtime.champion_version,
            "api": self.server.url,
        })
        return write_report(self.report, stats, self.dir)

    def close(self) -> None:
        self._stop.set()
        self.stack.close()


def _previous_event(users: list[str], starts: list[int] | None = None) -> np.ndarray:
    """Per event, the position of the same user's last event in an earlier step (-1 if none).

    ``starts``: where each step starts, then the length (`evaluation.protocol.steps`); default
    one event per step.

    >>> _previous_event(["a", "b", "a", "a"]).tolist()
    [-1, -1, 0, 2]
    >>> _previous_event(["a", "b", "a", "a"], [0, 2, 4]).tolist()   # events 2 and 3 are one step
    [-1, -1, 0, 0]
    """
    starts = list(range(len(users) + 1)) if starts is None else starts
    last: dict[str, int] = {}
    out = np.full(len(users), -1, dtype=np.int64)
    for start, stop in zip(starts[:-1], starts[1:]):
        for n in range(start, stop):
            out[n] = last.get(users[n], -1)
        for n in range(start, stop):
            last[users[n]] = n
    return out


def run_demo(config: DemoConfig, settings: Settings, console: Console) -> dict:
    """Run the demo (see the module docstring) and return its report."""
    demo_dir = settings.data_dir / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)
    table, source = load_log(config, demo_dir, console)
    demo = Demo(config, settings, console)
    try:
        demo.start(table)
        demo.stream_log()
        demo.showcase()
        json_path, png_path = demo.finish(source)
        console.print(f"[bold green]report[/bold green]: {json_path}  [bold green]plot[/bold green]: {png_path}")
        if config.forever:
            console.print(f"serving at {demo.server.url} until Ctrl-C")
            threading.Event().wait()
        return demo.report
    finally:
        demo.close()
