"""The gate: how much each request trusts the fast path over the slow model, learned online.

For a request with candidates j, the scorer hands over
- `slow[j]`: the slow model's score, min-max normalised over the candidates;
- `fast[j, c]`: one column per fast-path signal c (fast-weight score, co-occurrence with the
  user's recent items, transitions from the last item, episodic-memory hits, recent
  popularity, the `recency-knn` and `sr` peers' own scores, all-time popularity), each
  min-max normalised over the candidates;
- `request`: features of the request (how many events the fast state holds, how recent the
  last one is, how strong the co-occurrence and memory hits are, whether the slow model knows
  the user) with a leading 1 for the bias.

    g        = sigmoid(theta . request)
    score[j] = temperature * ((1 - g) * slow[j] + g * (w . fast[j] + v * slow[j]))

`v` lets the learned side weigh the slow score like any other signal (it starts at 0): the
gate then trades whole paths per request, while w and v settle how the signals combine.
The user's next interaction p after a list is shown, and every other one of theirs at that
same time (the items of one basket), takes one step on the softmax cross-entropy
-log softmax(score)[p] over the same candidates (learning from what was shown). The step
is AdaGrad's (`adaptive`, the default): each parameter's rate is `lr` over the root of its
summed squared gradients, so weights move while the evidence is new and settle as it
accumulates; plain SGD (`adaptive=False`, the old rule) at lr 0.005 had barely moved after
a replay's few hundred updates and at larger rates oscillated. With `fixed_gate` set, g is
pinned and v stays 0 (1.0 gives the `fast-only` ablation: no slow score at all) and only w
learns.

The gate starts at `initial_gate` (theta's bias term), 0.8 by default: a fresh gate leans on
the fast signals, which are learned from the stream itself, and learns the slow model's share.
Measured (issue 14; `fastslow replay`, group ties, one invocation per log; retail = Online
Retail first 100k, synthetic = `fastslow synth --seed 7`, 200k): with the peers' signals,
AdaGrad and every basket item teaching, `fast-slow` NDCG@10 0.0159 -> 0.0174 on retail
(best peer implicit-als 0.0164) and 0.1110 -> 0.1301 on synthetic (best peer sr 0.1277);
`fast-slow-frozen` 0.0153 -> 0.0173 and 0.1108 -> 0.1299.
"""

from __future__ import annotations

import math

import numpy as np

from models.kernels import scale_columns

#: Names of the fast-path signal columns, in order.
FAST_SIGNALS = ("fast_weights", "cooccurrence", "transition", "memory", "recent_popularity", "recency_knn",
                "sequential_rules", "popularity")
#: Names of the request features, in order (after the leading bias term).
REQUEST_FEATURES = ("fast_events", "idle", "cooc_strength", "transition_strength", "memory_strength",
                    "slow_knows_user", "slow_known_history")

#: AdaGrad's summed squares start here: as if about one update with a gradient of norm 10 (a
#: typical size at temperature 10) had been seen, so the first few steps are a fraction of lr,
#: not lr * sign(gradient) — one user's first clicks must not swing the weights.
_SQUARES_START = 100.0


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


