"""`fastslow serve`: the HTTP API with an in-process worker, in one process. Import-light.

The server needs a Kafka broker (``--bootstrap-servers`` or ``FASTSLOW_KAFKA_BOOTSTRAP``;
``fastslow broker`` runs one) and a champion slow model in the registry (``fastslow
consolidate --events LOG`` makes the first). Without ``FASTSLOW_API_KEY`` it binds loopback
addresses only and says so; with it, ``POST`` and ``DELETE`` require the ``X-API-Key`` header.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
from typing import Annotated, Optional

import typer

from streaming.cli import BootstrapOption

logger = logging.getLogger(__name__)


def check_bind(host: str, api_key: str | None) -> str:
    """The start-up notice for binding ``host``; `ConfigError` if it is not loopback and no key is set.

    >>> check_bind("127.0.0.1", None)
    'no API key set (FASTSLOW_API_KEY): binding 127.0.0.1 only (loopback); POST /events and ...'
    >>> check_bind("0.0.0.0", "s3cret")
    'API key set: POST /events and DELETE /users need the X-API-Key header'
    >>> check_bind("0.0.0.0", None)
    Traceback (most recent call last):
    ...
    fastslow.errors.ConfigError: setting serve_host='0.0.0.0' is invalid: expected a loopback address ...
    """
    from fastslow.errors import ConfigError

    if api_key:
        return "API key set: POST /events and DELETE /users need the X-API-Key header"
    if not _is_loopback(host):
        raise ConfigError("serve_host", host, "a loopback address (127.0.0.1, ::1, localhost) while no API key "
                                              "is set: set FASTSLOW_API_KEY to serve on other addresses")
    return (f"no API key set (FASTSLOW_API_KEY): binding {host} only (loopback); POST /events and "
            "DELETE /users are open to local clients")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_command(
    host: Annotated[Optional[str], typer.Option(  # noqa: UP045 (typer needs Optional)
        help="Address to bind (default: FASTSLOW_SERVE_HOST, 127.0.0.1). Non-loopback needs FASTSLOW_API_KEY.")] = None,
    port: Annotated[Optional[int], typer.Option(  # noqa: UP045
        min=0, max=65535, help="Port (default: FASTSLOW_SERVE_PORT, 8000).")] = None,
    bootstrap_servers: BootstrapOption = None,
    no_worker: Annotated[bool, typer.Option(
        "--no-worker", help="Only score: do not consume events in this process.")] = False,
    worker_id: Annotated[str, typer.Option(
        help="Stable id of the in-process worker (its snapshot is found by it).")] = "serve-0",
) -> None:
    """Serve /recommend, /events, DELETE /users/{id}, /healthz, /readyz and /metrics; Ctrl-C stops.

    Runs a worker in the same process (unless --no-worker), so an event posted or produced
    changes that user's next recommendations; hot-reloads the registry's champion.
    """
    from fastslow.errors import FastslowError
    from fastslow.settings import Settings
    from serving.app import create_app
    from serving.runtime import Runtime
    from streaming.cli import resolve_bootstrap
    from streaming.kafka import default_topics, ensure_topics

    settings = Settings()
    host, port = host or settings.serve_host, settings.serve_port if port is None else port
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    try:
        notice = check_bind(host, api_key)
    except FastslowError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    bootstrap = resolve_bootstrap(bootstrap_servers, settings.kafka_bootstrap)
    typer.echo(notice, err=True)
    try:
        ensure_topics(bootstrap, default_topics())
        runtime = Runtime.from_settings(settings, bootstrap=bootstrap, consume=not no_worker, worker_id=worker_id)
    except FastslowError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    _run(runtime, create_app(runtime, api_key), host, port, settings.log_level)


def _run(runtime, app, host: str, port: int, log_level: str) -> None:
    """Start the runtime, serve until SIGINT/SIGTERM, then stop everything (also on errors)."""
    import uvicorn

    from serving.server import uvicorn_config

    # uvicorn handles the signal while it runs and re-raises it after its shutdown; these
    # handlers take that second delivery, so the runtime below still stops (a default
    # SIGTERM would kill the process before its worker snapshots).
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        runtime.start()
        server = uvicorn.Server(uvicorn_config(app, host, port, log_level))
        where = f"http://{host}:{port}"
        worker = f"worker {runtime.worker_id}" if runtime.consume else "no worker (--no-worker)"
        typer.echo(f"serving {where} (champion v{runtime.champion_version}, {worker}); Ctrl-C stops", err=True)
        server.run()
    finally:
        try:
            runtime.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    stats = runtime.worker.stats.as_dict() if runtime.worker is not None else {}
    typer.echo(json.dumps({"stopped": True, "champion_version": runtime.champion_version, "worker": stats}))
