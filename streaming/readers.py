"""Event logs (CSV, CSV.gz, Parquet, JSON Lines) read into the normalized event table.

The format is chosen by extension: ``.csv``, ``.csv.gz``, ``.parquet``/``.pq``, ``.jsonl``/
``.ndjson`` (optionally ``.gz``). A `ColumnMap` says which column holds which field; the
result has the columns of `EVENT_SCHEMA` (``event_id``, ``user_id``, ``item_id``,
``timestamp`` as timestamp[ms, tz=UTC], ``event_type``, ``value``, ``context`` as JSON text),
rows in file order. Rows are validated column-wise with the rules of `streaming.events`.

Bad rows fail the run with `EventLogError` (file, row, reason) unless ``on_error="skip"``,
which drops them and counts them in the `ReadReport` (with the first few row numbers and
reasons). Row numbers are what a person finds in the file:

- CSV: the line number (the header is line 1, the first data row line 2), assuming no line
  breaks inside quoted values. Blank lines are ignored (not errors) but still counted.
- JSON Lines: the line number (first line is 1); blank lines are ignored.
- Parquet: the row's position, counting from 1.

In CSV an empty cell of an optional column (type, value, id, context) means "not given".

Logs without an id column get ids derived from each row's content and from how many
identical rows came before it (see `streaming.event_ids`): repeated identical rows are real
events (two lines of one invoice) and keep distinct ids, and the same file always yields the
same ids, so replaying it twice deduplicates.

Memory stays bounded by the batch size: batches are validated as arrow arrays, never as one
Python object per event. Deriving ids remembers 8 bytes per event.

>>> import tempfile, pathlib
>>> log = pathlib.Path(tempfile.mkdtemp()) / "log.csv"
>>> _ = log.write_text("customer,sku,ts\\nc1,p1,2024-05-01T12:00:00Z\\nc1,,1714564800\\n")
>>> read_events(log, ColumnMap(user_col="customer", item_col="sku", time_col="ts"))
Traceback (most recent call last):
...
fastslow.errors.EventLogError: .../log.csv row 3: item_id: expected a non-empty string (spaces are trimmed), got '' (fix the row, or pass --on-error skip to skip bad rows)
>>> batches = iter_event_batches(log, ColumnMap(user_col="customer", item_col="sku", time_col="ts"), on_error="skip")
>>> table = batches.read_all()
>>> table.column("item_id").to_pylist(), batches.report.skipped, batches.report.skipped_rows[0].row
(['p1'], 1, 3)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from fastslow.errors import EventLogError
from streaming import events as ev
from streaming.event_ids import OccurrenceCounter, content_column, derive_ids
from streaming.log_options import ColumnMap, OnError
from streaming.normalize import EVENT_SCHEMA, REASON_NAIVE_LOG, NormalizedBatch, interactions_to_table, normalize_columns

__all__ = ["EVENT_SCHEMA", "ColumnMap", "EventBatches", "EventFileError", "OnError", "ReadReport",
           "SkippedRow", "interactions_to_table", "iter_event_batches", "read_events"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 250_000
_BYTES_PER_ROW_GUESS = 16  # small CSV blocks: arrow holds several blocks in flight
_FORMATS = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
            ".ndjson": "jsonl", ".jsonl.gz": "jsonl", ".ndjson.gz": "jsonl"}
_BLANK = np.frombuffer(b" \t\r", dtype=np.uint8)
_OPTIONS = {"user_id": "--user-col", "item_id": "--item-col", "timestamp": "--time-col",
            "event_type": "--type-col", "value": "--value-col", "event_id": "--id-col"}


class EventFileError(EventLogError):
    """The log as a whole cannot be read: missing, unknown format, corrupt, a column absent.

    The command line was pointed at something that is not a usable log: a usage error.
    """

    exit_code = 2

    def __init__(self, path: str | Path, reason: str, hint: str) -> None:
        self.path, self.row, self.reason, self.hint = str(path), None, reason, hint
        Exception.__init__(self, f"{path}: {reason} ({hint})")


class SkippedRow(NamedTuple):
    """A bad row that ``on_error="skip"`` dropped: its row number and what was wrong."""

    row: int
    reason: str


@dataclass
class ReadReport:
    """What a read did: rows seen, events kept, rows skipped (the first few with reasons)."""

    path: str
    rows: int = 0
    events: int = 0
    skipped: int = 0
    skipped_rows: list[SkippedRow] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people: counts, then the first skipped rows."""
        text = f"{self.path}: {self.events} events from {self.rows} rows"
        if self.skipped:
            shown = "; ".join(f"row {s.row}: {s.reason}" for s in self.skipped_rows)
            more = "" if len(self.skipped_rows) == self.skipped else f"; and {self.skipped - len(self.skipped_rows)} more"
            text += f", skipped {self.skipped} bad rows ({shown}{more})"
        return text


