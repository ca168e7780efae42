"""Readiness probes of a serving process: is the Kafka broker reachable?

`BrokerProbe` opens a TCP connection to the bootstrap servers (one answering is enough) at
most once per ``interval_s``, so a busy ``/readyz`` does not hammer the broker. Reachable
means accepting connections: the producer and the worker reconnect by themselves once the
broker answers again.

>>> BrokerProbe("127.0.0.1:1").problem()   # nothing listens on port 1
'Kafka broker unreachable at 127.0.0.1:1'
"""

from __future__ import annotations

import math
import socket
import time

CONNECT_TIMEOUT_S = 0.5


class BrokerProbe:
    """Checks that one of ``bootstrap``'s ``host:port`` servers accepts TCP connections."""

    def __init__(self, bootstrap: str, interval_s: float = 1.0) -> None:
        self.bootstrap, self.interval_s = bootstrap, interval_s
        self._checked_at, self._problem = -math.inf, None

    def problem(self) -> str | None:
        """None when reachable, else what is wrong (the last answer if checked recently)."""
        now = time.monotonic()
        if now - self._checked_at >= self.interval_s:
            self._problem = None if any(_accepts(s) for s in self.bootstrap.split(",")) else \
                f"Kafka broker unreachable at {self.bootstrap}"
            self._checked_at = now
        return self._problem


def _accepts(server: str) -> bool:
    host, _, port = server.strip().rpartition(":")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError):
        return False
    return True
