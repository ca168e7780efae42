"""Scoring a slow ranker on held-out probe events: NDCG@k and HR@k, the protocol's definitions.

For each probe event (u, i, t) the ranker ranks every item it knows, given u's history before
t, excluding the items in that history (the items u had before the event, as far back as the
sample's bounded history reaches). HR@k = 1 if i is in the top k; NDCG@k = 1/log2(rank + 2)
with rank counted from 0 (`evaluation.protocol.gain`); ties are broken by the lower item row,
as `models.ranking.top_k` does. A probe whose item the ranker does not know, or which is in
the user's history, is a miss and stays in the denominator.
"""

from __future__ import annotations

import numpy as np

from consolidation.sampling import ReplaySample
from evaluation.protocol import gain
from models.slow import SlowRanker

#: Probe events scored per matrix product (bounds memory at batch x n_items floats).
BATCH = 256


def _ranks(ranker: SlowRanker, sample: ReplaySample, rows_of_code: np.ndarray, events: np.ndarray) -> np.ndarray:
    """0-based rank of each event's item among the ranker's items (-1 where it cannot be a hit)."""
    vectors = np.stack([ranker.user_vector(sample.users[n], sample.history_of(n)) for n in events])
    scores = vectors @ ranker.item_vectors.T + ranker.item_biases
    targets = ranker.items.lookup(sample.items[events])
    history = sample.history[events]
    excluded = np.where(history >= 0, rows_of_code[np.maximum(history, 0)], -1)
    ranks = np.full(len(events), -1, dtype=np.int64)
    order = np.arange(scores.shape[1])
    for j, (target, row_scores, past) in enumerate(zip(targets, scores, excluded)):
        if target < 0 or target >= len(row_scores) or target in past:
            continue
        valid = np.ones(len(row_scores), dtype=bool)
        valid[past[past >= 0]] = False
        mine = row_scores[target]
        ranks[j] = int(np.count_nonzero(valid & (row_scores > mine))
                       + np.count_nonzero(valid & (row_scores == mine) & (order < target)))
    return ranks


def evaluate(ranker: SlowRanker, sample: ReplaySample, k: int = 10) -> dict[str, float]:
    """``{"ndcg_at_K", "hr_at_K", "events"}`` of ``ranker`` over every event of ``sample``.

    Examples
    --------
    >>> import pyarrow as pa, datetime as dt
    >>> from consolidation.sampling import sample_replay
    >>> ranker = SlowRanker(dim=8, epochs=30, seed=0)
    >>> pairs = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "z"), ("c", "w")] * 5
    >>> _ = ranker.fit(ranker.build_examples(*zip(*pairs)))
    >>> t = [dt.datetime(2024, 1, 1, 0, 0, s, tzinfo=dt.timezone.utc) for s in range(4)]
    >>> probes = sample_replay([pa.table({"event_id": ["1", "2", "3", "4"], "user_id": ["d", "d", "e", "e"],
    ...     "item_id": ["x", "y", "z", "x"], "timestamp": pa.array(t, pa.timestamp("ms", "UTC")),
    ...     "event_type": ["click"] * 4, "value": [1.0] * 4})], 10)
    >>> m = evaluate(ranker, probes, k=1)   # a hit only for d's y right after x (after z, w leads)
    >>> m["events"], m["hr_at_1"]
    (4, 0.25)
    """
    n = len(sample)
    if not n:
        return {f"ndcg_at_{k}": 0.0, f"hr_at_{k}": 0.0, "events": 0}
    rows_of_code = ranker.items.lookup(sample.item_ids)
    ranks = np.concatenate([_ranks(ranker, sample, rows_of_code, np.arange(start, min(start + BATCH, n)))
                            for start in range(0, n, BATCH)])
    hits = (ranks >= 0) & (ranks < k)
    gains = np.array([gain(int(r)) if h else 0.0 for r, h in zip(ranks, hits)])
    return {f"ndcg_at_{k}": float(gains.mean()), f"hr_at_{k}": float(hits.mean()), "events": n}


def evaluate_slices(ranker: SlowRanker, probes: ReplaySample, k: int = 10) -> dict[str, float]:
    """Metrics on the recent and old slices of ``probes``, keyed ``recent_ndcg_at_10``, ``old_events``, ..."""
    out: dict[str, float] = {}
    for name, mask in (("recent", probes.recent), ("old", ~probes.recent)):
        for key, value in evaluate(ranker, probes.subset(mask), k).items():
            out[f"{name}_{key}"] = value
    return out