def normalise_columns(matrix: np.ndarray) -> np.ndarray:
    """`normalise` applied to every column of an (n, c) float64 array at once, in place (the
    scorer builds the matrix for this; one compiled pass instead of c rounds of numpy calls).

    >>> normalise_columns(np.array([[2.0, 5.0], [4.0, 5.0], [3.0, 5.0]])).tolist()
    [[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]]
    """
    scale_columns(matrix)
    return matrix


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
        Pin g to this value instead of learning it (None = learn it); v then stays 0.
    initial_gate
        g of a request with all-zero features before any learning (the bias term's start).
    initial_weights
        Starting w (defaults to equal weights over the fast signals).
    adaptive
        AdaGrad steps (True) or plain SGD steps of size `lr` (False).

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

    def __init__(self, lr: float = 0.1, temperature: float = 10.0, l2: float = 1e-4,
                 fixed_gate: float | None = None, initial_weights: tuple[float, ...] | None = None,
                 initial_gate: float = 0.8, adaptive: bool = True) -> None:
        if not 0.0 < initial_gate < 1.0:
            raise ValueError(f"initial_gate must be strictly between 0 and 1, got {initial_gate}")
        self.lr = lr
        self.temperature = temperature
        self.l2 = l2
        self.fixed_gate = fixed_gate
        self.initial_weights = initial_weights
        self.initial_gate = initial_gate
        self.theta = np.zeros(1 + len(REQUEST_FEATURES))
        self.theta[0] = math.log(initial_gate / (1.0 - initial_gate))
        w = initial_weights if initial_weights is not None else [1.0 / len(FAST_SIGNALS)] * len(FAST_SIGNALS)
        self.w = np.asarray(w, dtype=np.float64)
        self.v = 0.0
        """Weight of the slow score among the learned signals (0 while g is pinned)."""
        self.updates = 0
        self.adaptive = adaptive
        self._squares = [np.full(len(self.theta), _SQUARES_START, dtype=np.float64), np.full(len(self.w), _SQUARES_START, dtype=np.float64),
                         np.full(1, _SQUARES_START, dtype=np.float64)]
        """AdaGrad's summed squared gradients of theta, w and v."""

    def value(self, request: np.ndarray) -> float:
        """g for a request: the weight of the fast path."""
        if self.fixed_gate is not None:
            return float(self.fixed_gate)
        return sigmoid(float(self.theta @ request))

    def parts(self, slow: np.ndarray, fast: np.ndarray, request: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """(g, fast score per candidate, blended score per candidate)."""
        g = self.value(request)
        fast_score = fast @ self.w
        return g, fast_score, self.temperature * ((1.0 - g + g * self.v) * slow + g * fast_score)

    def scores(self, slow: np.ndarray, fast: np.ndarray, request: np.ndarray) -> np.ndarray:
        """Blended score per candidate."""
        return self.parts(slow, fast, request)[2]

    def _step(self, n: int, grad: np.ndarray) -> np.ndarray:
        """The step for parameter group n (0 theta, 1 w, 2 v) given its gradient."""
        if not self.adaptive:
            return self.lr * grad
        squares = self._squares[n]
        squares += grad * grad
        return self.lr * grad / np.sqrt(squares)

    def __setstate__(self, state: dict) -> None:
        """Gates pickled before the peer signals: the new columns start at weight 0 (the
        ranking is unchanged until they learn), and the old plain-SGD rule is kept."""
        self.__dict__.update(state)
        if "adaptive" not in state:
            self.adaptive = False
            self.w = np.concatenate([self.w, np.zeros(len(FAST_SIGNALS) - len(self.w))])
            self._squares = [np.full(len(self.theta), _SQUARES_START, dtype=np.float64), np.full(len(self.w), _SQUARES_START, dtype=np.float64),
                             np.full(1, _SQUARES_START, dtype=np.float64)]

    def learn(self, slow: np.ndarray, fast: np.ndarray, request: np.ndarray, positive: int,
              weights_only: bool = False) -> float:
        """One step on -log softmax(score)[positive]; returns the loss before the step.

        `weights_only`: only w learns, theta and v stay (for lists whose slow scores are
        in-sample: the warm-up prefix the slow model was trained on would teach the gate to
        trust it more than it deserves on events it has not seen)."""
        g, fast_score, score = self.parts(slow, fast, request)
        shifted = score - score.max()
        p = np.exp(shifted)
        p /= p.sum()
        loss = float(-np.log(max(p[positive], 1e-300)))
        d_score = p.copy()
        d_score[positive] -= 1.0
        d_score *= self.temperature
        grad_w = g * (fast.T @ d_score) + self.l2 * self.w
        if self.fixed_gate is None and not weights_only:
            d_g = float(d_score @ (fast_score + (self.v - 1.0) * slow))
            grad_v = g * float(d_score @ slow) + self.l2 * self.v
            self.theta -= self._step(0, d_g * g * (1.0 - g) * request + self.l2 * self.theta)
            self.v -= float(self._step(2, np.array([grad_v]))[0])
        self.w -= self._step(1, grad_w)
        self.updates += 1
        return loss
