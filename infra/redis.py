"""A throw-away Redis server on loopback, for tests and local runs of the Redis online store.

`RedisServer` starts Debian's ``redis-server`` (``make services`` installs it) with no
persistence, on 127.0.0.1 and a free port unless one is given, waits until it answers PING,
and stops it on exit (SIGTERM, then SIGKILL after a timeout).

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
import subprocess
import tempfile
import time
from pathlib import Path

from fastslow.errors import ServiceError

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        self._process: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` of the running server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers; raises `ServiceError` if it does not."""
        path = shutil.which(self.binary)
        if path is None:
            raise ServiceError("redis", f"{self.binary} not found on PATH",
                               "run `make services` (apt-get install redis-server)")
        self.port = self.port or free_port()
        self._workdir = tempfile.TemporaryDirectory(prefix="fastslow-redis-")
        log = Path(self._workdir.name) / "redis.log"
        args = [path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self._workdir.name, "--logfile", str(log),
                "--daemonize", "no"]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.ping():
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-500:] if log.exists() else ""
                self.stop()
                raise ServiceError("redis", f"server on port {self.port} did not come up",
                                   f"log: {tail.strip() or 'empty'}")
            time.sleep(0.02)
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
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout_s)
        finally:
            self._process = None
            if self._workdir is not None:
                self._workdir.cleanup()
                self._workdir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
