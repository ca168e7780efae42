"""The per-user state a model hands over when a partition (and so its users) changes worker.

Workers split the interactions topic by partition, and a user's events all land on one
partition (`streaming.partitioning.partition_of`). A model that can export, import and forget
the state of a subset of users implements `PartitionedState`; the worker then snapshots each
partition's users separately and moves them with the partition on a rebalance.

Contract
--------
``users()``
    The ids of every user the model keeps per-user state for.
``export_users(user_ids) -> bytes``
    Everything the model keeps *per user* for these users, as bytes; ids it does not know are
    skipped. Does not change the model.
``import_users(blob)``
    Install the users in ``blob`` (from `export_users`, possibly of another process of the
    same model class), replacing whatever the model had for them.
``forget_users(user_ids)``
    Drop every trace of these users' per-user state; unknown ids are ignored.

After ``b.forget_users(ids); b.import_users(a.export_users(ids))`` the users behave in ``b``
as they did in ``a``, as far as per-user state decides. State that is not per user (item
statistics, co-occurrence counts learned from all of a worker's events) is *global*: it is
not part of these calls. The worker snapshots it with the whole model and restores it when
the same worker restarts; on a rebalance it stays with the worker that learned it (the new
owner of a partition does not receive the old owner's global counts), and consolidation,
which reads the archive of all events, is what reconciles it across workers.

A model without these methods still works with the worker: its whole state is snapshotted and
restored on restart, but users do not move on a rebalance (see `streaming.worker`).

>>> import json
>>> class Counts:
...     def __init__(self): self.per_user = {}
...     def users(self): return list(self.per_user)
...     def export_users(self, user_ids):
...         return json.dumps({u: self.per_user[u] for u in user_ids if u in self.per_user}).encode()
...     def import_users(self, blob): self.per_user.update(json.loads(blob))
...     def forget_users(self, user_ids):
...         for u in user_ids: self.per_user.pop(u, None)
>>> a, b = Counts(), Counts()
>>> a.per_user = {"u1": 3, "u2": 1}
>>> b.import_users(a.export_users(["u1", "u9"]))
>>> b.users(), supports_partitioned_state(b), supports_partitioned_state(object())
(['u1'], True, False)
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol, runtime_checkable


@runtime_checkable
class PartitionedState(Protocol):
    """A model whose per-user state can be exported, imported and forgotten by user id."""

    def users(self) -> Iterable[str]:
        """Ids of the users the model keeps per-user state for."""

    def export_users(self, user_ids: Collection[str]) -> bytes:
        """The per-user state of ``user_ids`` (unknown ids skipped), without changing the model."""

    def import_users(self, blob: bytes) -> None:
        """Install users exported by `export_users`, replacing what the model had for them."""

    def forget_users(self, user_ids: Collection[str]) -> None:
        """Drop the per-user state of ``user_ids`` (unknown ids ignored)."""


def supports_partitioned_state(model: object) -> bool:
    """Whether ``model`` implements every method of `PartitionedState`."""
    return isinstance(model, PartitionedState)
