"""Per-user fast weights: a small vector per user, learned from each interaction as it happens.

The user's score for item j is (slow user vector + fast vector) . v_j + b_j, where v_j, b_j
are the slow model's frozen item vectors and biases. Each interaction takes a few BPR
gradient steps on the fast vector only (the positive item against sampled negatives), so the
next recommendation already reflects it. Between interactions the fast vector decays toward
zero with a half-life in stream time: what the slow model absorbs at consolidation does not
linger twice.

State is bounded: users idle for longer than `ttl` expire, and past `max_users` the least
recently active user is evicted. Per user the state is the fast vector (4*dim bytes), its
last update time, an event count and the last `history` item rows (8 bytes each) — about
0.9 KB at dim=64, history=50 including Python object overhead (`bytes_per_user` measures it).
"""

from __future__ import annotations

import math
import sys
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.kernels import bpr_steps


@dataclass
class UserState:
    """One user's fast state."""

    vec: np.ndarray
    """Fast vector (float32, dim), as of `updated`."""
    updated: float
    """Stream time (unix seconds) of the user's last event."""
    events: int
    """Events learned since the state was created (or last rebased)."""
    recent: array
    """The user's last item rows, oldest first."""


class FastWeights:
    """Per-user fast vectors with decay, expiry and a user cap.

    Parameters
    ----------
    dim
        Size of the vectors (the slow model's embedding size).
    lr, steps, l2
        BPR step size, steps per event and L2 pull toward zero per step.
    half_life
        Seconds of stream time after which a fast vector has decayed to half.
    history
        How many recent item rows to keep per user.
    ttl
        Seconds of stream time after which an idle user's state expires.
    max_users
        Users kept at most; the least recently active is evicted beyond it.

    Examples
    --------
    >>> fw = FastWeights(dim=2, lr=0.5, steps=1, half_life=10.0)
    >>> pos, negs = np.array([1.0, 0.0]), np.array([[0.0, 1.0]])
    >>> fw.remember("u", 7, timestamp=100.0)
    >>> fw.learn_one("u", 100.0, np.zeros(2), pos, 0.0, negs, np.zeros(1))
    >>> fw.vector("u", 100.0).round(3).tolist()     # moved toward pos, away from the negative
    [0.25, -0.25]
    >>> fw.vector("u", 110.0).round(3).tolist()     # one half-life later
    [0.125, -0.125]
    >>> list(fw.get("u").recent), fw.get("u").events
    ([7], 1)
    """

    def __init__(self, dim: int = 64, lr: float = 0.05, steps: int = 2, l2: float = 0.01,
                 half_life: float = 7 * 86400.0, history: int = 50, ttl: float = 90 * 86400.0,
                 max_users: int = 1_000_000) -> None:
        self.dim = dim
        self.lr = lr
        self.steps = steps
        self.l2 = l2
        self.half_life = half_life
        self.history = history
        self.ttl = ttl
        self.max_users = max_users
        self._users: OrderedDict[str, UserState] = OrderedDict()
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def users(self) -> list[str]:
        """Ids of the users with state, least recently active first."""
        return list(self._users)

    def get(self, user_id: str) -> UserState | None:
        """The user's state, or None."""
        return self._users.get(user_id)

    def _decay(self, state: UserState, now: float) -> float:
        if now <= state.updated:
            return 1.0
        return math.pow(0.5, (now - state.updated) / self.half_life)

    def vector(self, user_id: str, now: float) -> np.ndarray:
        """The user's fast vector decayed to time `now` (zeros for unknown users)."""
        state = self._users.get(user_id)
        if state is None:
            return np.zeros(self.dim, dtype=np.float32)
        return state.vec * np.float32(self._decay(state, now))

    def remember(self, user_id: str, item_row: int, timestamp: float) -> None:
        """Record that the user just interacted with `item_row` (creating state if needed)."""
        state = self._users.get(user_id)
        if state is None:
            state = UserState(np.zeros(self.dim, dtype=np.float32), timestamp, 0, array("q"))
            self._users[user_id] = state
            if len(self._users) > self.max_users:
                self._users.popitem(last=False)
                self.evicted += 1
        else:
            self._users.move_to_end(user_id)
        state.recent.append(item_row)
        if len(state.recent) > self.history:
            del state.recent[0]
        state.events += 1

    def learn_one(self, user_id: str, timestamp: float, base: np.ndarray, pos_vec: np.ndarray,
                  pos_bias: float, neg_vecs: np.ndarray, neg_biases: np.ndarray) -> None:
        """BPR steps on the user's fast vector: the positive item against the negatives.

        `base` is the slow user vector; item vectors and biases are the slow model's, frozen.
        The user must have been `remember`-ed first.
        """
        self.learn_batch([user_id], np.array([timestamp]), base[None, :], pos_vec[None, :],
                         np.array([pos_bias]), neg_vecs[None, :, :], np.asarray(neg_biases)[None, :])

    def learn_batch(self, user_ids: Sequence[str], timestamps: np.ndarray, base: np.ndarray,
                    pos_vecs: np.ndarray, pos_biases: np.ndarray, neg_vecs: np.ndarray,
                    neg_biases: np.ndarray) -> np.ndarray:
        """`learn_one` for many *distinct* users at once; returns their new fast vectors (B, dim).

        Shapes: base, pos_vecs (B, dim); pos_biases (B,); neg_vecs (B, n, dim); neg_biases (B, n).
        """
        states = [self._users[u] for u in user_ids]
        if len(states) == 1:   # one event (a replay): the same product without stacking
            f = (states[0].vec * np.float32(self._decay(states[0], timestamps[0])))[None, :]
        else:
            decay = np.array([self._decay(s, t) for s, t in zip(states, timestamps)], dtype=np.float32)
            f = (np.stack([s.vec for s in states]) * decay[:, None]).astype(np.float32)
        bpr_steps(f, np.ascontiguousarray(base, dtype=np.float32), np.ascontiguousarray(pos_vecs, dtype=np.float32),
                  np.asarray(pos_biases, dtype=np.float32), np.ascontiguousarray(neg_vecs, dtype=np.float32),
                  np.asarray(neg_biases, dtype=np.float32), np.float32(self.lr), np.float32(self.l2), self.steps)
        for state, vec, t in zip(states, f, timestamps):
            state.vec = vec
            state.updated = max(state.updated, float(t))
        return f

    def touch(self, user_id: str, timestamp: float) -> None:
        """Advance the user's clock without a gradient step (decays the vector to `timestamp`)."""
        state = self._users[user_id]
        if timestamp > state.updated:
            state.vec = (state.vec * np.float32(self._decay(state, timestamp))).astype(np.float32)
            state.updated = timestamp

    def expire(self, now: float) -> int:
        """Drop users idle for more than `ttl` at stream time `now`; returns how many."""
        dropped = 0
        while self._users:
            user_id, state = next(iter(self._users.items()))
            if now - state.updated <= self.ttl:
                break
            del self._users[user_id]
            dropped += 1
        self.expired += dropped
        return dropped

    def forget(self, user_id: str) -> bool:
        """Remove one user's state entirely; True if there was any."""
        return self._users.pop(user_id, None) is not None

    def scale_all(self, factor: float) -> None:
        """Multiply every fast vector by `factor` (rebasing after a consolidation)."""
        for state in self._users.values():
            state.vec = (state.vec * np.float32(factor)).astype(np.float32)

    def export_users(self, user_ids) -> dict[str, UserState]:
        """The states of the given users that exist (for moving them with a partition)."""
        return {u: self._users[u] for u in user_ids if u in self._users}

    def import_users(self, states: dict[str, UserState]) -> None:
        """Adopt users' states (replacing any existing ones), most recently active last."""
        for user_id, state in sorted(states.items(), key=lambda kv: kv[1].updated):
            self._users[user_id] = state
            self._users.move_to_end(user_id)
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)
            self.evicted += 1

    def bytes_per_user(self) -> float:
        """Measured memory per user state (vector, history and object overheads)."""
        if not self._users:
            return 0.0
        sample = list(self._users.values())[:1000]
        size = sum(sys.getsizeof(s) + s.vec.nbytes + sys.getsizeof(s.vec) + sys.getsizeof(s.recent)
                   + sys.getsizeof(s.__dict__) + 100 for s in sample)  # + ~100 B dict entry and key
        return size / len(sample)