def log_format(path: str | Path) -> str:
    """``csv``, ``parquet`` or ``jsonl`` from the file name, or `EventFileError`.

    >>> log_format("events.csv.gz"), log_format("x.ndjson")
    ('csv', 'jsonl')
    """
    name = Path(path).name.lower()
    for suffix, kind in sorted(_FORMATS.items(), key=lambda item: -len(item[0])):
        if name.endswith(suffix):
            return kind
    raise EventFileError(path, "has an unknown format", "expected a name ending in " + ", ".join(_FORMATS))


class EventBatches:
    """Normalized event batches of one log, read lazily; ``report`` fills while iterating.

    Iterating yields `pyarrow.Table` batches in `EVENT_SCHEMA` of at most ``batch_rows`` rows
    (empty batches are not yielded). Iterate once; `read_all` collects everything.
    """

    def __init__(self, path: str | Path, columns: ColumnMap | None = None, on_error: OnError | str = OnError.FAIL,
                 *, batch_rows: int = DEFAULT_BATCH_ROWS, now: datetime | None = None,
                 max_future_skew: timedelta = ev.MAX_FUTURE_SKEW, max_reported: int = 20) -> None:
        self.path, self.columns = Path(path), columns or ColumnMap()
        self.on_error, self.batch_rows = OnError(on_error), batch_rows
        self.now, self.max_future_skew, self.max_reported = now, max_future_skew, max_reported
        self.format = log_format(path)
        self.report = ReadReport(str(path))
        if not self.path.is_file():
            raise EventFileError(path, "does not exist or is not a file", "check the path")

    def __iter__(self) -> Iterator[pa.Table]:
        now = self.now or datetime.now(timezone.utc)
        self._now_ms = (now - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)
        counter = OccurrenceCounter()
        reader = {"csv": _read_csv, "parquet": _read_parquet, "jsonl": _read_jsonl}[self.format]
        try:
            for batch in reader(self):
                self._account(batch)
                table = _fill_ids(batch.table, counter)
                for start in range(0, table.num_rows, self.batch_rows):
                    yield table.slice(start, self.batch_rows)
        except (pa.ArrowInvalid, OSError) as exc:
            raise EventFileError(self.path, f"cannot be read as {self.format} ({exc})",
                                 "check that the file is complete and in the format its name says") from None
        if self.report.skipped:
            logger.warning("%s", self.report.summary())

    def read_all(self) -> pa.Table:
        """Every batch in one table (zero rows keep the schema)."""
        return pa.concat_tables([EVENT_SCHEMA.empty_table(), *self])

    def _account(self, batch: NormalizedBatch) -> None:
        bad = len(batch.bad_rows)
        self.report.rows += batch.table.num_rows + bad
        self.report.events += batch.table.num_rows
        if bad and self.on_error is OnError.FAIL:
            row, reason = batch.reasons[0]
            raise EventLogError(str(self.path), row, reason)
        self.report.skipped += bad
        room = self.max_reported - len(self.report.skipped_rows)
        self.report.skipped_rows += [SkippedRow(row, reason) for row, reason in batch.reasons[:room]]

    def _resolve(self, available: Iterable[str]) -> dict[str, str]:
        """Field -> column name, for fields the log has; `EventFileError` when a named one is absent."""
        names, c = list(available), self.columns
        wanted = {"user_id": (c.user_col, True), "item_id": (c.item_col, True), "timestamp": (c.time_col, True),
                  "event_type": (c.type_col or "event_type", c.type_col is not None),
                  "value": (c.value_col or "value", c.value_col is not None),
                  "event_id": (c.id_col or "event_id", c.id_col is not None)}
        wanted |= {f"context.{name}": (name, True) for name in c.context_cols}
        found = {}
        for event_field, (name, required) in wanted.items():
            if name in names:
                found[event_field] = name
            elif required:
                option = _OPTIONS.get(event_field, "--context-col")
                raise EventFileError(self.path, f"has no column {name!r} (it has {', '.join(map(repr, names))})",
                                     f"name the right one with {option}")
        return found

    def _normalize(self, table: pa.Table, mapping: dict[str, str], rows: np.ndarray,
                   earlier_bad: list[tuple[int, str]] = (), empty_is_null: bool = False) -> NormalizedBatch:
        def column(event_field: str) -> pa.Array | None:
            if event_field not in mapping:
                return None
            values = table.column(mapping[event_field]).combine_chunks()
            if empty_is_null and event_field not in ("user_id", "item_id", "timestamp"):
                values = pc.if_else(pc.equal(values, ""), pa.scalar(None, values.type), values)
            return values

        raw = {name: column(name) for name in ev.FIELDS if name != "context"}
        context = {key.removeprefix("context."): column(key) for key in mapping if key.startswith("context.")}
        batch = normalize_columns(raw, rows, now_ms=self._now_ms, max_future_skew=self.max_future_skew,
                                  assume_utc=self.columns.assume_utc, context=context, max_reasons=self.max_reported)
        if earlier_bad:
            batch.bad_rows = np.sort(np.concatenate([batch.bad_rows, [row for row, _ in earlier_bad]]))
            batch.reasons = sorted([*batch.reasons, *earlier_bad])[: self.max_reported]
        return batch



