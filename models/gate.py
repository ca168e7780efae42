"""The gate: how much each request trusts the fast path over the slow model, learned online.

For a request with candidates j, the scorer hands over
- `slow[j]`: the slow model's score, min-max normalised over the candidates;
- `fast[j, c]`: one column per fast-path signal c (fast-weight score, co-occurrence with the
  user's recent items, transitions from the last item, episodic-memory hits, recent
  popularity), each normalised over the candidates;
- `request`: features of the request (how many events the fast state holds, how recent the
  last one is, how strong the co-occurrence and memory hits are, whether the slow model knows
  the user) with a leading 1 for the bias.

    g        = sigmoid(theta . request)
    score[j] = temperature * ((1 - g) * slow[j] + g * (w . fast[j]))

When the user's next interaction p arrives, one SGD step lowers the softmax cross-entropy
-log softmax(score)[p] over the same candidates (learning from what was shown). With
`fixed_gate` set, g is pinned (1.0 gives the `fast-only` ablation) and only w learns.
"""

from __future__ import annotations

import math

import numpy as np

#: Names of the fast-path signal columns, in order.
FAST_SIGNALS = ("fast_weights", "cooccurrence", "transition", "memory", "recent_popularity")
#: Names of the request features, in order (after the leading bias term).
REQUEST_FEATURES = ("fast_events", "idle", "cooc_strength", "transition_strength", "memory_strength",
                    "slow_knows_user", "slow_known_history")


def sigmoid(x: float) -> float:
    """Numerically safe logistic function.

    >>> sigmoid(0.0), round(sigmoid(2.0), 4)
    (0.5, 0.8808)
    """
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def normalise(column: np.ndarray) -> np.ndarray:
    """Min-max scale a score column to [0, 1] (a constant column becomes zeros).

    >>> normalise(np.array([2.0, 4.0, 3.0])).tolist()
    [0.0, 1.0, 0.5]
    >>> normalise(np.array([5.0, 5.0])).tolist()
    [0.0, 0.0]
    """
    if not len(column):
        return np.zeros(0)
    lo, hi = column.min(), column.max()
    if not np.isfinite(lo) or hi - lo <= 1e-12:
        return np.zeros(len(column))
    return (column - lo) / (hi - lo)


class Gate:
    """Online-learned blend of the slow score and the fast-path signals.

    Parameters
    ----------
    lr
        SGD step size.
    temperature
        Softmax sharpness applied to the blended score.
    l2
        Weight decay on theta and w (keeps them from drifting on noisy streams).
    fixed_gate
        Pin g to this value instead of learning it (None = learn it).
    initial_weights
        Starting w (defaults to equal weights over the fast signals).

    Examples
    --------
    A stream where the fast signal always points at the right item teaches the gate to
    trust the fast path:

    >>> gate = Gate(lr=0.5)
    >>> slow = np.array([1.0, 0.0, 0.5])
    >>> fast = np.zeros((3, len(FAST_SIGNALS))); fast[1, 1] = 1.0
    >>> request = np.ones(1 + len(REQUEST_FEATURES))
    >>> before = gate.value(request)
    >>> for _ in range(50):
    ...     _ = gate.learn(slow, fast, request, positive=1)
    >>> bool(gate.value(request) > before), int(np.argmax(gate.scores(slow, fast, request)))
    (True, 1)
    """

    def __init__(self, lr: float = 0.005, temperature: float = 10.0, l2: float = 1e-4,
                 fixed_gate: float | None = None, initial_weights: tuple[float, ...] | None = None) -> None:
        self.lr = lr
        self.temperature = temperature
        self.l2 = l2
        self.fixed_gate = fixed_gate
        self.initial_weights = initial_weights
        self.theta = np.zeros(1 + len(REQUEST_FEATURES))
        w = initial_weights if initial_weights is not None else [1.0 / len(FAST_SIGNALS)] * len(FAST_SIGNALS)
        self.w = np.asarray(w, dtype=np.float64)
        self.updates = 0

    def value(self, request: np.ndarray) -> float:
        """g for a request: the weight of the fast path."""
        if self.fixed_gate is not None:
            return float(self.fixed_gate)
        return sigmoid(float(self.theta @ request))

    def parts(self, slow: np.ndarray, fast: np.ndarray, request: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """(g, fast score per candidate, blended score per candidate)."""
        g = self.value(request)
        fast_score = fast @ self.w
        return g, fast_score, self.temperature * ((1.0 - g) * slow + g * fast_score)

    def scores(self, slow: np.ndarray, fast: np.ndarray, request: np.ndarray) -> np.ndarray:
        """Blended score per candidate."""
        return self.parts(slow, fast, request)[2]

    def learn(self, slow: np.ndarray, fast: np.ndarray, request: np.ndarray, positive: int) -> float:
        """One SGD step on -log softmax(score)[positive]; returns the loss before the step."""
        g, fast_score, score = self.parts(slow, fast, request)
        shifted = score - score.max()
        p = np.exp(shifted)
        p /= p.sum()
        loss = float(-np.log(max(p[positive], 1e-300)))
        d_score = p.copy()
        d_score[positive] -= 1.0
        d_score *= self.temperature
        grad_w = g * (fast.T @ d_score) + self.l2 * self.w
        if self.fixed_gate is None:
            d_g = float(d_score @ (fast_score - slow))
            self.theta -= self.lr * (d_g * g * (1.0 - g) * request + self.l2 * self.theta)
        self.w -= self.lr * grad_w
        self.updates += 1
        return loss
