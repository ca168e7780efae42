"""`fastslow bench faults`: the fault, hostile-input and load scenarios, each with its verdict and counts.

Runs, in order (``--only NAME``, repeatable, for a subset):

- ``broker_restart`` (`infra.scenario_broker`): durable Tansu on SeaweedFS killed and restarted
  under a consuming worker;
- ``worker_crash`` (`infra.scenario_crash`): ``fastslow worker`` SIGKILLed at apply, commit and
  snapshot, its final state compared event by event with the stream;
- ``consolidation_crash`` (`infra.scenario_consolidation`): consolidation killed mid-training and
  mid-registration under a serving API;
- ``deletion`` (`infra.scenario_deletion`): ``DELETE /users/{id}`` and every store inspected;
- ``poison`` (`infra.scenario_poison`): one user flooding through the per-user rate limit;
- ``load`` (`infra.scenario_load`): sustained events and ``/recommend`` for ``--load-seconds``.

Every scenario starts what it needs on loopback (the stream scenarios share one in-memory
broker; ``broker_restart`` and ``load`` start their own) in a temporary directory. A scenario
that raises counts as failed, with the error in its entry. Progress goes to stderr; the last
stdout line is ``{"scenarios": [{"name", "passed", "produced", "applied", "lost",
"duplicated", "seconds", ...}], "passed": n, "total": n, ...}``; the exit code is 1 when any
scenario failed.

Import-light: the scenarios and their libraries load inside the command.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

logger = logging.getLogger(__name__)

SCENARIOS = ("broker_restart", "worker_crash", "consolidation_crash", "deletion", "poison", "load")
DEFAULT_LOAD_SECONDS = 20.0


def bench_faults(
    only: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045 (typer needs Optional)
        "--only", help=f"Run only this scenario; repeat for several ({', '.join(SCENARIOS)}).")] = None,
    load_seconds: Annotated[float, typer.Option(min=1.0, help="How long the load scenario runs.")] =
    DEFAULT_LOAD_SECONDS,
    load_rate: Annotated[float, typer.Option(min=1.0, help="Events per second the load scenario produces "
                                                           "(default: the ingest target).")] = 20_000.0,
    seed: Annotated[int, typer.Option(help="Seed of every scenario's data.")] = 0,
    json_only: Annotated[bool, typer.Option("--json", help="Only the JSON on stdout (and progress on stderr).")] =
    False,
) -> None:
    """Inject faults, hostile input and load; count what was produced, applied, lost and duplicated."""
    from rich.console import Console

    names = list(dict.fromkeys(only or SCENARIOS))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise typer.BadParameter(f"unknown scenario(s) {', '.join(unknown)}; expected {', '.join(SCENARIOS)}",
                                 param_hint="--only")
    _quiet(json_only)
    console = Console(stderr=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fastslow-faults-") as tmp, _Shared(Path(tmp), seed) as shared:
        runs = {"broker_restart": lambda d: _broker_restart(d, seed),
                "worker_crash": lambda d: _worker_crash(shared, d, seed),
                "consolidation_crash": lambda d: _consolidation_crash(d, seed),
                "deletion": lambda d: _deletion(shared, d),
                "poison": lambda d: _poison(shared, d, seed),
                "load": lambda d: _load(d, load_seconds, load_rate, seed, console)}
        results = []
        for name in names:
            results.append(run_scenario(name, runs[name], Path(tmp) / name, console))
    passed = sum(r["passed"] for r in results)
    if not json_only:
        _table(console, results)
    console.print(f"[bold]{passed} of {len(results)} scenarios passed[/] in {time.monotonic() - started:.0f} s")
    typer.echo(json.dumps({"scenarios": results, "passed": passed, "total": len(results),
                           "seconds": round(time.monotonic() - started, 1), "cpus": os.cpu_count(),
                           "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}))
    if passed < len(results):
        raise typer.Exit(1)


def run_scenario(name: str, run: Callable[[Path], object], data_dir: Path, console) -> dict:
    """Run one scenario in ``data_dir``; its `ScenarioResult` as a dict with ``seconds`` (an error fails it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with console.status(f"[bold]{name}[/] running"):
        try:
            result = run(data_dir).as_dict()
        except Exception as exc:  # noqa: BLE001 - a scenario that breaks is a failed scenario, reported
            logger.debug("scenario %s raised", name, exc_info=True)
            result = {"name": name, "passed": False, "produced": 0, "applied": 0, "lost": 0, "duplicated": 0,
                      "error": f"{exc!r}", "traceback": traceback.format_exc(limit=6)[-2000:]}
    result["name"] = name
    result["seconds"] = round(time.monotonic() - started, 1)
    mark = "[green]passed[/]" if result["passed"] else "[red]FAILED[/]"
    console.print(f"{name}: {mark} in {result['seconds']} s (produced {result['produced']}, applied "
                  f"{result['applied']}, lost {result['lost']}, duplicated {result['duplicated']})"
                  + (f" error: {result['error']}" if "error" in result else ""))
    return result


class _Shared:
    """What several scenarios use, made on first use: an in-memory broker and a small slow ranker."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root, self.seed = root, seed
        self._broker = None
        self._ranker = None

    @property
    def bootstrap(self) -> str:
        if self._broker is None:
            from infra.broker import EmbeddedBroker

            self._broker = EmbeddedBroker(port=0, data_dir=self.root / "broker", topics=[])
            self._broker.start()
        return self._broker.bootstrap

    @property
    def ranker(self):
        """A slow ranker over four clusters of items (users stick to one), as the serving tests use."""
        if self._ranker is None:
            import torch

            from infra.scenario_consolidation import cluster_day
            from models.slow import SlowRanker

            events = cluster_day(0, "i", self.seed)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                ranker = SlowRanker(dim=16, epochs=6, batch_size=64, seed=self.seed)
                ranker.fit(ranker.build_examples(events.column("user_id").to_pylist(),
                                                 events.column("item_id").to_pylist()))
            finally:
                torch.set_num_threads(threads)
            self._ranker = ranker
        return self._ranker

    def __enter__(self) -> _Shared:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._broker is not None:
            self._broker.stop()


def _broker_restart(data_dir: Path, seed: int):
    from infra.scenario_broker import broker_restart

    return broker_restart(data_dir, events=5000, restarts=2, seed=seed)


def _worker_crash(shared: _Shared, data_dir: Path, seed: int):
    from infra.scenario_crash import worker_crash

    return worker_crash(shared.bootstrap, data_dir, events=8000, users=300, kills=3, seed=seed)


def _consolidation_crash(data_dir: Path, seed: int):
    from infra.scenario_consolidation import consolidation_crash

    return consolidation_crash(data_dir, seed=seed)


def _deletion(shared: _Shared, data_dir: Path):
    from infra.scenario_deletion import deletion

    return deletion(shared.bootstrap, data_dir, shared.ranker)


def _poison(shared: _Shared, data_dir: Path, seed: int):
    from infra.scenario_poison import poisoning

    return poisoning(shared.bootstrap, data_dir, shared.ranker, seed=seed)


def _load(data_dir: Path, seconds: float, rate: float, seed: int, console):
    from infra.scenario_load import load

    return load(data_dir, seconds=seconds, rate=rate, seed=seed, progress=console.log)


def _quiet(json_only: bool) -> None:
    """The scenarios log every restart and crash at INFO: keep that for a plain run, not for --json."""
    for noisy in ("kafka", "httpx", "faiss.loader", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if json_only:
        logging.getLogger().setLevel(logging.WARNING)


def _table(console, results: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="fault scenarios")
    for column in ("scenario", "passed", "produced", "applied", "lost", "duplicated", "seconds"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for r in results:
        table.add_row(r["name"], "yes" if r["passed"] else "[red]no[/]", *(str(r[k]) for k in
                      ("produced", "applied", "lost", "duplicated", "seconds")))
    console.print(table)