def _fill_ids(table: pa.Table, counter: OccurrenceCounter) -> pa.Table:
    """Derive the ids that are null (rows of a log without ids), in row order."""
    ids = table.column("event_id").combine_chunks()
    missing = pc.is_null(ids)
    if not table.num_rows or not pc.any(missing).as_py():
        return table
    chosen = table.filter(missing)
    timestamp_ms = pc.cast(chosen.column("timestamp"), pa.int64()).to_numpy()
    content = content_column(chosen.column("user_id").combine_chunks(), chosen.column("item_id").combine_chunks(),
                             chosen.column("event_type").combine_chunks(), timestamp_ms,
                             chosen.column("value").to_numpy())
    derived = derive_ids(content, counter)
    positions = np.cumsum(missing.to_numpy(zero_copy_only=False)) - 1
    filled = pc.if_else(missing, pc.take(derived, pa.array(np.maximum(positions, 0))), ids)
    return table.set_column(0, "event_id", filled)


def _read_parquet(batches: EventBatches) -> Iterator[NormalizedBatch]:
    log = pq.ParquetFile(batches.path)
    mapping = batches._resolve(log.schema_arrow.names)
    done = 0
    for record_batch in log.iter_batches(batch_size=batches.batch_rows, columns=list(dict.fromkeys(mapping.values()))):
        rows = np.arange(done + 1, done + record_batch.num_rows + 1)
        done += record_batch.num_rows
        yield batches._normalize(pa.Table.from_batches([record_batch]), mapping, rows)


class _CsvLines:
    """File line numbers for the rows the CSV parser returns, given the lines it dropped.

    Dropped lines (wrong field count, whitespace only) are reported by the parser's handler;
    row k (0-based) then sits on line ``k + 2 + #{dropped lines before it}``. Lines already
    behind the last numbered row are folded into a count, so memory stays per batch.

    >>> lines = _CsvLines()
    >>> lines.drop(3, None); lines.drop(4, "expected 3 fields, got 1")
    >>> lines.number(3).tolist(), lines.errors_before(10)  # header line 1, lines 3 and 4 dropped
    ([2, 5, 6], [(4, 'expected 3 fields, got 1')])
    """

    def __init__(self) -> None:
        self.rows_done, self.folded = 0, 0
        self.dropped: list[int] = []
        self.errors: list[tuple[int, str]] = []

    def drop(self, line: int, reason: str | None) -> None:
        """Record a line the parser skipped; ``reason`` None means blank, not an error."""
        self.dropped.append(line)
        if reason is not None:
            self.errors.append((line, reason))

    def number(self, count: int) -> np.ndarray:
        """Line numbers of the next ``count`` parsed rows."""
        query = np.arange(self.rows_done, self.rows_done + count) + 2
        self.rows_done += count
        dropped = np.sort(np.asarray(self.dropped, dtype=np.int64))
        shifted = dropped - self.folded - np.arange(len(dropped))
        lines = query + self.folded + np.searchsorted(shifted, query, side="right")
        if count:
            behind = dropped < lines[-1]
            self.folded += int(behind.sum())
            self.dropped = dropped[~behind].tolist()
        return lines

    def errors_before(self, line: int) -> list[tuple[int, str]]:
        """Take the recorded bad lines before ``line``."""
        taken = sorted(error for error in self.errors if error[0] < line)
        self.errors = [error for error in self.errors if error[0] >= line]
        return taken


