"""The `fastslow` command line: one entry point for every job.

Each package owns its commands in its own `cli.py` (kept import-light: heavy libraries are
imported inside the command bodies), and this module only assembles them.
"""

from __future__ import annotations

import importlib
import logging
import os

import typer

from fastslow.settings import Settings

app = typer.Typer(
    name="fastslow",
    help="Streaming online-learning recommender: fast per-user memory + slow consolidated ranker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks; each prints one JSON object on its last stdout line.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

# (command name, "module:function") — the command's own module stays import-light.
COMMANDS: list[tuple[str, str]] = [
    ("demo", "fastslow.demo_cli:demo_command"),
    ("synth", "evaluation.synth:synth_command"),
    ("broker", "infra.broker:broker_command"),
    ("replay", "evaluation.cli:replay_command"),
    ("produce", "streaming.cli:produce_command"),
    ("worker", "streaming.cli:worker_command"),
    ("consolidate", "consolidation.cli:consolidate_command"),
    ("promote", "consolidation.cli:promote_command"),
    ("models", "consolidation.cli:models_command"),
    ("serve", "serving.cli:serve_command"),
]
BENCHES: list[tuple[str, str]] = [
    ("features", "features.bench:bench_features"),
    ("freshness", "streaming.bench:bench_freshness"),
    ("ingest", "streaming.bench:bench_ingest"),
    ("serve", "serving.bench:bench_serve"),
    ("forgetting", "consolidation.bench:bench_forgetting"),
    ("faults", "infra.bench_faults:bench_faults"),
]
# Sub-applications (typer.Typer objects) mounted under a name, e.g. `fastslow features apply`.
GROUPS: list[tuple[str, str]] = [
    ("features", "features.cli:app"),
]


def _resolve(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@app.callback()
def _configure() -> None:
    """Configure logging once, from the settings, for every command."""
    settings = Settings()
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        # third-party chatter (every Kafka connection, FAISS's CPU-feature probing) is debug detail
        for noisy in ("kafka", "faiss.loader", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    # MLflow draws a progress bar per artifact it moves, many per model: noise in a terminal
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


for _name, _target in COMMANDS:
    app.command(_name)(_resolve(_target))
for _name, _target in BENCHES:
    bench_app.command(_name)(_resolve(_target))
for _name, _target in GROUPS:
    app.add_typer(_resolve(_target), name=_name)


def main() -> None:
    """Console-script entry point.

    OpenMP defaults to one thread per calling thread unless OMP_NUM_THREADS says otherwise:
    FAISS searches one query at a time, where threads only wait on each other (a 100k flat
    search: ~1 ms with 1 thread, ~20 ms with 2 on a busy 2-core machine), and the setting must
    be in the environment before FAISS or torch start their OpenMP runtimes, because
    `faiss.omp_set_num_threads` only changes the thread that calls it.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    app()
