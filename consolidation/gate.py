"""The promotion gate: may a challenger replace the champion? A pure decision on probe metrics.

Both models are scored on the same held-out probes (never on training data): a **recent**
slice (events since the last consolidation) and an **old** slice (events before it, the
forgetting probe). The challenger is promoted only if

1. its recent NDCG@k is not worse than the champion's, and
2. its old-slice NDCG@k is not lower than the champion's by more than ``tolerance``, a
   *relative* drop (0.02 allows 2% of the champion's old-slice NDCG@k).

A slice with no probe events cannot be judged: no recent probes means no promotion; no old
probes skips rule 2 (and the reason says so).

Metric names follow MLflow's rules (no ``@``): ``recent_ndcg_at_10``, ``old_ndcg_at_10``,
``recent_events``, ``old_events`` (see `consolidation.evaluate.evaluate_slices`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fastslow.errors import ConfigError

#: Float noise below this is "equal", not "worse".
_EPS = 1e-12


@dataclass(frozen=True)
class Decision:
    """Whether to promote, and why (recorded in the MLflow run and on the model version)."""

    promote: bool
    reason: str


def decide(champion_metrics: Mapping[str, float], challenger_metrics: Mapping[str, float],
           tolerance: float, k: int = 10) -> Decision:
    """Apply the gate rules (module docstring) to the two models' probe metrics.

    Examples
    --------
    >>> champ = {"recent_ndcg_at_10": 0.20, "old_ndcg_at_10": 0.30, "recent_events": 50, "old_events": 80}
    >>> decide(champ, {**champ, "recent_ndcg_at_10": 0.25, "old_ndcg_at_10": 0.297}, tolerance=0.02).promote
    True
    >>> print(decide(champ, {**champ, "recent_ndcg_at_10": 0.25, "old_ndcg_at_10": 0.25}, tolerance=0.02).reason)
    old-slice NDCG@10 fell 16.67% (0.3000 -> 0.2500), more than the 2.00% tolerance
    >>> print(decide(champ, {**champ, "recent_ndcg_at_10": 0.19}, tolerance=0.02).reason)
    recent NDCG@10 is worse (0.2000 -> 0.1900)
    """
    if not 0.0 <= tolerance <= 1.0:
        raise ConfigError("gate tolerance", tolerance, "a relative drop between 0 and 1 (0.02 = 2%, 1 = forgetting never blocks)")
    recent, old = f"recent_ndcg_at_{k}", f"old_ndcg_at_{k}"
    if not challenger_metrics.get("recent_events", 0):
        return Decision(False, "no recent probe events: nothing to judge the challenger on")
    champ_recent, chal_recent = champion_metrics[recent], challenger_metrics[recent]
    if chal_recent < champ_recent - _EPS:
        return Decision(False, f"recent NDCG@{k} is worse ({champ_recent:.4f} -> {chal_recent:.4f})")
    text = f"recent NDCG@{k} {champ_recent:.4f} -> {chal_recent:.4f}"
    if not challenger_metrics.get("old_events", 0):
        return Decision(True, text + "; no old probe events, forgetting not checked")
    champ_old, chal_old = champion_metrics[old], challenger_metrics[old]
    drop = (champ_old - chal_old) / champ_old if champ_old > 0 else 0.0
    if drop > tolerance + _EPS:
        return Decision(False, f"old-slice NDCG@{k} fell {drop:.2%} ({champ_old:.4f} -> {chal_old:.4f}), "
                               f"more than the {tolerance:.2%} tolerance")
    return Decision(True, text + f"; old-slice {champ_old:.4f} -> {chal_old:.4f} "
                                 f"(change {-drop:+.2%}, tolerance {tolerance:.2%})")
