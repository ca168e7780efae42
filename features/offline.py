"""The parquet offline store: one dataset folder per feature view, appended to in parts.

Feast's file offline store reads each view's `FileSource` folder as one parquet dataset.
Feast's own offline push (`PushMode.OFFLINE`) rewrites the whole file on every push, which
grows quadratically over a stream, so rows are appended here as new part files instead
(written to a hidden temporary name, then renamed, so a reader never sees half a file).
Small parts are merged as they pile up (every `merge_after` of them become one), so a long
stream leaves a few hundred files, not one per micro-batch; `compact` merges a folder's parts
into one, e.g. before a large training frame.

>>> import tempfile, pandas as pd
>>> log = OfflineLog(tempfile.mkdtemp())
>>> rows = pd.DataFrame({"item_id": ["a"], "event_timestamp": [pd.Timestamp(0, tz="UTC")],
...                      "category": ["shoes"], "price": [9.5]})
>>> log.append("item_attributes", rows).name.startswith("part-")
True
>>> log.append("item_attributes", rows.assign(price=8.0)).name.startswith("part-")
True
>>> len(log._parts("item_attributes")), log.compact("item_attributes")
(2, 2)
>>> len(log._parts("item_attributes"))
1
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from features.schema import OFFLINE_DIR, VIEWS

logger = logging.getLogger(__name__)

_sequence = itertools.count()
#: Reads of a folder that a concurrent merge changed under them, before giving up.
MERGE_RETRIES = 5


def retry_on_merge(read, attempts: int = MERGE_RETRIES):
    """``read()``, again if a part it listed was removed meanwhile by a merge (the merged
    part is already in place, so listing again finds every row).

    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise FileNotFoundError("part-1.parquet")
    ...     return "rows"
    >>> retry_on_merge(flaky), len(calls)
    ('rows', 3)
    """
    for attempt in range(attempts - 1):
        try:
            return read()
        except FileNotFoundError as exc:
            logger.info("an offline part was merged away during a read (%s); reading again", exc)
            time.sleep(0.05 * (attempt + 1))
    return read()   # the last attempt's error reaches the caller


class OfflineLog:
    """Append-only parquet parts under ``<repo_dir>/offline/<view>/``.

    Parameters
    ----------
    repo_dir
        The feature repository directory (`features.repository.apply_repo`).
    merge_after
        Once a view has this many small parts, `append` merges them into one.
    small_part_bytes
        Parts smaller than this count as small.
    """

    def __init__(self, repo_dir: str | Path, merge_after: int = 64,
                 small_part_bytes: int = 4 << 20) -> None:
        self.repo_dir = Path(repo_dir)
        self.merge_after = merge_after
        self.small_part_bytes = small_part_bytes

    def folder(self, view: str) -> Path:
        """The dataset folder of `view` (created if missing)."""
        path = self.repo_dir / OFFLINE_DIR / VIEWS[view].name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def ensure_schemas(self) -> None:
        """Give every view's folder an empty part carrying the view's schema.

        Feast reads each folder as one parquet dataset; the empty part fixes the column types
        and lets historical retrieval run before anything was pushed.
        """
        for view in VIEWS:
            folder = self.folder(view)
            if not any(folder.glob("part-*.parquet")):
                self._write(view, VIEWS[view].arrow_schema().empty_table())

    def append(self, view: str, rows: pd.DataFrame) -> Path | None:
        """Write `rows` (key, ``event_timestamp``, features) as a new part; None if empty."""
        if rows.empty:
            return None
        table = pa.Table.from_pandas(rows, schema=VIEWS[view].arrow_schema(),
                                     preserve_index=False)
        path = self._write(view, table)
        small = [p for p in self._parts(view) if p.stat().st_size < self.small_part_bytes]
        if len(small) >= self.merge_after:
            path = self._merge(view, small)
        return path

    def read(self, view: str, columns: list[str] | None = None) -> pa.Table:
        """Every row of `view` (or just `columns`), all parts together.

        A merge running beside the read may remove a part after it was listed: the folder is
        then listed again (`retry_on_merge`).
        """
        def read_once() -> pa.Table:
            dataset = ds.dataset(self.folder(view), format="parquet", schema=VIEWS[view].arrow_schema())
            return dataset.to_table(columns=columns)

        return retry_on_merge(read_once)

    def compact(self, view: str) -> int:
        """Merge all parts of `view` into one; return the number of rows."""
        parts = self._parts(view)
        if len(parts) > 1:
            self._merge(view, parts)
        return self.read(view).num_rows

    def _parts(self, view: str) -> list[Path]:
        return sorted(self.folder(view).glob("part-*.parquet"))

    def _merge(self, view: str, parts: list[Path]) -> Path:
        """Replace `parts` by one part holding their rows.

        Parts appended meanwhile are left alone; the merged part is in place before the
        parts it replaces are removed, so a reader listing the folder never misses a row (it
        may see a row twice, which a point-in-time join treats as one; a reader that listed
        the folder before the removal and opens a removed part later gets FileNotFoundError
        and should retry).
        """
        schema = VIEWS[view].arrow_schema()
        table = pa.concat_tables(pq.read_table(p, schema=schema) for p in parts)
        merged = self._write(view, table)
        for part in parts:
            part.unlink()
        logger.info("merged %d parts of %s into one (%d rows)", len(parts), view, table.num_rows)
        return merged

    def _write(self, view: str, table: pa.Table) -> Path:
        name = f"part-{time.time_ns()}-{os.getpid()}-{next(_sequence)}.parquet"
        folder = self.folder(view)
        tmp = folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, folder / name)
        return folder / name
