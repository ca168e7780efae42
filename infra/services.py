"""Supervise one local service process: start it detached, log to a file, stop it for sure.

A service runs in its own session (process group), so a Ctrl-C in the terminal reaches only
the Python parent, which then stops the service in its ``finally`` block. On Linux the child
also asks the kernel to SIGKILL it when the parent dies (``PR_SET_PDEATHSIG``), so even a
``kill -9`` of the parent leaves no orphan behind.

Examples
--------
>>> import sys, tempfile
>>> from pathlib import Path
>>> log = Path(tempfile.mkdtemp()) / "sleep.log"
>>> proc = ServiceProcess("sleeper", [sys.executable, "-c", "print('hi', flush=True); import time; time.sleep(60)"], log)
>>> proc.start()
>>> proc.running
True
>>> proc.stop(timeout=5.0)
>>> proc.running
False
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from fastslow.errors import ServiceError

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is free when this returns; another process may still take it before the caller
    binds it, so callers that start a service on it should retry on a bind failure.

    >>> 1024 <= free_port() <= 65535
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct free TCP ports (all held open together while choosing).

    >>> len(set(free_ports(8)))
    8
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds within ``timeout`` seconds.

    >>> port_open("127.0.0.1", free_port())
    False
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_prctl():
    """libc's ``prctl``, loaded in the parent (never after fork), or None off glibc Linux."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _die_with_parent(parent_pid: int) -> None:
    """Child-side hook (between fork and exec): SIGKILL this process when the parent exits."""
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


class ServiceProcess:
    """One external server process with its log file.

    Parameters
    ----------
    name
        Human name used in errors and logs ("tansu broker", "seaweedfs").
    argv
        Command line to run.
    log_path
        File that receives the process's stdout and stderr (appended to).
    env
        Extra environment variables layered over the parent's environment.
    die_with_parent
        Ask the kernel (Linux ``PR_SET_PDEATHSIG``) to SIGKILL the service when the *thread*
        that started it exits. Start long-lived services from the main thread (or a thread
        that outlives them).
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: Mapping[str, str] | None = None, die_with_parent: bool = True) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the running service, or None before start."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has exited, else None."""
        return None if self._proc is None else self._proc.poll()

    def start(self) -> None:
        """Start the process in a new session, stdout and stderr appended to ``log_path``."""
        if self.running:
            raise ServiceError(self.name, f"already running as pid {self.pid}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        parent = os.getpid()
        hook = (lambda: _die_with_parent(parent)) if self.die_with_parent and _PRCTL else None
        with open(self.log_path, "ab") as log:
            try:
                self._proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, **self.env}, start_new_session=True, preexec_fn=hook)
            except OSError as exc:
                raise ServiceError(self.name, f"could not run {self.argv[0]}: {exc}",
                                   "check that the binary exists and is executable") from exc
        logger.info("started %s (pid %d), log %s", self.name, self._proc.pid, self.log_path)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, wait up to ``timeout`` seconds, then SIGKILL it.

        Safe to call more than once and on a process that already exited.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.info("%s (pid %d) ignored SIGTERM for %.1f s; sending SIGKILL",
                            self.name, proc.pid, timeout)
        # Kill what is left of the group (the leader or any helper it spawned), then reap.
        self._signal_group(signal.SIGKILL)
        proc.wait()
        logger.info("stopped %s (pid %d, exit %s)", self.name, proc.pid, proc.returncode)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, sig)  # the session leader's pid is its group id
        except ProcessLookupError:
            pass  # the whole group is already gone

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the service log (empty if there is none yet)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, reason: str, hint: str = "") -> ServiceError:
        """A ServiceError for this service whose reason ends with the tail of its log."""
        tail = self.log_tail()
        detail = f"{reason}; log {self.log_path}" + (f" ends with:\n{tail}" if tail else " is empty")
        return ServiceError(self.name, detail, hint)


def wait_until(ready, process: ServiceProcess, timeout: float, what: str,
               interval: float = 0.1) -> None:
    """Poll ``ready()`` until it returns True; fail early if ``process`` exits.

    Raises
    ------
    ServiceError
        When the process exits or ``timeout`` seconds pass first; the message carries the
        tail of the service log.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not process.running:
            raise process.fail(f"exited with status {process.returncode} before {what}")
        if ready():
            return
        if time.monotonic() >= deadline:
            raise process.fail(f"not {what} after {timeout:.0f} s",
                               "a slow machine may need a longer ready timeout")
        time.sleep(interval)
