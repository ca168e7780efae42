"""A bounded window of recently applied event ids, so a re-delivered event is applied once.

Kafka delivers at least once: a producer retry, a replayed log or a second `fastslow produce`
of the same file sends an event again with the same ``event_id``. The worker keeps the last
``size`` ids it applied per partition (an event's duplicates carry the same user key, so they
land on the same partition) and skips ids it still remembers. The window is part of the
worker's snapshots, so it survives restarts and moves with its partition.

>>> window = DedupWindow(size=2)
>>> [window.add(e) for e in ("a", "b", "a", "c", "a")]  # True: new; False: a duplicate
[True, True, False, True, True]
>>> window.ids()  # "a" had left the window when it came back the third time
['c', 'a']
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from fastslow.errors import ConfigError


class DedupWindow:
    """The last ``size`` distinct event ids added (oldest evicted first).

    Parameters
    ----------
    size
        How many ids to remember (>= 1); about 100 bytes of memory each.
    ids
        Ids to start with, oldest first (e.g. from a snapshot); only the last ``size`` are kept.
    """

    def __init__(self, size: int, ids: Iterable[str] = ()) -> None:
        if size < 1:
            raise ConfigError("dedup_window", size, "an integer >= 1")
        self.size = size
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        for event_id in ids:
            self.add(event_id)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> bool:
        """Remember ``event_id``; return False if it was already in the window (a duplicate)."""
        if event_id in self._ids:
            return False
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.size:
            self._ids.discard(self._order.popleft())
        return True

    def ids(self) -> list[str]:
        """The remembered ids, oldest first (what a snapshot stores)."""
        return list(self._order)
