"""Synthetic interaction streams with known ground truth (`fastslow synth`).

A stream has users with latent tastes over item categories, Zipf item popularity,
heavy-tailed user activity, sessions with planted item-to-item transitions, items introduced
over time, and abrupt taste shifts ("new favourite" categories) for a fraction of users at
recorded times. See `evaluation.synth_world` (the hidden world), `evaluation.synth_events`
(the simulation) and `evaluation.synth_truth` (the sidecar files and `load_truth`).

Guarantees the ground truth gives (checked by tests/test_synth.py):

* ``round(shift_fraction * n_users)`` users are shifted (all qualifying users, with a logged
  warning, if fewer qualify). Each has at least ``min_pre_shift_events`` (default 10) events
  before and ``min_post_shift_events`` (default 20) at or after the shift time, which lies
  between two of their sessions; with the defaults the median is about 32 post-shift events.
* Before the shift a user never interacts with the new category; after it about 70% of their
  events are in it (``shift_strength`` of the taste-driven picks, plus links and repeats
  that stay in the category).
* No item appears before its ``introduced_at``.

The same configuration and seed give byte-identical files. Events are sorted by timestamp
(ties in session order) and carry the shared event-log columns plus ``event_id``.

Examples
--------
>>> stream = generate(SynthConfig.preset("tiny", seed=1))
>>> table = stream.events_table()
>>> table.column_names
['event_id', 'user_id', 'item_id', 'timestamp', 'event_type', 'value']
>>> table.num_rows, str(table.schema.field("timestamp").type)
(3000, 'timestamp[ms, tz=UTC]')
>>> truth = stream.truth()
>>> len(truth.shifts) > 0 and all(s.post_events >= 10 for s in truth.shifts.values())
True
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import typer

from evaluation.synth_events import EVENT_TYPES, Events, Progress, Shifts, simulate
from evaluation.synth_truth import Season, Shift, SynthTruth, iso_seconds, sidecar_paths
from evaluation.synth_world import (PRESETS, SynthConfig, World, build_world, season_bounds, season_categories,
                                    season_period, start_seconds)
from fastslow.errors import ConfigError

__all__ = ["SynthConfig", "SynthStream", "generate", "write_stream", "synth", "synth_command", "PRESETS"]

logger = logging.getLogger(__name__)
CHUNK_ROWS = 1_000_000
EVENT_COLUMNS = ["event_id", "user_id", "item_id", "timestamp", "event_type", "value"]


def _names(prefix: str, numbers: np.ndarray, count: int) -> pa.Array:
    """Zero-padded ids such as u0042 (padding wide enough for `count` ids)."""
    digits = pc.cast(pa.array(numbers, pa.int64()), pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(digits, width=len(str(max(count - 1, 0))),
                                                            padding="0"), "")


@dataclass
class SynthStream:
    """A generated stream in memory: its world, events sorted by time, and planted shifts."""

    config: SynthConfig
    world: World
    events: Events
    shifts: Shifts
    stats: dict
    """Realism statistics (see `stream_stats`), also written to the truth sidecar."""

    def __post_init__(self) -> None:
        self.start = start_seconds(self.config.start)
        self.user_ids = _names("u", np.arange(self.config.n_users), self.config.n_users)
        self.item_ids = _names("i", self.world.item_code, self.config.n_items)

    def events_table(self, begin: int = 0, end: int | None = None, iso_time: bool = False) -> pa.Table:
        """Rows [begin, end) in the event-log contract (timestamp as ISO text if `iso_time`)."""
        end = len(self.events.user) if end is None else end
        ev, rows = self.events, slice(begin, end)
        seconds = self.start + ev.time[rows]
        stamp = _iso_column(seconds) if iso_time else pa.array(seconds * 1000, pa.timestamp("ms", tz="UTC"))
        return pa.table({
            "event_id": _names("e", np.arange(begin, end), self.config.n_events),
            "user_id": self.user_ids.take(pa.array(ev.user[rows])),
            "item_id": self.item_ids.take(pa.array(ev.item[rows])),
            "timestamp": stamp,
            "event_type": pa.array(EVENT_TYPES, pa.string()).take(pa.array(ev.kind[rows])),
            "value": pa.array(ev.value[rows], pa.float64()),
        })

    def items_table(self) -> pa.Table:
        """The item table: item_id, category, price, introduced_at (timestamp[ms, UTC])."""
        w = self.world
        return pa.table({
            "item_id": self.item_ids,
            "category": pa.array(w.item_category, pa.int64()),
            "price": pa.array(w.item_price, pa.float64()),
            "introduced_at": pa.array((self.start + w.item_introduced) * 1000, pa.timestamp("ms", tz="UTC")),
        })

    def links_table(self) -> pa.Table:
        """Planted transitions: item_id, next_item_id, slot, probability of that slot."""
        w, n_next = self.world, self.config.n_next
        source = np.repeat(np.arange(self.config.n_items), n_next)
        probability = np.diff(np.concatenate([[0.0], w.link_cum]))
        return pa.table({
            "item_id": self.item_ids.take(pa.array(source)),
            "next_item_id": self.item_ids.take(pa.array(w.links.reshape(-1))),
            "slot": pa.array(np.tile(np.arange(n_next), self.config.n_items), pa.int32()),
            "probability": pa.array(np.tile(probability, self.config.n_items), pa.float64()),
        })

    def post_shift_mask(self) -> np.ndarray:
        """Per event: whether it is a shifted user's event at or after their shift."""
        return _post_shift(self.config, self.events, self.shifts)

    def truth(self) -> SynthTruth:
        """The ground truth, as `load_truth` would read it back from the sidecars."""
        cfg, w, sh = self.config, self.world, self.shifts
        post = np.bincount(self.events.user, weights=self.post_shift_mask(), minlength=cfg.n_users)
        total = np.bincount(self.events.user, minlength=cfg.n_users)
        users = self.user_ids.take(pa.array(sh.user)).to_pylist()
        isos = iso_seconds(self.start + sh.time)
        shifts = {}
        for k, user in enumerate(users):
            u = int(sh.user[k])
            shifts[user] = Shift(user_id=user, time=float(self.start + sh.time[k]), time_iso=isos[k],
                                 old_categories=tuple(int(c) for c in w.user_favourites[u]),
                                 new_category=int(sh.new_category[k]), pre_events=int(total[u] - post[u]),
                                 post_events=int(post[u]))
        items = self.item_ids.to_pylist()
        counts = {"events": cfg.n_events, "users": int((total > 0).sum()), "items": cfg.n_items,
                  "shifted_users": len(shifts),
                  "shifted_users_requested": round(cfg.shift_fraction * cfg.n_users)}
        return SynthTruth(params=cfg.to_dict(), seed=cfg.seed, counts=counts, stats=self.stats,
                          shifts=shifts, item_category=dict(zip(items, w.item_category.tolist())),
                          item_introduced_at=dict(zip(items, (self.start + w.item_introduced).astype(float).tolist())),
                          seasons=self._seasons())

    def _seasons(self) -> tuple[Season, ...]:
        cfg = self.config
        if not cfg.seasons:
            return ()
        bounds = season_bounds(cfg)
        bounds[-1] = max(int(bounds[-1]), int(self.events.time.max()) + 1)
        owned = season_categories(cfg)
        return tuple(Season(period=j, season=letter, start=float(self.start + bounds[j]),
                            end=float(self.start + bounds[j + 1]), categories=tuple(owned[letter]))
                     for j, letter in enumerate(cfg.seasons))


