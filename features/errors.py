"""Errors the feature store raises; all derive from `fastslow.errors.FastslowError`."""

from __future__ import annotations

from collections.abc import Sequence

from fastslow.errors import FastslowError


class FeatureInputError(FastslowError):
    """A table handed to the feature store lacks columns it needs.

    >>> str(FeatureInputError("events", ["item_id"], ["user_id", "item_id", "timestamp"]))
    "events lacks columns ['item_id']: expected at least ['user_id', 'item_id', 'timestamp'] (streaming.readers.read_events produces such a table)"
    """

    def __init__(self, what: str, missing: Sequence[str], expected: Sequence[str]) -> None:
        self.what, self.missing, self.expected = what, list(missing), list(expected)
        super().__init__(f"{what} lacks columns {self.missing}: expected at least "
                         f"{self.expected} (streaming.readers.read_events produces such a table)")


class TrainingFrameError(FastslowError):
    """Feast returned a historical join that would lose or duplicate training rows.

    >>> str(TrainingFrameError("user_stream", 3, "rows have feature values at or before their time"))
    'point-in-time join of user_stream lost or duplicated 3 entity rows: rows have feature values at or before their time (this is a bug in the join, not in the data; report it with the Feast version)'
    """

    def __init__(self, view: str, rows: int, reason: str) -> None:
        self.view, self.rows, self.reason = view, rows, reason
        super().__init__(f"point-in-time join of {view} lost or duplicated {rows} entity rows: "
                         f"{reason} (this is a bug in the join, not in the data; report it "
                         "with the Feast version)")
