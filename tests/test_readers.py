"""Event log readers: every format maps columns into the normalized table, bad rows are
named by file and row, skipping reports them, and repeated rows keep distinct ids."""

from __future__ import annotations

import collections
import gzip
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from fastslow.errors import ConfigError, EventLogError
from streaming import events as ev
from streaming.event_ids import OccurrenceCounter
from streaming.log_options import (AssumeUtcOption, ContextColOption, IdColOption, ItemColOption, OnError,
                                   OnErrorOption, TimeColOption, TypeColOption, UserColOption, ValueColOption,
                                   column_map)
from streaming.normalize import normalize_columns
from streaming.readers import EVENT_SCHEMA, ColumnMap, EventFileError, iter_event_batches, read_events

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)
NOW_MS = 1717200000000
NOON_MS = 1714564800000  # 2024-05-01T12:00:00Z
MAPPING = ColumnMap(user_col="customer", item_col="sku", time_col="ts", type_col="kind", value_col="qty",
                    context_cols=("device",))
HEADER = ["customer", "sku", "ts", "kind", "qty", "device"]
ROWS = [  # as text, the way a CSV holds them
    ["c1", "p1", "2024-05-01T12:00:00Z", "purchase", "2", "ios"],
    ["c2", "p2", "1714564800123", "View", "1.5", 'say "hi"\\'],
    ["c1", "p3", "2024-05-01T14:00:00.5+02:00", "cart", "3", ""],
]
# Expected, by hand: ms since the epoch, types lower-cased, values as floats, context as JSON.
EXPECTED = [
    ("c1", "p1", NOON_MS, "purchase", 2.0, '{"device":"ios"}'),
    ("c2", "p2", NOON_MS + 123, "view", 1.5, '{"device":"say \\"hi\\"\\\\"}'),
    ("c1", "p3", NOON_MS + 500, "cart", 3.0, '{"device":null}'),
]


def _csv_text(header, rows) -> str:
    def cell(value: str) -> str:
        return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"') else value
    return "\n".join(",".join(cell(v) for v in row) for row in [header, *rows]) + "\n"


def write_log(directory: Path, kind: str, header=HEADER, rows=ROWS) -> Path:
    """The same log in any format; empty cells become nulls outside CSV."""
    path = directory / f"log.{kind}"
    records = [{k: (v if v != "" else None) for k, v in zip(header, row, strict=True)} for row in rows]
    if kind == "csv":
        path.write_text(_csv_text(header, rows))
    elif kind == "csv.gz":
        path.write_bytes(gzip.compress(_csv_text(header, rows).encode()))
    elif kind == "parquet":
        pq.write_table(pa.Table.from_pylist(records, schema=pa.schema([(h, pa.string()) for h in header])), path)
    elif kind in ("jsonl", "ndjson", "jsonl.gz"):
        text = "".join(json.dumps(r) + "\n" for r in records)
        path.write_bytes(gzip.compress(text.encode()) if kind.endswith(".gz") else text.encode())
    return path


def as_tuples(table: pa.Table) -> list[tuple]:
    ms = table.column("timestamp").cast(pa.int64()).to_pylist()
    return [(r["user_id"], r["item_id"], t, r["event_type"], r["value"], r["context"])
            for r, t in zip(table.to_pylist(), ms, strict=True)]


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "parquet", "jsonl", "ndjson", "jsonl.gz"])
def test_each_format_maps_columns_into_the_normalized_table(tmp_path, kind):
    table = read_events(write_log(tmp_path, kind), MAPPING, now=NOW)
    assert table.schema == EVENT_SCHEMA
    assert as_tuples(table) == EXPECTED
    assert table.column("event_id").to_pylist() == [
        ev.derive_event_id(u, i, t, k, v) for u, i, t, k, v, _ in EXPECTED]


def test_defaults_fill_missing_optional_columns(tmp_path):
    path = write_log(tmp_path, "csv", ["user_id", "item_id", "timestamp"], [["u", "i", "1714564800"]])
    (row,) = read_events(path, now=NOW).to_pylist()
    assert (row["event_type"], row["value"], row["context"]) == ("click", 1.0, None)
    assert row["event_id"] == ev.derive_event_id("u", "i", NOON_MS, "click", 1.0)


def test_empty_optional_csv_cells_mean_not_given(tmp_path):
    path = write_log(tmp_path, "csv", ["user_id", "item_id", "timestamp", "event_type", "value", "event_id"],
                     [["u", "i", "1714564800", "", "", ""], ["u", "i", "1714564800", "view", "2", "e-1"]])
    table = read_events(path, now=NOW)
    assert table.column("event_type").to_pylist() == ["click", "view"]
    assert table.column("value").to_pylist() == [1.0, 2.0]
    assert table.column("event_id").to_pylist() == [ev.derive_event_id("u", "i", NOON_MS, "click", 1.0), "e-1"]


