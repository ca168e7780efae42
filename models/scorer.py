"""Scoring one request for FastSlow: candidates, per-candidate signals, and the reason to show.

Candidates come from these sources: the item index (ANN with the fast-adjusted user vector),
co-occurrence and transitions from the user's recent items, the `recency-knn` and `sr`
peers' top items (`models.signals`), the episodic memory (what users with similar vectors
did moments ago), and recent popularity. Each candidate then gets the
slow model's score and the fast-path signals of `models.gate.FAST_SIGNALS`, each min-max
normalised over the candidates, plus request features that tell the gate how much to trust
the fast path for this user right now.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.gate import FAST_SIGNALS, normalise, normalise_columns
from models.kernels import sparse_at
from models.slow import below_known

_COLUMN = {name: c for c, name in enumerate(FAST_SIGNALS)}


@dataclass
class Sparse:
    """A signal's non-zero entries: sorted item rows and their values."""

    rows: np.ndarray
    values: np.ndarray

    def top(self, k: int) -> np.ndarray:
        """Rows of the (at most) k largest values, in no particular order.

        >>> sorted(Sparse(np.array([1, 3, 5]), np.array([3.0, 1.0, 2.0])).top(2).tolist())
        [1, 5]
        """
        if len(self.rows) <= k:
            return self.rows
        return self.rows[(-self.values).argpartition(k - 1)[:k]]   # the method: no dispatch wrapper

    def at(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Values at sorted `rows` (0 where the signal has nothing), written into `out` (zeros
        of len(rows), e.g. a column of a feature matrix) when given.

        >>> Sparse(np.array([2, 7]), np.array([0.5, 0.9])).at(np.array([1, 4, 7])).tolist()
        [0.0, 0.0, 0.9]
        """
        if out is None:
            out = np.zeros(len(rows))
        if len(self.rows) and len(rows):
            sparse_at(rows, self.rows, self.values, out)
        return out

    @property
    def strength(self) -> float:
        """The largest value (0 when empty)."""
        return float(self.values.max()) if len(self.values) else 0.0


@dataclass
class Signals:
    """Raw per-request signals: the user's vectors, sparse item signals and memory hits."""

    base: np.ndarray
    fast_vec: np.ndarray
    cooc: Sparse
    trans: Sparse
    popularity: Callable[[np.ndarray], np.ndarray]
    """Recent popularity of the given item rows."""
    memory: Sparse
    mem_strength: float
    knn: Sparse | None = None
    """The `recency-knn` peer's scores (`models.stream_stats.StreamStats.knn_scores`)."""
    sr: Sparse | None = None
    """The `sr` peer's scores (`models.stream_stats.StreamStats.sr_scores`)."""
    counts: np.ndarray | None = None
    """All-time interactions per item row (the ``popularity`` signal, the peers' tie-break)."""


@dataclass
class Scored:
    """One scored request: candidates and everything the gate needs to learn from it."""

    user_id: str
    rows: np.ndarray
    slow: np.ndarray
    fast: np.ndarray
    request: np.ndarray
    gate: float
    fast_score: np.ndarray
    score: np.ndarray
    taught_at: float | None = None
    """Time of the user's event that first taught the gate from this list (None: none yet)."""

    def top(self, k: int) -> np.ndarray:
        """Positions (into `rows`) of the k best candidates; ties go to the lower item row.

        Only the candidates scoring at least the k-th best are sorted (a partition first).

        >>> s = Scored("u", np.array([4, 2, 9, 1]), *[np.zeros(4)] * 2, np.zeros(1), 0.5, np.zeros(4),
        ...            np.array([1.0, 3.0, 3.0, 0.5]))
        >>> s.top(2).tolist(), s.top(3).tolist(), s.top(9).tolist()
        ([1, 2], [1, 2, 0], [1, 2, 0, 3])
        """
        score = self.score
        if 0 < k < len(score):
            part = score.copy()   # what np.partition does, without its dispatch wrapper
            part.partition(len(score) - k)
            kth = part[len(score) - k]
            near = np.flatnonzero(score >= kth)
            if len(near) >= k:   # (fewer only when NaN scores are about: sort them all)
                return near[np.lexsort((self.rows[near], -score[near]))[:k]]
        return np.lexsort((self.rows, -score))[:k]


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` for a 1-d int array, by one sort (numpy 2's hashing `np.unique`
    costs several times more on the few hundred candidates of a request).

    >>> sorted_unique(np.array([5, 1, 5, 3, 1])).tolist()
    [1, 3, 5]
    """
    ordered = np.sort(values)
    first = np.ones(len(ordered), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


def top_positive(signal: np.ndarray, k: int) -> np.ndarray:
    """Rows of the (at most) k largest strictly positive entries of a dense signal, unordered.

    >>> sorted(top_positive(np.array([0.0, 3.0, 1.0, 2.0]), 2).tolist())
    [1, 3]
    """
    nz = np.flatnonzero(signal > 0)
    return Sparse(nz, signal[nz]).top(k)


def candidate_features(rows: np.ndarray, sig: Signals, vector_rows: np.ndarray, item_vectors: np.ndarray,
                       item_biases: np.ndarray, user: np.ndarray | None = None,
                       known: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(normalised slow score, normalised fast signals (n, len(FAST_SIGNALS))) for candidates.

    ``vector_rows`` maps item rows to rows of ``item_vectors``/``item_biases`` (-1: none); the
    slow score is ``item_vectors @ user + item_biases`` (``user`` defaults to ``sig.base``),
    the ``fast_weights`` signal ``item_vectors @ sig.fast_vec``. Candidates without a vector
    sit at the bottom of the slow ranking. ``known`` (per candidate, optional): candidates
    whose vector has no id part (context only) rank below those with one, in their own order
    (`models.slow.below_known`).
    """
    vrows = vector_rows[rows]
    has = vrows >= 0
    complete = bool(has.all())   # every candidate has a vector: no masks needed
    on = vrows if complete else vrows[has]
    vectors = np.take(item_vectors, on, axis=0)   # (np.take copies rows faster than fancy indexing)
    slow_raw = np.empty(len(rows))
    slow_raw[has] = vectors @ (sig.base if user is None else user) + item_biases[on]
    if known is not None:
        slow_raw[has] = below_known(slow_raw[has], known[has])
    if not complete:
        # an item with no vector (the slow model never saw it) sits at the bottom of the slow ranking
        slow_raw[~has] = slow_raw[has].min() if has.any() else 0.0
    # raw signals straight into their columns, then every column normalised in one pass
    fast = np.zeros((len(rows), len(FAST_SIGNALS)))
    fast[has, _COLUMN["fast_weights"]] = vectors @ sig.fast_vec
    sig.cooc.at(rows, out=fast[:, _COLUMN["cooccurrence"]])
    sig.trans.at(rows, out=fast[:, _COLUMN["transition"]])
    sig.memory.at(rows, out=fast[:, _COLUMN["memory"]])
    fast[:, _COLUMN["recent_popularity"]] = np.log1p(sig.popularity(rows))
    if sig.knn is not None:
        sig.knn.at(rows, out=fast[:, _COLUMN["recency_knn"]])
    if sig.sr is not None:
        sig.sr.at(rows, out=fast[:, _COLUMN["sequential_rules"]])
    if sig.counts is not None:
        fast[:, _COLUMN["popularity"]] = np.log1p(sig.counts[rows])
    return normalise(slow_raw), normalise_columns(fast)


#: Reason templates per strongest signal; {item} is the recent item that led to it.
VERBS = {"view": "viewed", "click": "clicked", "cart": "added to your cart", "purchase": "bought",
         "rating": "rated", "skip": "skipped"}


#: Signals whose reason names the recent item that led to the candidate.
TRIGGERED = ("cooccurrence", "transition", "recency_knn", "sequential_rules")


FALLBACK = "fallback: "
"""How a reason starts when the model knows nothing personal about the user yet."""


def reason_for(signal: str, trigger: str | None, verb: str | None, personal: bool = True) -> str:
    """A short explanation for one recommended item.

    ``personal=False`` (nothing learned about the user yet: no fast state, unknown to the slow
    model) says the item is a fallback and why it was picked.

    >>> reason_for("transition", "X", "bought")
    'because you just bought X'
    >>> reason_for("memory", None, None)
    'popular right now with people like you'
    >>> reason_for("slow", None, None, personal=False)
    'fallback: liked by many (nothing learned about you yet)'
    """
    if not personal:
        what = "trending now" if signal == "recent_popularity" else "liked by many"
        return f"{FALLBACK}{what} (nothing learned about you yet)"
    if signal in TRIGGERED and trigger is not None:
        return f"because you just {verb or 'viewed'} {trigger}"
    return {
        "slow": "matches your long-term taste",
        "fast_weights": "matches what you have been into lately",
        "memory": "popular right now with people like you",
        "recent_popularity": "trending now",
        "popularity": "popular with everyone",
    }.get(signal, "recommended for you")
