"""Ground truth of a synthetic stream: the sidecar files and `load_truth`.

Next to an events file ``<stem>.parquet`` / ``<stem>.csv`` / ``<stem>.csv.gz`` the generator
writes

* ``<stem>.truth.json``: parameters, seed, counts, realism statistics, and per shifted user
  the shift time (ISO and unix seconds), old categories, new category and event counts, and
  for a seasonal stream each period's season letter, time range and hot categories;
* ``<stem>.items.parquet``: item_id, category, price, introduced_at (the item table; new
  items cannot be interacted with before ``introduced_at``);
* ``<stem>.links.parquet``: item_id, next_item_id, slot, probability (the planted
  item-to-item transitions; ``probability`` is the chance of following that link given that
  the session follows a link at all).

A user's event is *post-shift* when its timestamp is at or after the shift time; an item is
*of the new taste* for that user when its category is the user's new category.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fastslow.errors import FastslowError

TRUTH_FORMAT = "fastslow-synth-truth/1"
_EVENT_SUFFIXES = (".csv.gz", ".csv", ".parquet", ".pq")


class TruthNotFoundError(FastslowError):
    """The ground-truth sidecar of an events file is missing or unreadable."""

    def __init__(self, events_path: str, sidecar: str, reason: str) -> None:
        self.events_path, self.sidecar, self.reason = str(events_path), str(sidecar), reason
        super().__init__(f"ground truth for {self.events_path}: {self.sidecar} {reason} "
                         "(generate the stream with `fastslow synth`, which writes it next to the events)")


@dataclass(frozen=True)
class Sidecars:
    """Paths of the files written next to an events file."""

    truth: Path
    items: Path
    links: Path


def sidecar_paths(events_path: str | Path) -> Sidecars:
    """Where the sidecars of an events file live.

    >>> sidecar_paths("/data/run1.csv.gz").truth
    PosixPath('/data/run1.truth.json')
    >>> sidecar_paths("run1.parquet").items.name
    'run1.items.parquet'
    """
    path = Path(events_path)
    name = path.name
    for suffix in _EVENT_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = path.with_name(name)
    return Sidecars(truth=stem.with_name(name + ".truth.json"), items=stem.with_name(name + ".items.parquet"),
                    links=stem.with_name(name + ".links.parquet"))


@dataclass(frozen=True)
class Shift:
    """One user's abrupt taste shift: from `time` on, `new_category` is their favourite."""

    user_id: str
    time: float
    """Unix seconds; the user's events with timestamp >= time are post-shift."""
    time_iso: str
    old_categories: tuple[int, ...]
    """The user's favourite categories before the shift, the dominant one first."""
    new_category: int
    """A category the user never interacted with before the shift."""
    pre_events: int
    post_events: int
    """Number of the user's events at or after the shift."""


@dataclass(frozen=True)
class Season:
    """One period of a seasonal stream: events with ``start <= timestamp < end`` follow ``season``."""

    period: int
    season: str
    """The season's letter; periods with the same letter share one catalogue."""
    start: float
    """Unix seconds (the first period starts at the stream start)."""
    end: float
    """Unix seconds (the last period ends just after the last event: sessions may run past the span)."""
    categories: tuple[int, ...]
    """The season's hot categories; different letters have disjoint ones."""


