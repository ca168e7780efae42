"""`fastslow demo` command line (import-light: the demo itself is imported when it runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def demo_command(
    events: Annotated[Optional[Path], typer.Option(help="Event log to stream (default: the shared Online Retail "
                                                        "log when present, else a synthetic stream).")] = None,
    limit: Annotated[int, typer.Option(min=1000, help="Use the first N events of the log.")] = 40_000,
    warmup: Annotated[float, typer.Option(min=0.05, max=0.9, help="Share of the events the first slow model "
                                                                   "trains on (the rest is streamed).")] = 0.3,
    rate: Annotated[float, typer.Option(min=1.0, help="Events per second produced to Kafka.")] = 400.0,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of the first training and of the consolidation.")] = 3,
    forever: Annotated[bool, typer.Option(help="Keep serving after the demo until Ctrl-C.")] = False,
    port: Annotated[int, typer.Option(min=0, max=65535, help="API port on 127.0.0.1 (0: a free one).")] = 0,
) -> None:
    """Run the whole system on this machine: broker, features, first model, worker, API,
    streaming with live quality, a consolidation, a before/after showcase, and a report."""
    from rich.console import Console

    from fastslow.demo import DemoConfig, run_demo
    from fastslow.settings import Settings

    config = DemoConfig(events=events, limit=limit, warmup=warmup, rate=rate, epochs=epochs,
                        forever=forever, port=port)
    console = Console()
    try:
        run_demo(config, Settings(), console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything the demo started has been stopped[/yellow]")
        raise typer.Exit(130) from None