BAD_ROW_CASES = [  # (kind, file content after the header, user-visible row number of the bad row)
    ("csv", "u,i,1714564800\n\nu,,1714564800\n", 4),  # header line 1, blank line 3 still counted
    ("csv", "u,i,1714564800\nu,i\n", 3),  # wrong number of fields
    ("jsonl", '{"user_id":"u","item_id":"i","timestamp":1714564800}\n\n{"user_id":"u","item_id":"","timestamp":1}\n', 3),
    ("jsonl", '{"user_id":"u","item_id":"i","timestamp":1714564800}\n{not json\n', 2),
]


@pytest.mark.parametrize(("kind", "body", "row"), BAD_ROW_CASES)
def test_bad_row_fails_the_run_naming_file_and_row(tmp_path, kind, body, row):
    path = tmp_path / f"log.{kind}"
    path.write_text(("user_id,item_id,timestamp\n" if kind == "csv" else "") + body)
    with pytest.raises(EventLogError) as caught:
        read_events(path, now=NOW)
    assert (caught.value.path, caught.value.row) == (str(path), row)
    assert f"{path} row {row}: " in str(caught.value)


def test_bad_parquet_row_is_counted_from_one(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["u", "u", "u"], "item_id": ["i", "i", "i"],
                             "timestamp": [1714564800, 1714564800, -5]}), path)
    with pytest.raises(EventLogError) as caught:
        read_events(path, now=NOW)
    assert caught.value.row == 3
    assert caught.value.reason == f"timestamp: {ev.REASON_BEFORE_EPOCH}, got -5"


def test_skip_reports_how_many_and_which(tmp_path):
    rows = [["u", "i", "1714564800", "click", "1"], ["", "i", "1714564800", "click", "1"],
            ["u", "i", "1714564800", "like", "x"], ["u", "i", "2099-01-01T00:00:00Z", "click", "1"],
            ["u", "i2", "1714564800", "view", "1"]]
    path = write_log(tmp_path, "csv", ["user_id", "item_id", "timestamp", "event_type", "value"], rows)
    batches = iter_event_batches(path, on_error="skip", now=NOW, max_reported=2)
    table = batches.read_all()
    assert table.column("item_id").to_pylist() == ["i", "i2"]
    report = batches.report
    assert (report.rows, report.events, report.skipped) == (5, 2, 3)
    assert [s.row for s in report.skipped_rows] == [3, 4]  # the first two only
    assert report.skipped_rows[0].reason == f"user_id: {ev.REASON_EMPTY}, got ''"
    assert report.skipped_rows[1].reason == (f"event_type: {ev.REASON_EVENT_TYPE}, got 'like'; "
                                             f"value: {ev.REASON_VALUE}, got 'x'")
    assert "skipped 3 bad rows" in report.summary() and "and 1 more" in report.summary()


def test_repeated_identical_rows_get_distinct_stable_ids(tmp_path):
    row = ["c1", "p1", "2024-05-01T12:00:00Z", "purchase", "2", "ios"]
    path = write_log(tmp_path, "csv", rows=[row, ROWS[1], row, row])
    ids = read_events(path, MAPPING, now=NOW).column("event_id").to_pylist()
    first = ev.derive_event_id("c1", "p1", NOON_MS, "purchase", 2.0)
    assert ids[0] == first
    assert ids[2] == ev.derive_event_id("c1", "p1", NOON_MS, "purchase", 2.0, occurrence=1)
    assert ids[3] == ev.derive_event_id("c1", "p1", NOON_MS, "purchase", 2.0, occurrence=2)
    assert len(set(ids)) == 4
    small = [t.column("event_id").to_pylist() for t in iter_event_batches(path, MAPPING, now=NOW, batch_rows=1)]
    assert [i for batch in small for i in batch] == ids  # repeats are counted across batches
    assert read_events(write_log(tmp_path, "parquet", rows=[row, ROWS[1], row, row]), MAPPING,
                       now=NOW).column("event_id").to_pylist() == ids


def test_batches_respect_batch_rows(tmp_path):
    rows = [[f"u{n}", "i", str(1714564800 + n)] for n in range(10)]
    path = write_log(tmp_path, "parquet", ["user_id", "item_id", "timestamp"], rows)
    sizes = [t.num_rows for t in iter_event_batches(path, now=NOW, batch_rows=4)]
    assert sizes == [4, 4, 2]


def test_missing_or_unknown_columns_and_files_are_refused(tmp_path):
    path = write_log(tmp_path, "csv")
    with pytest.raises(EventFileError, match="has no column 'user_id'.*--user-col"):
        read_events(path, now=NOW)
    with pytest.raises(EventFileError, match="has no column 'type'.*--type-col"):
        read_events(path, MAPPING.model_copy(update={"type_col": "type"}), now=NOW)
    with pytest.raises(EventFileError, match="unknown format"):
        read_events(tmp_path / "log.txt")
    with pytest.raises(EventFileError, match="does not exist"):
        read_events(tmp_path / "absent.csv")