def _read_csv(batches: EventBatches) -> Iterator[NormalizedBatch]:
    path = batches.path
    try:
        header = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 16),
                               parse_options=pcsv.ParseOptions(invalid_row_handler=lambda row: "skip")).schema.names
    except pa.ArrowInvalid as exc:
        raise EventFileError(path, f"has no CSV header line ({exc})", "expected a first line naming the columns") from None
    mapping = batches._resolve(header)
    included = list(dict.fromkeys(mapping.values()))
    lines = _CsvLines()

    def on_invalid(row: pcsv.InvalidRow) -> str:
        reason = f"expected {row.expected_columns} comma-separated fields, got {row.actual_columns}"
        lines.drop(row.number, reason if row.text.strip() else None)
        return "skip"

    block = int(min(max(batches.batch_rows * _BYTES_PER_ROW_GUESS, 1 << 20), 1 << 30))
    reader = pcsv.open_csv(
        path, read_options=pcsv.ReadOptions(block_size=block, use_threads=False),  # threads lose line numbers
        parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid, ignore_empty_lines=False),
        convert_options=pcsv.ConvertOptions(include_columns=included, column_types=dict.fromkeys(included, pa.string())))
    for record_batch in reader:
        table = pa.Table.from_batches([record_batch])
        rows = lines.number(table.num_rows)
        blank = np.ones(table.num_rows, dtype=bool)  # an empty line parses as a row of empty cells
        for name in included:
            blank &= np.asarray(pc.equal(table.column(name), "").to_numpy(zero_copy_only=False), dtype=bool)
        if blank.any():
            table, rows = table.filter(pa.array(~blank)), rows[~blank]
        errors = lines.errors_before(int(rows[-1]) if len(rows) else 0)
        yield batches._normalize(table, mapping, rows, errors, empty_is_null=True)
    if lines.errors:  # bad lines after the last good row
        yield batches._normalize(pa.table({name: pa.array([], pa.string()) for name in included}), mapping,
                                 np.array([], dtype=np.int64), lines.errors_before(np.iinfo(np.int64).max))


