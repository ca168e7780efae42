"""How fast a policy catches a user's new taste, measured on a synthetic stream's ground truth.

For every user whose taste shifts after the warm-up, count the user's post-shift events the
policy had learned when an item of the new taste first reached that user's top-k. A user who
never gets there counts as the number of post-shift events they had, and is counted in
`never`.
"""

from __future__ import annotations

import numpy as np

from evaluation.stream import EventStream
from evaluation.synth_truth import SynthTruth


class AdaptationTracker:
    """A replay observer that records, per shifted user, events-until-adapted.

    >>> from evaluation.synth_truth import Shift
    >>> class T:  # the two things the tracker reads from a SynthTruth
    ...     shifts = {"u": Shift("u", 10.0, "", (0,), 1, 5, 3)}
    ...     def is_new_taste(self, user, item): return item.startswith("new")
    >>> import numpy as np
    >>> stream = EventStream(np.array([0, 0, 0]), np.array(["u"], dtype=object), np.array([0, 0, 0]),
    ...                      np.array(["x"], dtype=object), np.array([10.0, 11.0, 12.0]),
    ...                      np.zeros(3, int), np.array(["click"], dtype=object), np.ones(3))
    >>> tracker = AdaptationTracker(T(), stream, first_evaluated=0)
    >>> for n, top in enumerate([["old"], ["old"], ["new1", "old"]]):
    ...     tracker(n, top)
    >>> tracker.summary()
    {'adapt_median': 2.0, 'adapt_never': 0, 'adapt_users': 1}
    """

    def __init__(self, truth: SynthTruth, stream: EventStream, first_evaluated: int) -> None:
        self.truth = truth
        self.stream = stream
        start = stream.timestamps[first_evaluated] if first_evaluated < len(stream) else np.inf
        # users whose shift happens inside the evaluated part of the stream
        self._shift_time = {u: s.time for u, s in truth.shifts.items() if s.time >= start}
        self._post_events: dict[str, int] = {}
        self._adapted: dict[str, int] = {}

    def __call__(self, n_event: int, top: list[str]) -> None:
        user = self.stream.user(n_event)
        shift_time = self._shift_time.get(user)
        if shift_time is None or self.stream.timestamps[n_event] < shift_time:
            return
        seen = self._post_events.get(user, 0)
        if user not in self._adapted and any(self.truth.is_new_taste(user, item) for item in top):
            self._adapted[user] = seen
        self._post_events[user] = seen + 1

    def summary(self) -> dict:
        """adapt_median, adapt_never and how many shifted users were measured."""
        values, never = [], 0
        for user, total in self._post_events.items():
            if user in self._adapted:
                values.append(self._adapted[user])
            else:
                values.append(total)
                never += 1
        median = float(np.median(values)) if values else None
        return {"adapt_median": median, "adapt_never": never, "adapt_users": len(values)}