def test_header_only_log_gives_an_empty_table(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n")
    assert read_events(path).schema == EVENT_SCHEMA and read_events(path).num_rows == 0


def test_parquet_typed_columns(tmp_path):
    path = tmp_path / "log.parquet"
    aware = pa.array([NOON_MS * 1_000_000 + 999_999], pa.timestamp("ns", tz="Europe/Paris"))
    pq.write_table(pa.table({"user_id": [7], "item_id": pa.array(["i"]).dictionary_encode(), "timestamp": aware,
                             "value": pa.array([2], pa.int32())}), path)
    (row,) = as_tuples(read_events(path, now=NOW))
    assert row == ("7", "i", NOON_MS, "click", 2.0, None)  # ns truncated to ms


def test_naive_times_are_bad_rows_unless_assume_utc(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"],
                             "timestamp": pa.array([datetime(2024, 5, 1, 12)], pa.timestamp("us"))}), path)
    with pytest.raises(EventLogError, match="--assume-utc"):
        read_events(path, now=NOW)
    assert read_events(path, ColumnMap(assume_utc=True), now=NOW).column("timestamp").cast(pa.int64())[0].as_py() == NOON_MS


def test_jsonl_with_mixed_types_matches_the_uniform_log(tmp_path):
    lines = [{"user_id": 7, "item_id": "i", "timestamp": 1714564800, "value": "2", "device": "ios"},
             {"user_id": "u8", "item_id": "i", "timestamp": "2024-05-01T12:00:00Z", "value": 1, "device": 3}]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    table = read_events(path, ColumnMap(context_cols=("device",)), now=NOW)
    assert as_tuples(table) == [("7", "i", NOON_MS, "click", 2.0, '{"device":"ios"}'),
                                ("u8", "i", NOON_MS, "click", 1.0, '{"device":3}')]
    assert table.column("event_id")[0].as_py() == ev.derive_event_id("7", "i", NOON_MS, "click", 2.0)


CELL_CASES = {  # field -> raw text cells, each judged by the column rules and by Interaction
    "user_id": ["u", " u ", "", "  ", "a\tb", "x" * 256, "x" * 257, "é\u0085"],
    "timestamp": ["1714564800", "1714564800123", "1714564800.1236", "+5", "-1", "1e11", "100000000001",
                  "2024-05-01T12:00:00Z", "2024-05-01 12:00:00.123456789+01:00", "2024-05-01T12:00+0130",
                  "2024-05-01T12:00:00", "2024-02-30T00:00:00Z", "2300-01-01T00:00:00Z", "1969-12-31T23:59:59Z",
                  "2024-06-02T00:00:00.001Z", "2024-06-02T00:00:00Z", "2024-05-01", "soon", "", "nan", "inf"],
    "event_type": ["click", " VIEW ", "Rating", "like", ""],
    "value": ["1", " -2.5 ", "1e3", ".5", "5.", "+1", "-0", "1e400", "nan", "inf", "abc", "", "0x10", "1_000"],
}


@pytest.mark.parametrize("field", list(CELL_CASES))
def test_column_rules_agree_with_the_interaction_rules(field):
    cells = CELL_CASES[field]
    base = {"user_id": "u", "item_id": "i", "timestamp": "1714564800", "event_type": "click", "value": "1"}
    raw = {name: pa.array([cell if name == field else value for cell in cells]) for name, value in base.items()}
    batch = normalize_columns(raw, np.arange(len(cells)), now_ms=NOW_MS, max_reasons=len(cells))
    column_verdict = dict.fromkeys(range(len(cells)), "ok") | dict(batch.reasons)
    for row, cell in enumerate(cells):
        try:
            event = validate_event_at_now(base | {field: cell})
            verdict = "ok"
        except ev.InvalidEventError as error:
            verdict = "; ".join(map(str, error.problems))
        assert column_verdict[row].replace(" (pass --assume-utc to read such times as UTC)", "") == verdict, cell
        if verdict == "ok":
            good = batch.table.slice(int(np.searchsorted(batch.rows, row)), 1).to_pylist()[0]
            assert (good["user_id"], good["event_type"], good["value"]) == (event.user_id, event.event_type, event.value)
            assert good["timestamp"] == event.timestamp


def validate_event_at_now(data):
    return ev.validate_event(data, now=NOW)


