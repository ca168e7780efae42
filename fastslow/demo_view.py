"""What the demo shows and writes: the live terminal view, the JSON report and the plot."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Group
from rich.panel import Panel
from rich.table import Table


@dataclass
class DemoStats:
    """Numbers the demo's threads record and the view reads (guarded by one lock)."""

    produced: int = 0
    to_produce: int = 0
    probes: int = 0
    probe_hits: int = 0
    champion: int | None = None
    phase: str = "starting"
    notes: list[str] = field(default_factory=list)
    hits: deque = field(default_factory=lambda: deque(maxlen=500))
    freshness_ms: list[float] = field(default_factory=list)
    timeline: list[tuple[float, float, float, int]] = field(default_factory=list)
    """(seconds since start, rolling HR@10, applied events/s, champion version) per tick."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def probe(self, hit: bool) -> None:
        with self.lock:
            self.probes += 1
            self.probe_hits += hit
            self.hits.append(hit)

    def note(self, text: str) -> None:
        with self.lock:
            self.notes.append(f"{time.strftime('%H:%M:%S')} {text}")

    @property
    def rolling_hr(self) -> float:
        return float(np.mean(self.hits)) if self.hits else 0.0


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile of values (None when there are none).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    """
    return float(np.percentile(values, q)) if values else None


def render(stats: DemoStats, worker_stats, events_per_s: float) -> Panel:
    """The live view: throughput, lag, freshness, quality, champion, and what happened."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan")
    table.add_column()
    fresh = worker_stats.last_apply_latency_ms if worker_stats is not None else None
    with stats.lock:
        p99 = percentile(stats.freshness_ms[-2000:], 99)
        rows = [
            ("phase", stats.phase),
            ("events produced", f"{stats.produced:,} / {stats.to_produce:,}"),
            ("events applied", f"{worker_stats.events_applied:,}" if worker_stats else "-"),
            ("events/s (applied)", f"{events_per_s:,.0f}"),
            ("consumer lag", f"{worker_stats.total_lag:,}" if worker_stats else "-"),
            ("freshness p99 (produce -> applied)", f"{p99:.1f} ms" if p99 is not None else "-"),
            ("last batch freshness", f"{fresh:.1f} ms" if fresh is not None else "-"),
            ("rolling HR@10 (last 500 probes)", f"{stats.rolling_hr:.3f}  ({stats.probes:,} probes)"),
            ("champion version", f"v{stats.champion}" if stats.champion else "-"),
        ]
        notes = list(stats.notes[-8:])
    for name, value in rows:
        table.add_row(name, value)
    return Panel(Group(table, *notes), title="fastslow demo", border_style="green")


def write_report(report: dict, stats: DemoStats, out_dir: Path) -> tuple[Path, Path]:
    """Write report.json and quality.png (rolling HR@10 and throughput over the run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    json_path, png_path = out_dir / "report.json", out_dir / "quality.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    with stats.lock:
        timeline = np.array(stats.timeline) if stats.timeline else np.zeros((0, 4))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    if len(timeline):
        top.plot(timeline[:, 0], timeline[:, 1], color="tab:green")
        for t, version in _promotions(timeline):
            top.axvline(t, color="tab:red", linestyle="--")
            top.annotate(f"champion v{version}", (t, top.get_ylim()[1]), fontsize=8, va="top")
        bottom.plot(timeline[:, 0], timeline[:, 2], color="tab:blue")
    top.set_ylabel("rolling HR@10")
    top.set_title("fastslow demo: quality while streaming (test-then-learn probes)")
    bottom.set_ylabel("events applied / s")
    bottom.set_xlabel("seconds since the stream started")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path


def _promotions(timeline: np.ndarray) -> list[tuple[float, int]]:
    versions = timeline[:, 3]
    changed = np.flatnonzero(versions[1:] != versions[:-1]) + 1
    return [(float(timeline[n, 0]), int(versions[n])) for n in changed]
