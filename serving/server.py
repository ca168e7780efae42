"""Run the API with uvicorn: in the foreground (`fastslow serve`) or on a thread (tests, benchmarks).

`uvicorn_config` holds the choices every caller shares: one process, no access log (request
latency is in ``/metrics``), no lifespan (the caller starts and stops the
`serving.runtime.Runtime` around the server). `BackgroundServer` binds its socket before
starting, so ``port=0`` gets a free port with no race, and stops for sure on `stop`.

>>> from fastapi import FastAPI
>>> import httpx
>>> app = FastAPI()
>>> _ = app.get("/ping")(lambda: {"pong": True})
>>> with BackgroundServer(app) as server:
...     httpx.get(server.url + "/ping").json()
{'pong': True}
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from fastslow.errors import ServiceError

START_TIMEOUT_S = 10.0


def uvicorn_config(app: Any, host: str, port: int, log_level: str = "warning"):
    """The ``uvicorn.Config`` fastslow serves with."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), access_log=False,
                          lifespan="off", timeout_graceful_shutdown=10)


class BackgroundServer:
    """Serve ``app`` on ``host:port`` from a daemon thread until `stop` (or the ``with`` block ends)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.app, self.host, self.port, self.log_level = app, host, port, log_level
        self._server = self._sock = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        import uvicorn

        sock = self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn_config(self.app, self.host, self.port, self.log_level))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            self.stop()
            raise ServiceError("http server", f"did not start on {self.url} within {START_TIMEOUT_S} s",
                               "see the log above for uvicorn's error")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
