"""What deleting a user means to a serving process: tombstones, and what the model held.

`DeletedUsers` is the set of deleted user ids, kept in ``<data_dir>/deleted_users.txt``
(`consolidation.sampling.record_deleted_user`), the file consolidation reads to leave those
users out of every later replay sample. An id stays deleted: the API refuses new events for
it, and the runtime forgets the user again whenever the worker applies one of their events
that was already on its way (see `serving.runtime`).

`model_footprint` counts what a model holds for one user before it forgets them, for the
``DELETE /users/{id}`` answer.

>>> import tempfile
>>> deleted = DeletedUsers(Path(tempfile.mkdtemp()) / "deleted_users.txt")
>>> deleted.add("u1"), deleted.add("u1"), "u1" in deleted, deleted.among({"u1", "u2"})
(True, False, True, {'u1'})
>>> DeletedUsers(deleted.path).among({"u1"})   # durable: a restarted process still knows
{'u1'}
"""

from __future__ import annotations

import pickle
from collections.abc import Set
from pathlib import Path
from typing import Any

from consolidation.sampling import read_deleted_users, record_deleted_user

FILE_NAME = "deleted_users.txt"


class DeletedUsers:
    """Deleted user ids, loaded from ``path`` and appended to it (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._ids = read_deleted_users(self.path)

    def add(self, user_id: str) -> bool:
        """Record the deletion durably; False if the id was deleted already."""
        if user_id in self._ids:
            return False
        record_deleted_user(self.path, user_id)
        self._ids.add(user_id)
        return True

    def among(self, user_ids: Set[str]) -> set[str]:
        """The deleted ones among ``user_ids``."""
        return set(user_ids) & self._ids

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._ids

    def __iter__(self):
        return iter(sorted(self._ids))


def model_footprint(model: Any, user_id: str) -> dict[str, int]:
    """What the model holds for the user: fast state (0/1), recent items and memory entries.

    Read through ``export_users`` (memory entries of a user whose fast state already expired
    are not counted there, though ``forget_users`` removes them too).
    """
    exported = pickle.loads(model.export_users([user_id])).get(user_id)
    if exported is None:
        return {"fast_state": 0, "recent_items": 0, "memory_entries": 0}
    return {"fast_state": 1, "recent_items": len(exported["recent"]),
            "memory_entries": len(exported["memory"]["items"])}
