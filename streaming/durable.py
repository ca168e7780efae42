"""Durable, atomic file writes: a reader sees the old file or the new one, never half of one.

The worker's archive segments and snapshots must survive ``kill -9`` and power loss at any
instant, because offsets are committed only after they are written. `atomic_write` writes to a
temporary file in the same directory, fsyncs it, renames it over the target (atomic on POSIX)
and fsyncs the directory so the rename itself is durable.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "sub" / "state.bin"
>>> atomic_write(target, lambda f: f.write(b"v1"))
>>> target.read_bytes(), sorted(p.name for p in target.parent.iterdir())
(b'v1', ['state.bin'])
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_PREFIX = ".tmp-"
"""Temporary files start with this; readers skip them (a crashed writer may leave one)."""


def fsync_dir(path: Path) -> None:
    """Make the directory entries of ``path`` (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], *, durable: bool = True) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes, atomically.

    Parent directories are created. With ``durable`` (the default) the data and the rename are
    fsynced before this returns; without it the write is still atomic but may be lost on a
    power cut (not on a process crash).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
