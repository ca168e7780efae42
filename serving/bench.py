"""`fastslow bench serve`: ``GET /recommend`` latency and throughput over HTTP on loopback.

For each catalogue size (``--items``, repeatable; default 10k, 100k, 1M) a server process is
spawned: it builds a FastSlow over a synthetic catalogue of that size
(`serving.catalogue.catalogue_model`, which says exactly how), wraps it in a
`serving.runtime.Runtime` without a broker and serves the real `serving.app.create_app`
application with uvicorn on a free loopback port. This process then sends
``/recommend?user_id=…&k=10`` requests for the stream's users from ``C`` threads, one
keep-alive ``httpx.Client`` each, for every concurrency (``--concurrency``, default 1 and 8):
``--warmup`` requests first (not timed), then ``--requests`` timed ones.

The server runs in its own process so its interpreter lock is not shared with the clients';
on a 2-core machine the two still share the cores. Each result has the client-side wall
latency percentiles (p50/p99), the requests per second over the timed run, the server-side
time of the handler (``took_p50_ms``/``took_p99_ms``, the response's ``took_ms``: waiting
for the model lock plus scoring), which separates the model from HTTP, and the server
process's CPU time per
request (``server_cpu_ms_per_request``, warm-up included), which a machine busy with other
work inflates far less than wall-clock figures. The last stdout line is one JSON object:
``{"results": [{"items", "concurrency", "p50_ms", "p99_ms", "rps", ...}], "catalogue": ..., ...}``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Annotated, Any, Optional

import typer

logger = logging.getLogger(__name__)

DEFAULT_ITEMS = (10_000, 100_000, 1_000_000)
DEFAULT_CONCURRENCY = (1, 8)
TARGET = {"items": 100_000, "concurrency": 1, "p99_ms": 10.0}
BUILD_TIMEOUT_S = 900.0


def bench_serve(
    items: Annotated[Optional[list[int]], typer.Option(  # noqa: UP045 (typer needs Optional)
        "--items", min=2_000, help="Catalogue size; repeat for several (default 10000, 100000, 1000000).")] = None,
    concurrency: Annotated[Optional[list[int]], typer.Option(  # noqa: UP045
        "--concurrency", min=1, max=64, help="Client threads; repeat for several (default 1 and 8).")] = None,
    requests: Annotated[int, typer.Option(min=10, help="Timed requests per (items, concurrency).")] = 2000,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed requests before each timed run.")] = 200,
    k: Annotated[int, typer.Option(min=1, max=100, help="Items per recommendation.")] = 10,
    events: Annotated[int, typer.Option(min=1000, help="Events of the synthetic stream the catalogue's slow "
                                                       "model and users come from.")] = 20_000,
    json_only: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
) -> None:
    """Time GET /recommend over HTTP at several catalogue sizes and concurrencies."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    sizes, levels = list(items or DEFAULT_ITEMS), list(concurrency or DEFAULT_CONCURRENCY)
    results, catalogues = [], []
    for n_items in sizes:
        with CatalogueServer(n_items, events) as server:
            catalogues.append(server.info)
            for c in levels:
                cpu_before = server.cpu_seconds()
                result = {"items": n_items, "concurrency": c,
                          **measure(server.url, server.info["users"], c, requests, warmup, k)}
                cpu = server.cpu_seconds() - cpu_before
                result["server_cpu_ms_per_request"] = round(cpu * 1000 / (requests + warmup), 3)
                results.append(result)
                if not json_only:
                    typer.echo(f"{n_items:>9} items, concurrency {c}: p50 {result['p50_ms']} ms, p99 "
                               f"{result['p99_ms']} ms, {result['rps']} req/s "
                               f"(server took p99 {result['took_p99_ms']} ms)", err=True)
    target = next((r for r in results if r["items"] == TARGET["items"] and r["concurrency"] == TARGET["concurrency"]),
                  None)
    summary = {"results": results,
               "target": {**TARGET, "met": None if target is None else target["p99_ms"] <= TARGET["p99_ms"]},
               "catalogue": [{k: v for k, v in c.items() if k != "users"} for c in catalogues],
               "method": {"requests": requests, "warmup": warmup, "k": k, "exclude_seen": True,
                          "server": "uvicorn (httptools), one process, spawned; clients: httpx threads",
                          "cpus": os.cpu_count(), "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}}
    typer.echo(json.dumps(summary))


def measure(url: str, users: list[str], concurrency: int, requests: int, warmup: int, k: int) -> dict[str, Any]:
    """Client latency percentiles, requests/s and server-side handler time for one concurrency level."""
    import httpx
    import numpy as np

    per_thread = [requests // concurrency + (t < requests % concurrency) for t in range(concurrency)]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    took_ms: list[list[float]] = [[] for _ in range(concurrency)]
    failures: list[str] = []
    barrier = threading.Barrier(concurrency + 1)

    def client(t: int) -> None:
        with httpx.Client(base_url=url, timeout=30.0) as http:
            def get(n: int) -> httpx.Response:
                user = users[(n * concurrency + t) % len(users)]
                return http.get("/recommend", params={"user_id": user, "k": k})
            for n in range(warmup // concurrency):
                get(n)
            barrier.wait()
            for n in range(per_thread[t]):
                started = time.perf_counter()
                response = get(n)
                latencies[t].append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                else:
                    took_ms[t].append(response.json()["took_ms"])

    threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"{len(failures)} of {requests} requests failed; first: {failures[0]}")
    wall, took = np.concatenate(latencies), np.concatenate(took_ms)
    pct = lambda a, q: round(float(np.percentile(a, q)), 3)  # noqa: E731
    return {"p50_ms": pct(wall, 50), "p99_ms": pct(wall, 99), "rps": round(len(wall) / elapsed, 1),
            "took_p50_ms": pct(took, 50), "took_p99_ms": pct(took, 99), "requests": len(wall)}


class CatalogueServer:
    """A spawned process serving the API over a synthetic catalogue of ``n_items`` (a context manager)."""

    def __init__(self, n_items: int, events: int = 20_000) -> None:
        self.n_items, self.events = n_items, events
        self.info: dict[str, Any] = {}
        self.url = ""
        self._process = self._stop = None

    def __enter__(self) -> CatalogueServer:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        ready, self._stop = context.Queue(), context.Event()
        self._process = context.Process(target=_serve_catalogue, args=(self.n_items, self.events, ready, self._stop),
                                        name=f"bench-serve-{self.n_items}", daemon=True)
        self._process.start()
        try:
            self._wait_ready(ready)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, ready) -> None:
        import queue

        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while True:
            try:
                message = ready.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._process.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the bench server for {self.n_items} items exited or took over "
                                       f"{BUILD_TIMEOUT_S} s to start (exit code {self._process.exitcode})") from None
        if "error" in message:
            raise RuntimeError(f"the bench server for {self.n_items} items failed: {message['error']}")
        self.url, self.info = message["url"], message["info"]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process used so far (Linux ``/proc``)."""
        fields = open(f"/proc/{self._process.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc_info: object) -> None:
        if self._process is None:
            return
        self._stop.set()
        self._process.join(30.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._process = None


def _serve_catalogue(n_items: int, events: int, ready, stop) -> None:
    """In the spawned process: build the model, serve it, report the URL, wait for ``stop``."""
    import tempfile

    import torch

    from models.memory import set_faiss_threads
    from serving.app import create_app
    from serving.catalogue import catalogue_model
    from serving.runtime import Runtime
    from serving.server import BackgroundServer

    logging.basicConfig(level=logging.WARNING)
    set_faiss_threads(1)
    torch.set_num_threads(1)
    try:
        model, info = catalogue_model(n_items, events=events)
        with tempfile.TemporaryDirectory(prefix="fastslow-bench-serve-") as data_dir, \
                Runtime(model, data_dir=data_dir) as runtime, BackgroundServer(create_app(runtime)) as server:
            ready.put({"url": server.url, "info": info})
            stop.wait()
    except Exception as exc:  # noqa: BLE001 -- reported to the parent, which raises it
        ready.put({"error": repr(exc)})
        raise