@dataclass(frozen=True)
class SynthTruth:
    """What the generator planted, as `load_truth` returns it.

    Examples
    --------
    >>> t = SynthTruth(params={}, seed=0, counts={}, stats={},
    ...                shifts={"u1": Shift("u1", 100.0, "1970-01-01T00:01:40Z", (0,), 2, 5, 9)},
    ...                item_category={"i1": 2, "i2": 0}, item_introduced_at={"i1": 0.0, "i2": 0.0})
    >>> t.is_new_taste("u1", "i1"), t.is_new_taste("u1", "i2"), t.is_new_taste("u9", "i1")
    (True, False, False)
    >>> sorted(t.category_items(2))
    ['i1']
    """

    params: dict
    seed: int
    counts: dict
    stats: dict
    shifts: dict[str, Shift]
    item_category: dict[str, int]
    item_introduced_at: dict[str, float]
    """Unix seconds from which each item can be interacted with."""
    seasons: tuple[Season, ...] = ()
    """Each period of a seasonal stream (``SynthConfig.seasons``) in time order; empty without seasons."""

    @cached_property
    def _category_sets(self) -> dict[int, frozenset[str]]:
        groups: dict[int, set[str]] = {}
        for item, category in self.item_category.items():
            groups.setdefault(category, set()).add(item)
        return {category: frozenset(items) for category, items in groups.items()}

    def category_items(self, category: int) -> frozenset[str]:
        """All items of a category (whenever introduced)."""
        return self._category_sets.get(category, frozenset())

    def season_items(self, period: int) -> frozenset[str]:
        """The hot catalogue of a period of a seasonal stream: every item of its season's categories."""
        return frozenset().union(*(self.category_items(c) for c in self.seasons[period].categories))

    def is_new_taste(self, user_id: str, item_id: str) -> bool:
        """Whether `item_id` belongs to `user_id`'s new favourite category (False if no shift)."""
        shift = self.shifts.get(user_id)
        return shift is not None and self.item_category.get(item_id) == shift.new_category

    def to_json(self, events_name: str) -> str:
        """The ``.truth.json`` text (items and links live in their own Parquet sidecars)."""
        side = sidecar_paths(events_name)
        doc = {"format": TRUTH_FORMAT, "events_file": Path(events_name).name,
               "items_file": side.items.name, "links_file": side.links.name,
               "seed": self.seed, "params": self.params, "counts": self.counts, "stats": self.stats,
               "shifts": [{"user_id": s.user_id, "time": s.time_iso, "time_unix": s.time,
                           "old_category": s.old_categories[0], "old_categories": list(s.old_categories),
                           "new_category": s.new_category, "pre_events": s.pre_events,
                           "post_events": s.post_events} for s in self.shifts.values()]}
        if self.seasons:
            doc["seasons"] = [dataclasses.asdict(s) | {"categories": list(s.categories)} for s in self.seasons]
        return json.dumps(doc, indent=1) + "\n"


def load_truth(events_path: str | Path) -> SynthTruth:
    """Find and parse the ground truth written next to `events_path`.

    Raises `TruthNotFoundError` when a sidecar is missing or is not a synth truth file.
    """
    side = sidecar_paths(events_path)
    for path in (side.truth, side.items):
        if not path.exists():
            raise TruthNotFoundError(events_path, path, "does not exist")
    try:
        doc = json.loads(side.truth.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TruthNotFoundError(events_path, side.truth, f"is not readable JSON ({err})") from err
    if doc.get("format") != TRUTH_FORMAT:
        raise TruthNotFoundError(events_path, side.truth, f"has format {doc.get('format')!r}, expected {TRUTH_FORMAT!r}")
    items = pq.read_table(side.items, columns=["item_id", "category", "introduced_at"])
    ids = items.column("item_id").to_pylist()
    introduced = items.column("introduced_at").cast(pa.int64()).to_numpy() / 1000.0
    shifts = {s["user_id"]: Shift(user_id=s["user_id"], time=float(s["time_unix"]), time_iso=s["time"],
                                  old_categories=tuple(s["old_categories"]), new_category=int(s["new_category"]),
                                  pre_events=int(s["pre_events"]), post_events=int(s["post_events"]))
              for s in doc["shifts"]}
    seasons = tuple(Season(period=int(s["period"]), season=s["season"], start=float(s["start"]), end=float(s["end"]),
                           categories=tuple(int(c) for c in s["categories"])) for s in doc.get("seasons", ()))
    return SynthTruth(params=doc["params"], seed=int(doc["seed"]), counts=doc["counts"], stats=doc["stats"],
                      shifts=shifts, item_category=dict(zip(ids, items.column("category").to_pylist())),
                      item_introduced_at=dict(zip(ids, introduced.tolist())), seasons=seasons)


def load_links(events_path: str | Path) -> dict[str, tuple[str, ...]]:
    """The planted next items of every item, in slot order (most likely first)."""
    side = sidecar_paths(events_path)
    if not side.links.exists():
        raise TruthNotFoundError(events_path, side.links, "does not exist")
    table = pq.read_table(side.links).sort_by([("item_id", "ascending"), ("slot", "ascending")])
    links: dict[str, list[str]] = {}
    for item, nxt in zip(table.column("item_id").to_pylist(), table.column("next_item_id").to_pylist()):
        links.setdefault(item, []).append(nxt)
    return {item: tuple(nxt) for item, nxt in links.items()}


def iso_seconds(unix_seconds: np.ndarray) -> list[str]:
    """ISO-8601 UTC strings ("...Z") of unix seconds.

    >>> iso_seconds(np.array([1704067200]))
    ['2024-01-01T00:00:00Z']
    """
    text = np.datetime_as_string(np.asarray(unix_seconds, dtype="datetime64[s]"), unit="s")
    return [t + "Z" for t in text.tolist()]