def _g(x: float) -> float:
    """A statistic rounded to 4 significant digits for the sidecar."""
    return float(f"{float(x):.4g}")


def _quantiles(x: np.ndarray) -> dict:
    q = np.percentile(x, [0, 50, 90, 99, 100]) if len(x) else np.zeros(5)
    return dict(zip(("min", "median", "p90", "p99", "max"), (_g(v) for v in q)))


def _post_shift(cfg: SynthConfig, ev: Events, shifts: Shifts) -> np.ndarray:
    shift_time = np.full(cfg.n_users, np.iinfo(np.int64).max, dtype=np.int64)
    shift_time[shifts.user] = shifts.time
    return ev.time >= shift_time[ev.user]


def stream_stats(cfg: SynthConfig, w: World, ev: Events, shifts: Shifts) -> dict:
    """Realism statistics: activity, popularity concentration, link following, shifts.

    `ev` must be in session layout (each session's events contiguous and in order), as
    `simulate` returns them.

    ``link_transition_share`` is the share of within-session consecutive event pairs (on
    different items) whose second item is a planted next item of the first;
    ``link_chance`` is the share a uniformly random pair would have.
    """
    per_user = np.bincount(ev.user, minlength=cfg.n_users)
    per_item = np.sort(np.bincount(ev.item, minlength=cfg.n_items))[::-1]
    top = max(1, cfg.n_items // 100)
    sess, item = ev.session, ev.item
    pair = (sess[1:] == sess[:-1]) & (item[1:] != item[:-1])
    prev, nxt = item[:-1][pair], item[1:][pair]
    on_link = (w.links[prev] == nxt[:, None]).any(axis=1)
    post = _post_shift(cfg, ev, shifts)
    new_cat = np.full(cfg.n_users, -1)
    new_cat[shifts.user] = shifts.new_category
    in_new = w.item_category[ev.item] == new_cat[ev.user]
    shifted = np.isin(ev.user, shifts.user)
    seasonal = {}
    if cfg.seasons:   # share of each period's events on its season's catalogue
        owned = season_categories(cfg)
        hot = np.zeros((len(cfg.seasons), cfg.n_categories), dtype=bool)
        for j, letter in enumerate(cfg.seasons):
            hot[j, owned[letter]] = True
        period = season_period(cfg, ev.time)
        on = hot[period, w.item_category[ev.item]]
        seasonal = {"season_catalogue_share": [_g(on[period == j].mean()) if (period == j).any() else 0.0
                                               for j in range(len(cfg.seasons))]}
    return {
        "events_per_user": _quantiles(per_user[per_user > 0]),
        "top1pct_item_share": _g(per_item[:top].sum() / max(1, cfg.n_events)),
        "items_with_events": int((per_item > 0).sum()),
        "link_transition_share": _g(on_link.mean()) if len(on_link) else 0.0,
        "link_chance": _g(cfg.n_next / cfg.n_items),
        "repeat_share": _g(1.0 - pair.sum() / max(1, (sess[1:] == sess[:-1]).sum())),
        "event_type_share": {t: _g((ev.kind == k).mean()) for k, t in enumerate(EVENT_TYPES)},
        "new_item_event_share": _g((w.item_introduced[ev.item] > 0).mean()),
        "post_shift_events": _quantiles(np.bincount(ev.user[post], minlength=cfg.n_users)[shifts.user]),
        "post_shift_new_category_share": _g(in_new[post].mean()) if post.any() else 0.0,
        "pre_shift_new_category_events": int((in_new & shifted & ~post).sum()),
        **seasonal,
    }


def _iso_column(seconds: np.ndarray) -> pa.Array:
    """ISO-8601 UTC text per second, built from per-day and per-second-of-day lookup tables."""
    day, second = np.divmod(seconds, 86_400)
    first = int(day.min()) if len(day) else 0
    days = np.arange(first, int(day.max()) + 1 if len(day) else first + 1)
    dates = pa.array(np.datetime_as_string(days.astype("datetime64[D]")).tolist())
    clock = pa.array([f"{h:02d}:{m:02d}:{s:02d}Z" for h in range(24) for m in range(60) for s in range(60)])
    return pc.binary_join_element_wise(dates.take(pa.array(day - first)), clock.take(pa.array(second)), "T")


def generate(config: SynthConfig, progress: Progress | None = None) -> SynthStream:
    """Generate the stream of `config` in memory (events sorted by timestamp, stable)."""
    started = time.perf_counter()
    world = build_world(config)
    events, shifts = simulate(config, world, progress)
    stats = stream_stats(config, world, events, shifts)
    order = np.argsort(events.time, kind="stable")
    for name in ("user", "item", "time", "kind", "value", "session"):  # one array at a time: less memory
        setattr(events, name, getattr(events, name)[order])
    del order
    logger.info("generated %d events in %.1f s", config.n_events, time.perf_counter() - started)
    return SynthStream(config, world, events, shifts, stats)


def _event_format(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in ((".csv.gz", "csv.gz"), (".csv", "csv"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise ConfigError("OUT", str(path), "a file name ending in .parquet, .pq, .csv or .csv.gz")


def _write_events(stream: SynthStream, path: Path, fmt: str, progress: Progress | None) -> None:
    n = stream.config.n_events
    if fmt == "parquet":
        writer = None
        try:
            for begin in range(0, n, CHUNK_ROWS):
                table = stream.events_table(begin, min(n, begin + CHUNK_ROWS))
                writer = writer or pq.ParquetWriter(path, table.schema, compression="zstd")
                writer.write_table(table, row_group_size=CHUNK_ROWS)
                if progress:
                    progress("write", min(n, begin + CHUNK_ROWS), n)
        finally:
            if writer is not None:
                writer.close()
        return
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with open(path, "wb") as raw:
        # mtime=0 and no file name in the gzip header keep the bytes identical run to run
        sink = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) if fmt == "csv.gz" else raw
        try:
            sink.write((",".join(EVENT_COLUMNS) + "\n").encode())
            for begin in range(0, n, CHUNK_ROWS):
                pacsv.write_csv(stream.events_table(begin, min(n, begin + CHUNK_ROWS), iso_time=True), sink, options)
                if progress:
                    progress("write", min(n, begin + CHUNK_ROWS), n)
        finally:
            if sink is not raw:
                sink.close()


def write_stream(stream: SynthStream, path: str | Path, progress: Progress | None = None) -> dict:
    """Write the events file (format by extension) and its sidecars; return a summary dict."""
    path = Path(path)
    fmt = _event_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    side = sidecar_paths(path)
    partial = path.with_name(path.name + ".partial")
    try:
        _write_events(stream, partial, fmt, progress)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    pq.write_table(stream.items_table(), side.items, compression="zstd")
    pq.write_table(stream.links_table(), side.links, compression="zstd")
    truth = stream.truth()
    side.truth.write_text(truth.to_json(path.name))
    return {"events": stream.config.n_events, "users": truth.counts["users"], "items": stream.config.n_items,
            "shifted_users": len(truth.shifts), "path": str(path), "truth": str(side.truth)}


def synth(path: str | Path, config: SynthConfig, progress: Progress | None = None) -> dict:
    """Generate the stream of `config` and write it to `path` with its sidecars.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from evaluation.synth_truth import load_truth
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "s.csv"
    >>> summary = synth(out, SynthConfig.preset("tiny"))
    >>> summary["events"], out.read_text().splitlines()[0]
    (3000, 'event_id,user_id,item_id,timestamp,event_type,value')
    >>> len(load_truth(out).shifts) == summary["shifted_users"]
    True
    """
    started = time.perf_counter()
    summary = write_stream(generate(config, progress), path, progress)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def synth_command(
    out: Annotated[Path, typer.Argument(help="Events file: .parquet, .csv or .csv.gz; sidecars go next to it.")],
    preset: Annotated[str, typer.Option(help=f"Base configuration: {', '.join(PRESETS)}.")] = "default",
    events: Annotated[int | None, typer.Option("--events", help="Number of events.")] = None,
    users: Annotated[int | None, typer.Option("--users", help="Number of users.")] = None,
    items: Annotated[int | None, typer.Option("--items", help="Final catalogue size.")] = None,
    categories: Annotated[int | None, typer.Option("--categories", help="Number of categories (tastes).")] = None,
    dim: Annotated[int | None, typer.Option(help="Latent dimension.")] = None,
    zipf: Annotated[float | None, typer.Option(help="Item popularity Zipf exponent.")] = None,
    session_mean: Annotated[float | None, typer.Option(help="Mean session length (events).")] = None,
    shift_fraction: Annotated[float | None, typer.Option(help="Fraction of users with a taste shift.")] = None,
    new_item_fraction: Annotated[float | None, typer.Option(help="Fraction of items introduced over time.")] = None,
    p_next: Annotated[float | None, typer.Option(help="Probability of following a planted next-item link.")] = None,
    start: Annotated[str | None, typer.Option(help="Start time, ISO-8601 UTC.")] = None,
    span_days: Annotated[float | None, typer.Option(help="Time span of session starts, days.")] = None,
    seasons: Annotated[str | None, typer.Option(help="Season schedule, one letter per period (e.g. ABACA; "
                                                     "needs --shift-fraction 0).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
) -> None:
    """Generate a synthetic interaction stream with known ground truth (taste shifts, new items)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn

    given = {"n_events": events, "n_users": users, "n_items": items, "n_categories": categories, "dim": dim,
             "zipf": zipf, "session_mean": session_mean, "shift_fraction": shift_fraction,
             "new_item_fraction": new_item_fraction, "p_next": p_next, "start": start,
             "span_days": span_days, "seasons": seasons, "seed": seed}
    try:
        config = SynthConfig.preset(preset, **{k: v for k, v in given.items() if v is not None})
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from err
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
               TimeElapsedColumn())
    with Bar(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks = {stage: bar.add_task(stage, total=config.n_events) for stage in ("simulate", "write")}
        summary = synth(out, config, lambda stage, done, total: bar.update(tasks[stage], completed=done))
    typer.echo(json.dumps(summary))