def _jsonl_chunks(path: Path, chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
    """(chunk of whole lines, number of its first line)."""
    line = 1
    with pa.input_stream(str(path), compression="detect") as stream:
        carry = b""
        while True:
            data = stream.read(chunk_bytes)
            buffer = carry + data
            cut = buffer.rfind(b"\n") + 1 if data else len(buffer)
            chunk, carry = buffer[:cut], buffer[cut:]
            if chunk:
                yield chunk, line
                line += chunk.count(b"\n")
            if not data:
                return


def _nonblank_lines(chunk: bytes, first_line: int) -> np.ndarray:
    """Line numbers of the chunk's non-blank lines (blank: empty or only spaces, tabs, CR).

    >>> _nonblank_lines(b'{"a":1}\\n\\n  \\n {"b":2}\\n', 10).tolist()
    [10, 13]
    """
    data = np.frombuffer(chunk, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)
    if not len(ends) or ends[-1] != len(data) - 1:
        ends = np.append(ends, len(data))
    starts = np.concatenate([[0], ends[:-1] + 1])
    first = data[np.minimum(starts, len(data) - 1)] if len(data) else np.zeros(0, dtype=np.uint8)
    filled = (ends > starts) & ~np.isin(first, _BLANK)
    for index in np.flatnonzero((ends > starts) & ~filled):  # starts with white space: look closer
        filled[index] = bool(chunk[starts[index]:ends[index]].strip(b" \t\r"))
    return first_line + np.flatnonzero(filled)


def _read_jsonl(batches: EventBatches) -> Iterator[NormalizedBatch]:
    chunk_bytes = int(min(max(batches.batch_rows * _BYTES_PER_ROW_GUESS * 2, 1 << 20), 1 << 30))
    mapping = None
    for chunk, first_line in _jsonl_chunks(batches.path, chunk_bytes):
        rows = _nonblank_lines(chunk, first_line)
        try:
            table = pjson.read_json(pa.BufferReader(chunk), read_options=pjson.ReadOptions(block_size=len(chunk) + 1))
            if table.num_rows != len(rows):
                raise pa.ArrowInvalid("row count differs from line count")
        except pa.ArrowInvalid:
            table = None
        if mapping is None:
            names = table.column_names if table is not None else _json_keys(chunk)
            mapping = batches._resolve(names)  # judged on the first chunk; later ones may lack a column
        if table is not None:
            present = {k: v for k, v in mapping.items() if v in table.column_names}
            yield batches._normalize(table, present, rows)
        else:
            yield _jsonl_line_by_line(batches, chunk, rows, mapping)


def _json_keys(chunk: bytes) -> list[str]:
    keys: dict[str, None] = {}
    for line in chunk.splitlines():
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            keys |= dict.fromkeys(obj)
    return list(keys)


def _jsonl_line_by_line(batches: EventBatches, chunk: bytes, rows: np.ndarray, mapping: dict[str, str]) -> NormalizedBatch:
    """The slow path for a chunk arrow cannot parse as a whole (bad JSON, mixed types)."""
    good, good_rows, derive, bad = [], [], [], []
    lines = [line for line in chunk.split(b"\n") if line.strip(b" \t\r")]
    now = datetime.fromtimestamp(batches._now_ms / 1000, timezone.utc)
    for row, line in zip(rows.tolist(), lines, strict=True):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ev.InvalidEventError([ev.EventProblem("(row)", obj, "expected a JSON object")])
            data = {f: obj.get(col) for f, col in mapping.items() if not f.startswith("context.")}
            data = {f: v for f, v in data.items() if v is not None or f in ("user_id", "item_id", "timestamp")}
            context = {f.removeprefix("context."): obj.get(col) for f, col in mapping.items() if f.startswith("context.")}
            event = ev.validate_event(data | ({"context": context} if context else {}), now=now,
                                      max_future_skew=batches.max_future_skew, assume_utc=batches.columns.assume_utc)
        except (ValueError, RecursionError) as exc:
            bad.append((row, f"(row): expected a JSON object per line ({exc})"))
            continue
        except ev.InvalidEventError as exc:
            bad.append((row, "; ".join(str(p) for p in exc.problems).replace(ev.REASON_NAIVE, REASON_NAIVE_LOG)))
            continue
        good.append(event)
        good_rows.append(row)
        derive.append("event_id" not in data)
    table = interactions_to_table(good)
    table = table.set_column(0, "event_id", pc.if_else(pa.array(derive, pa.bool_()), pa.scalar(None, pa.string()),
                                                       table.column("event_id")))
    return NormalizedBatch(table, np.array(good_rows, dtype=np.int64), np.array([r for r, _ in bad], dtype=np.int64),
                           bad[: batches.max_reported])


def iter_event_batches(path: str | Path, columns: ColumnMap | None = None, on_error: OnError | str = OnError.FAIL,
                       *, batch_rows: int = DEFAULT_BATCH_ROWS, now: datetime | None = None,
                       max_future_skew: timedelta = ev.MAX_FUTURE_SKEW, max_reported: int = 20) -> EventBatches:
    """The log's normalized batches (bounded memory); ``.report`` tells what was skipped."""
    return EventBatches(path, columns, on_error, batch_rows=batch_rows, now=now,
                        max_future_skew=max_future_skew, max_reported=max_reported)


def read_events(path: str | Path, columns: ColumnMap | None = None, on_error: OnError | str = OnError.FAIL,
                *, now: datetime | None = None, max_future_skew: timedelta = ev.MAX_FUTURE_SKEW) -> pa.Table:
    """The whole log as one normalized table (use `iter_event_batches` for the report)."""
    return iter_event_batches(path, columns, on_error, now=now, max_future_skew=max_future_skew).read_all()
