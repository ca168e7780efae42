"""Fault injection: stop a process at a chosen point, as ``kill -9`` would, to prove recovery.

Code that must survive a crash anywhere marks its risky moments with `point` (a no-op unless
armed). A process armed with a spec such as ``"snapshot:3"`` (``FASTSLOW_FAULT=snapshot:3``
for ``fastslow worker``) SIGKILLs itself the 3rd time it reaches the point ``snapshot``:
no ``finally`` block, no flush, no atexit handler runs, exactly as after ``kill -9`` or a
power cut. Several points may be armed at once (``"apply:40,commit:7"``); the first reached
fires. Tests and ``fastslow bench faults`` restart the process and check that nothing was
lost or applied twice.

The points (`POINTS`) the worker reaches:

``apply``
    After one partition's events of a polled batch were learned, before the rest of the
    batch: the model holds half a batch that nothing durable knows about.
``commit``
    Archive written and dead letters acknowledged, offsets not committed yet.
``snapshot``
    The worker's snapshot file written, its partition files not yet.

Also here, for the fault scenarios: `AppliedLog`, a model that records every event it
learns (so a final state shows each loss and each double application), `tally` to count
them, and `rss_bytes` / `slope` for memory growth.

>>> parse_faults("snapshot:3, apply:1")
{'snapshot': 3, 'apply': 1}
>>> point("snapshot")   # not armed: nothing happens
>>> tally([("u1", 1), ("u1", 2), ("u2", 3)], [("u1", 1), ("u1", 1), ("u2", 3)]).as_dict()
{'produced': 3, 'applied': 2, 'lost': 1, 'duplicated': 1}
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastslow.errors import ConfigError
from models.base import Recommender

logger = logging.getLogger(__name__)

POINTS: dict[str, str] = {
    "apply": "after one partition's events of a batch were learned (the rest of the batch not yet)",
    "commit": "archive durable and dead letters acknowledged, offsets not committed yet",
    "snapshot": "worker snapshot file written, partition snapshot files not yet",
}
"""Where a process can be stopped (see the module docstring)."""

_lock = threading.Lock()
_armed: dict[str, int] | None = None
_hits: Counter[str] = Counter()


def parse_faults(spec: str) -> dict[str, int]:
    """``"point:n,point:n"`` as ``{point: n}`` (n >= 1: SIGKILL at the n-th time it is reached).

    >>> parse_faults("nowhere:1")
    Traceback (most recent call last):
    ...
    fastslow.errors.ConfigError: setting fault='nowhere:1' is invalid: expected point:n[,point:n...] with points from apply, commit, snapshot and n >= 1
    """
    expected = f"point:n[,point:n...] with points from {', '.join(sorted(POINTS))} and n >= 1"
    faults = {}
    for part in (p.strip() for p in spec.split(",")):
        name, _, count = part.partition(":")
        if name not in POINTS or not count.strip().isdigit() or int(count) < 1:
            raise ConfigError("fault", spec, expected)
        faults[name] = int(count)
    return faults


def arm(spec: str | None) -> None:
    """Arm this process with a fault spec (see `parse_faults`); None or empty disarms it."""
    global _armed
    faults = parse_faults(spec) if spec else None
    with _lock:
        _armed = faults
        _hits.clear()
    if faults:
        logger.warning("fault injection armed: this process SIGKILLs itself at %s", spec)


def point(name: str) -> None:
    """Mark a point where a crash must be survivable; SIGKILL this process if it is armed here."""
    if _armed is None:
        return
    with _lock:
        _hits[name] += 1
        fire = _armed is not None and _armed.get(name) == _hits[name]
    if fire:
        kill_self(f"{name} #{_hits[name]}")


def kill_self(where: str) -> None:
    """SIGKILL this process now, saying where on stderr first (the one thing that gets out)."""
    sys.stderr.write(f"fault injected: SIGKILL at {where} (pid {os.getpid()})\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


# -- counting what a run lost --------------------------------------------------------------

@dataclass(frozen=True)
class Tally:
    """Events produced, applied (distinct), lost (produced, never applied) and applied twice or more."""

    produced: int
    applied: int
    lost: int
    duplicated: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def tally(produced: Iterable, applied: Iterable) -> Tally:
    """Count by event key: ``produced`` distinct keys, ``applied`` every application of one.

    Keys applied that were never produced count as applied (and show up as produced < applied).
    """
    wanted = set(produced)
    times = Counter(applied)
    return Tally(len(wanted), len(times), len(wanted - times.keys()), sum(1 for n in times.values() if n > 1))


@dataclass
class ScenarioResult:
    """One fault scenario's verdict and counts, as ``fastslow bench faults`` prints it."""

    name: str
    passed: bool
    produced: int = 0
    applied: int = 0
    lost: int = 0
    duplicated: int = 0
    details: dict = field(default_factory=dict)
    """Anything else measured (faults fired, latencies, memory, why it failed)."""

    def as_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "produced": self.produced, "applied": self.applied,
                "lost": self.lost, "duplicated": self.duplicated, **self.details}


class AppliedLog(Recommender):
    """A recommender that records every event it learns, per user, in learning order.

    Its whole state is that record, so a worker's final state shows every event it lost and
    every one it applied twice: `keys` are ``(user_id, timestamp_ms)`` pairs, unique per event
    when the events of each user have distinct times. It recommends a user's own recent
    items, most recent first (enough for a worker; its point is the record). Implements
    `streaming.state.PartitionedState`, so users move between workers with their records.

    >>> log = AppliedLog()
    >>> log.learn_one("u1", "a", 1.0); log.learn_one("u1", "b", 2.5)
    >>> log.keys(), log.recommend("u1", 5, exclude={"b"})
    ([('u1', 1000), ('u1', 2500)], ['a'])
    """

    name = "applied-log"

    def __init__(self) -> None:
        self._users: dict[str, list[tuple[int, str]]] = {}

    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        self._users.setdefault(user_id, []).append((round(timestamp * 1000), item_id))

    def recommend(self, user_id: str, k: int, exclude: Collection[str] = ()) -> list[str]:
        seen = dict.fromkeys(item for _, item in reversed(self._users.get(user_id, [])))
        return [item for item in seen if item not in exclude][:k]

    def keys(self) -> list[tuple[str, int]]:
        """Every application as ``(user_id, timestamp_ms)``, by user then learning order."""
        return [(user, ms) for user, events in sorted(self._users.items()) for ms, _ in events]

    def users(self) -> list[str]:
        return list(self._users)

    def export_users(self, user_ids: Collection[str]) -> bytes:
        return pickle.dumps({u: self._users[u] for u in user_ids if u in self._users})

    def import_users(self, blob: bytes) -> None:
        self._users.update(pickle.loads(blob))

    def forget_users(self, user_ids: Collection[str], deleted: bool = False) -> None:
        for user in user_ids:
            self._users.pop(user, None)


# -- memory ------------------------------------------------------------------------------

def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from ``/proc/<pid>/status``.

    >>> rss_bytes() > 10_000_000
    True
    """
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ConfigError("pid", pid, "a running Linux process (no VmRSS line in its status)")


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (0.0 for fewer than two distinct xs).

    >>> slope([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])
    2.0
    """
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