def test_occurrence_counter_matches_a_plain_count():
    rng = np.random.default_rng(3)
    seen: collections.Counter = collections.Counter()
    counter = OccurrenceCounter()
    for size in (50, 1, 200, 7, 120, 0, 300):
        keys = rng.integers(0, 60, size).astype(np.uint64)
        expected = []
        for key in keys.tolist():
            expected.append(seen[key])
            seen[key] += 1
        assert counter.count(keys).tolist() == expected
    assert len(counter) == sum(seen.values())


def test_column_map_options_reject_bad_values():
    with pytest.raises(ConfigError, match="--user-col"):
        column_map(user_col=" ")
    with pytest.raises(ConfigError, match="--context-col"):
        column_map(context_col=["a", "a"])


def test_option_aliases_build_a_column_map_in_a_command():
    app = typer.Typer()
    seen = {}

    @app.command()
    def replay(user_col: UserColOption = "user_id", item_col: ItemColOption = "item_id",
               time_col: TimeColOption = "timestamp", type_col: TypeColOption = None,
               value_col: ValueColOption = None, id_col: IdColOption = None, context_col: ContextColOption = None,
               assume_utc: AssumeUtcOption = False, on_error: OnErrorOption = OnError.FAIL) -> None:
        seen["columns"] = column_map(user_col, item_col, time_col, type_col, value_col, id_col, context_col, assume_utc)
        seen["on_error"] = on_error

    result = CliRunner().invoke(app, ["--user-col", "customer", "--value-col", "qty", "--context-col", "a",
                                      "--context-col", "b", "--assume-utc", "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert seen["columns"] == ColumnMap(user_col="customer", value_col="qty", context_cols=("a", "b"), assume_utc=True)
    assert seen["on_error"] is OnError.SKIP


def test_csv_line_numbers_stay_exact_across_blocks(tmp_path):
    # ~3 MB, so the reader parses several 1 MiB blocks; bad, blank and whitespace lines everywhere.
    lines, expected_bad, good = ["user_id,item_id,timestamp"], [], 0
    for i in range(150_000):
        line_number = len(lines) + 1
        if i % 7919 == 0:
            lines.append("bad,row")
            expected_bad.append((line_number, "expected 3 comma-separated fields, got 2"))
        elif i % 5003 == 0:
            lines.append("")
        elif i % 6007 == 0:
            lines.append("   ")
        elif i % 4001 == 0:
            lines.append(f"u{i},,1714564800")
            expected_bad.append((line_number, f"item_id: {ev.REASON_EMPTY}, got ''"))
        else:
            lines.append(f"u{i},item-{i % 97},1714564800")
            good += 1
    lines.append("bad,after,the,last")  # after the last good row
    expected_bad.append((len(lines), "expected 3 comma-separated fields, got 4"))
    path = tmp_path / "log.csv"
    path.write_text("\n".join(lines) + "\n")
    batches = iter_event_batches(path, on_error="skip", now=NOW, batch_rows=1000, max_reported=1000)
    sizes = [t.num_rows for t in batches]
    assert len(sizes) > 3 and sum(sizes) == good
    assert [tuple(s) for s in batches.report.skipped_rows] == expected_bad
    assert (batches.report.rows, batches.report.skipped) == (good + len(expected_bad), len(expected_bad))
    with pytest.raises(EventLogError) as caught:
        read_events(path, now=NOW)
    assert caught.value.row == 2  # the first line after the header is "bad,row"


def test_jsonl_line_numbers_stay_exact_across_chunks(tmp_path):
    lines, expected_bad, good = [], [], 0
    for i in range(40_000):
        if i % 9001 == 0:
            lines.append("{broken")  # sends its chunk down the line-by-line path
            expected_bad.append(len(lines))
        elif i % 3001 == 0:
            lines.append("  ")
        elif i % 4001 == 0:
            lines.append(json.dumps({"user_id": f"u{i}", "item_id": "i", "timestamp": "2024-05-01T12:00:00"}))
            expected_bad.append(len(lines))
        else:
            lines.append(json.dumps({"user_id": f"u{i}", "item_id": f"item-{i % 97}", "timestamp": 1714564800 + i}))
            good += 1
    path = tmp_path / "log.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    batches = iter_event_batches(path, on_error="skip", now=NOW, batch_rows=1000, max_reported=1000)
    table = batches.read_all()
    assert table.num_rows == good
    assert [s.row for s in batches.report.skipped_rows] == expected_bad
    assert "this one has none (pass --assume-utc" in batches.report.skipped_rows[1].reason
    assert table.column("timestamp").cast(pa.int64())[-1].as_py() == (1714564800 + 39_999) * 1000


def test_import_light_option_limits_equal_the_schema_limits():
    from streaming import log_options
    assert (log_options.MAX_CONTEXT_COLUMNS, log_options.MAX_CONTEXT_COLUMN_NAME) == (
        ev.MAX_CONTEXT_KEYS, ev.MAX_CONTEXT_KEY_LENGTH)
