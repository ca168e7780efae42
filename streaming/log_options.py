"""How an event log's columns map onto the event schema, and the command-line options for it.

Import-light on purpose (pydantic and typer only): every command that reads a log
(`fastslow replay`, `fastslow produce`, ...) reuses these option types so the flags, defaults
and help texts are the same everywhere.

Examples
--------
A command declares the options with the aliases and builds a `ColumnMap` from them::

    def replay(events: Path,
               user_col: UserColOption = "user_id", item_col: ItemColOption = "item_id",
               time_col: TimeColOption = "timestamp", type_col: TypeColOption = None,
               value_col: ValueColOption = None, id_col: IdColOption = None,
               context_col: ContextColOption = None, assume_utc: AssumeUtcOption = False,
               on_error: OnErrorOption = OnError.FAIL) -> None:
        columns = column_map(user_col, item_col, time_col, type_col, value_col, id_col,
                             context_col, assume_utc)
        table = read_events(events, columns, on_error=on_error)

>>> column_map("customer", "sku", "ts", None, "qty", None, ["device"], False)
ColumnMap(user_col='customer', item_col='sku', time_col='ts', type_col=None, value_col='qty', id_col=None, context_cols=('device',), assume_utc=False)
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from fastslow.errors import ConfigError

MAX_CONTEXT_COLUMNS = 32  # equals streaming.events.MAX_CONTEXT_KEYS (kept import-light here)
MAX_CONTEXT_COLUMN_NAME = 64  # equals streaming.events.MAX_CONTEXT_KEY_LENGTH


class OnError(str, Enum):
    """What a reader does with a bad row: fail the run (default) or skip it and report it."""

    FAIL = "fail"
    SKIP = "skip"


class ColumnMap(BaseModel):
    """Which log column holds each event field.

    ``type_col``, ``value_col`` and ``id_col`` left as None mean: use the column named
    ``event_type`` / ``value`` / ``event_id`` when the log has one, else the default (click,
    1.0, an id derived from the content). A column named explicitly must exist.
    ``context_cols`` become the keys of the event's context. ``assume_utc`` reads date-times
    without a UTC offset as UTC (they are rejected otherwise).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    type_col: str | None = None
    value_col: str | None = None
    id_col: str | None = None
    context_cols: tuple[str, ...] = ()
    assume_utc: bool = False

    @field_validator("user_col", "item_col", "time_col", "type_col", "value_col", "id_col")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("expected a column name, got an empty string")
        return value

    @field_validator("context_cols")
    @classmethod
    def _context(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_CONTEXT_COLUMNS:
            raise ValueError(f"expected at most {MAX_CONTEXT_COLUMNS} context columns, got {len(value)}")
        if len(set(value)) != len(value):
            raise ValueError(f"expected each context column once, got {list(value)}")
        for name in value:
            if not name or len(name) > MAX_CONTEXT_COLUMN_NAME:
                raise ValueError(f"expected context column names of 1 to {MAX_CONTEXT_COLUMN_NAME} characters, got {name!r}")
        return value


UserColOption = Annotated[str, typer.Option("--user-col", help="Log column holding the user id.")]
ItemColOption = Annotated[str, typer.Option("--item-col", help="Log column holding the item id.")]
TimeColOption = Annotated[str, typer.Option(
    "--time-col", help="Log column holding the time: unix s, unix ms or ISO-8601 with offset.")]
TypeColOption = Annotated[Optional[str], typer.Option(  # noqa: UP045 (typer needs Optional)
    "--type-col", help="Log column holding the event type [default: event_type if present, else click].")]
ValueColOption = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--value-col", help="Log column holding the value [default: value if present, else 1.0].")]
IdColOption = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--id-col", help="Log column holding the event id [default: event_id if present, else derived].")]
ContextColOption = Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
    "--context-col", help="Log column to carry as event context (repeatable).")]
AssumeUtcOption = Annotated[bool, typer.Option(
    "--assume-utc", help="Read date-times without a UTC offset as UTC instead of rejecting them.")]
OnErrorOption = Annotated[OnError, typer.Option(
    "--on-error", help="fail: stop at the first bad row; skip: skip bad rows and report them.")]


def column_map(user_col: str = "user_id", item_col: str = "item_id", time_col: str = "timestamp",
               type_col: str | None = None, value_col: str | None = None, id_col: str | None = None,
               context_col: list[str] | None = None, assume_utc: bool = False) -> ColumnMap:
    """A `ColumnMap` from the option values, raising `ConfigError` naming the bad option."""
    try:
        return ColumnMap(user_col=user_col, item_col=item_col, time_col=time_col, type_col=type_col,
                         value_col=value_col, id_col=id_col, context_cols=tuple(context_col or ()),
                         assume_utc=assume_utc)
    except ValidationError as exc:
        err = exc.errors()[0]
        option = "--" + str(err["loc"][0]).replace("_cols", "_col").replace("_", "-")
        raise ConfigError(option, err["input"], err["msg"].removeprefix("Value error, expected ")) from None
