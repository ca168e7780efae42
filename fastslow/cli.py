"""The `fastslow` command line: one entry point for every job.

Each package owns its commands in its own `cli.py` (kept import-light: heavy libraries are
imported inside the command bodies), and this module only assembles them.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from typing import Annotated, Optional

import typer
from typer._click.exceptions import ClickException  # typer vendors click (as typer._click)

from fastslow.errors import FastslowError

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
    ("permuted-digits", "evaluation.bench_digits:bench_permuted_digits"),
    ("faults", "infra.bench_faults:bench_faults"),
]
# Sub-applications (typer.Typer objects) mounted under a name, e.g. `fastslow features apply`.
GROUPS: list[tuple[str, str]] = [
    ("features", "features.cli:app"),
]


_state = {"debug": False}
"""Whether the command runs at DEBUG level (set by the callback; `run` reads it on an error)."""


def _resolve(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


LogLevelOption = Annotated[Optional[str], typer.Option(  # noqa: UP045 (typer needs Optional)
    "--log-level", help="Logging level (default: FASTSLOW_LOG_LEVEL, INFO); DEBUG also prints the "
                        "traceback of an error that ends a command.")]


@app.callback()
def _configure(log_level: LogLevelOption = None) -> None:
    """Configure logging once, from the settings (or --log-level), for every command."""
    settings = Settings()
    level = (log_level or settings.log_level).upper()
    if level not in logging.getLevelNamesMapping():
        raise typer.BadParameter(f"expected one of DEBUG, INFO, WARNING, ERROR, got {level!r}",
                                 param_hint="--log-level")
    _state["debug"] = level == "DEBUG"
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
    sys.exit(run(sys.argv[1:]))


def run(args: list[str]) -> int:
    """Run the command line on ``args``; the exit status.

    Every command ends the same way on bad input: usage errors (click's own, and fastslow
    errors whose ``exit_code`` is 2, e.g. `fastslow.errors.ConfigError`) exit 2, other
    `fastslow.errors.FastslowError` failures exit 1, each with one ``error: ...`` line on
    stderr; the traceback is printed too at DEBUG level (``--log-level DEBUG``). Errors that
    are not fastslow's are bugs: their traceback is always printed.
    """
    _state["debug"] = False
    try:
        # without standalone mode click raises usage errors and returns typer.Exit's status
        status = app(args=args, prog_name="fastslow", standalone_mode=False)
    except FastslowError as exc:
        if _state["debug"]:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except ClickException as exc:   # usage errors (a missing argument, an unknown option or command)
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.echo(f"error: {exc.format_message()}{where}", err=True)
        return exc.exit_code
    return status if isinstance(status, int) else 0
