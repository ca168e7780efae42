"""A throw-away Redis server on loopback, for tests and local runs of the Redis online store.

`RedisServer` starts Debian's ``redis-server`` (``make services`` installs it) with no
persistence, on 127.0.0.1 and a free port unless one is given, waits until it answers PING,
and stops it on exit (SIGTERM, then SIGKILL after a timeout). It runs as an
`infra.services.ServiceProcess`, so it dies with its parent even if that is killed.

>>> with RedisServer() as server:
...     print(server.url.startswith("redis://127.0.0.1:"), server.ping())
True True
>>> server.ping()
False
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
from pathlib import Path

from fastslow.errors import ServiceError
from infra.services import ServiceProcess, free_port, wait_until

logger = logging.getLogger(__name__)


class RedisServer:
    """A ``redis-server`` child process on loopback; use as a context manager.

    Parameters
    ----------
    port
        TCP port; 0 picks a free one.
    binary
        The server executable (looked up on PATH).
    startup_timeout_s
        How long to wait for the server to answer PING.
    """

    def __init__(self, port: int = 0, binary: str = "redis-server",
                 startup_timeout_s: float = 10.0) -> None:
        self.port = port
        self.binary = binary
        self.startup_timeout_s = startup_timeout_s
        self._process: ServiceProcess | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None."""
        return None if self._process is None else self._process.pid

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers; raises `ServiceError` if it does not."""
        path = shutil.which(self.binary)
        if path is None:
            raise ServiceError("redis", f"{self.binary} not found on PATH",
                               "run `make services` (apt-get install redis-server)")
        self.port = self.port or free_port()
        self._workdir = tempfile.TemporaryDirectory(prefix="fastslow-redis-")
        argv = [path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self._workdir.name, "--logfile", ""]
        self._process = ServiceProcess("redis-server", argv,
                                       Path(self._workdir.name) / "redis.log")
        try:
            self._process.start()
            wait_until(self.ping, self._process, self.startup_timeout_s, "answering PING")
        except ServiceError:
            self.stop()
            raise
        logger.info("redis-server pid %d on 127.0.0.1:%d", self._process.pid, self.port)
        return self

    def ping(self) -> bool:
        """True if the server answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its working folder."""
        try:
            if self._process is not None:
                self._process.stop(timeout_s)
        finally:
            self._process = None
            if self._workdir is not None:
                self._workdir.cleanup()
                self._workdir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
