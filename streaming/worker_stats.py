"""Counters a running worker keeps, for logs, benchmarks and the serving ``/metrics`` endpoint.

The worker thread updates them; other threads read them (each field is a plain value or a
dict replaced as a whole, so a reader never sees a half-updated field).

>>> stats = WorkerStats(worker_id="w1")
>>> stats.record_batch(BatchReport(records=5, applied=3, rejected=1, duplicates=1, users={"u"},
...                                seconds=0.002), last_record_timestamp_ms=None)
>>> d = stats.as_dict()
>>> d["events_applied"], d["dlq"], d["duplicates"], d["batches"], d["last_apply_seconds"]
(3, 1, 1, 1, 0.002)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BatchReport:
    """What one polled batch did (passed to the worker's ``on_batch`` callback)."""

    records: int
    """Messages consumed."""
    applied: int
    """Events learned by the model."""
    rejected: int
    """Messages sent to the dead-letter topic."""
    duplicates: int
    """Events skipped because their id was applied before."""
    users: set[str]
    """Users whose state changed."""
    seconds: float
    """Wall time to decode and apply the batch."""
    rate_limited: int = 0
    """Events over their user's rate limit (sent to the dead-letter topic, counted in ``rejected``)."""
    events: Any = None
    """The events applied (a pyarrow Table in the event-log schema, duplicates and rate-limited
    events left out): what a feature pusher (`features.pusher.FeaturePusher`) pushes."""


@dataclass
class WorkerStats:
    """Running totals of one worker."""

    worker_id: str
    records: int = 0
    events_applied: int = 0
    dlq: int = 0
    """Messages sent to the dead-letter topic (invalid or rate limited)."""
    rate_limited: int = 0
    """Of those, events over their user's rate limit."""
    duplicates: int = 0
    batches: int = 0
    commits: int = 0
    snapshots: int = 0
    assigned: list[int] = field(default_factory=list)
    """Partitions owned now."""
    lag: dict[int, int] = field(default_factory=dict)
    """Per assigned partition: high watermark (from the last fetch) minus the next offset to read
    (negative: the position is past the log's end, which the worker then resets)."""
    offset_resets: int = 0
    """Resumed positions given up: another topic incarnation's, or past the log end (`streaming.holdings`)."""
    last_apply_seconds: float | None = None
    """Wall time the last batch took to decode and apply."""
    last_apply_latency_ms: float | None = None
    """Milliseconds from the Kafka timestamp of the last record applied to the end of its batch."""
    last_snapshot_seconds: float | None = None
    fetch_max_wait_ms: int | None = None
    """The fetch max wait once raised (`streaming.kafka.FetchWait`); None while at its start value."""
    started_at: float = field(default_factory=time.time)

    def record_batch(self, report: BatchReport, last_record_timestamp_ms: int | None) -> None:
        """Add one batch's counts."""
        self.records += report.records
        self.events_applied += report.applied
        self.dlq += report.rejected
        self.rate_limited += report.rate_limited
        self.duplicates += report.duplicates
        self.batches += 1
        self.last_apply_seconds = report.seconds
        if last_record_timestamp_ms is not None and last_record_timestamp_ms >= 0:
            self.last_apply_latency_ms = time.time() * 1000 - last_record_timestamp_ms

    @property
    def total_lag(self) -> int:
        """Records behind, summed over the assigned partitions with a known lag; a position past
        the log end counts by how far past it is, so it never reads as caught up."""
        return sum(abs(n) for n in self.lag.values())

    def as_dict(self) -> dict:
        """A JSON-ready copy (partition keys as strings)."""
        return {"worker_id": self.worker_id, "records": self.records, "events_applied": self.events_applied,
                "dlq": self.dlq, "rate_limited": self.rate_limited, "duplicates": self.duplicates, "batches": self.batches,
                "commits": self.commits, "snapshots": self.snapshots, "offset_resets": self.offset_resets,
                "assigned": list(self.assigned),
                "lag": {str(p): n for p, n in sorted(self.lag.items())}, "total_lag": self.total_lag,
                "last_apply_seconds": self.last_apply_seconds, "last_apply_latency_ms": self.last_apply_latency_ms,
                "last_snapshot_seconds": self.last_snapshot_seconds, "fetch_max_wait_ms": self.fetch_max_wait_ms,
                "uptime_seconds": round(time.time() - self.started_at, 3)}
