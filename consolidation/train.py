"""Training a challenger: a clone of the champion fitted on replay (+ distillation) with EWC.

This is the part the MLflow job (`consolidation.job`) and the in-process replay policy
(`consolidation.policy`) share, so the offline `ewc` numbers come from the same code that
runs in production.

The Fisher used in a run is ``gamma * F_previous + F_sample``: ``F_previous`` is the
accumulated Fisher the champion's own run logged, ``F_sample`` the empirical Fisher of the
champion's ranking log-likelihood on (a subset of) this run's replay examples, taken at the
champion's parameters. New users/items (rows the champion does not have) carry no anchor and
move freely; the Fisher computed on their fresh rows is kept for the next run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from consolidation.ewc import ewc_penalty, online_fisher
from consolidation.ranker_fisher import ranker_fisher
from consolidation.sampling import ReplaySample
from models.slow import Examples, SlowRanker
from models.slow_net import PAD

logger = logging.getLogger(__name__)

#: Builds distillation examples *against the ranker being trained* (its vocabularies: the
#: callable may register new ids), e.g. from the fast path's per-user preferences, with
#: per-example weights. Called once per consolidation with the challenger clone.
Distill = Callable[[SlowRanker], Examples]

@dataclass(frozen=True)
class ConsolidationConfig:
    """Knobs of one consolidation (the CLI fills them from `fastslow.settings.Settings`).

    Parameters
    ----------
    epochs, lr
        Training of the challenger (``lr=None``: the ranker's own learning rate).
    ewc_lambda
        EWC strength lambda in ``lambda/2 * sum F (theta - theta*)^2``; 0 turns EWC off
        (plain replay). The ranking loss is a *mean* over examples, so the Laplace view puts
        lambda near (old events) / (replayed events), i.e. 1 to 100; on the 200k synthetic
        stream 10 kept the old slice (no drop over 4 rounds) while gaining on the recent one,
        0 forgot up to 6% per round and 1000 hardly learnt anything new.
    ewc_gamma
        Online-EWC decay of the previous Fisher.
    fisher_samples
        Replay examples the empirical Fisher is computed on.
    probe_fraction
        Share of the sample held out (by event-id hash) as gate probes.
    tolerance
        Largest relative drop of old-slice NDCG@k the gate accepts.
    k
        Cut-off of the gate's NDCG/HR.
    seed
        Seed of the Fisher subset and candidate draws.
    """

    epochs: int = 3
    lr: float | None = None
    ewc_lambda: float = 10.0
    ewc_gamma: float = 0.9
    fisher_samples: int = 20_000
    probe_fraction: float = 0.1
    tolerance: float = 0.02
    k: int = 10
    seed: int = 0


@dataclass
class Trained:
    """A challenger and what training it produced."""

    ranker: SlowRanker
    fisher: dict[str, torch.Tensor]
    losses: list[float]
    replay_examples: int
    distill_examples: int
    seconds: dict[str, float] = field(default_factory=dict)


def sample_examples(ranker: SlowRanker, sample: ReplaySample) -> Examples:
    """Examples for ``ranker`` from a replay sample, each with its own attached history.

    Registers the sample's users and items in the ranker (its tables grow to fit).
    """
    used = np.unique(sample.history[sample.history >= 0])
    for code in used.tolist():
        ranker.items.add(sample.item_ids[code])
    examples = ranker.build_examples(sample.users.tolist(), sample.items.tolist())  # registers + grows
    rows_of_code = np.full(len(sample.item_ids), -1, dtype=np.int64)
    rows_of_code[used] = ranker.items.lookup(sample.item_ids[used])
    history = sample.history[:, : ranker.history]
    rows = np.where(history >= 0, rows_of_code[np.maximum(history, 0)] + 1, PAD)
    padded = np.full((len(sample), ranker.history), PAD, dtype=np.int64)
    padded[:, : rows.shape[1]] = rows
    return Examples(examples.users, padded, examples.targets, examples.weights)


def with_training_context(ranker: SlowRanker, examples: Examples, sample: ReplaySample, features) -> Examples:
    """`examples` (built from `sample`) with each event's point-in-time context, for a ranker
    that reads context; unchanged for one that does not (or without ``features``).

    ``features`` is a `features.context.FeatureContext` over the feature store the worker
    pushes to (read with the ranker's own encoding, whatever spec it was made with): the user
    and item context of each event is the feature store's state strictly
    before the event (Feast ``get_historical_features``), and the ranker's sampled negatives
    read the items' context history as of each batch (`SlowRanker.set_item_table`).
    """
    if features is None or not ranker.uses_context or not len(sample):
        return examples
    import pyarrow as pa

    times_ms = np.asarray(sample.timestamps_ms, dtype=np.int64)
    events = pa.table({"event_id": [str(e) for e in sample.event_ids], "user_id": [str(u) for u in sample.users],
                       "item_id": [str(i) for i in sample.items],
                       "timestamp": pa.array(times_ms, pa.int64()).cast(pa.timestamp("ms", "UTC")),
                       "event_type": [str(t) for t in sample.event_types],
                       "value": np.asarray(sample.values, dtype=np.float64)})
    features = features.with_spec(ranker.context)   # the encoding the ranker was built with
    context = features.training_context(events)
    ranker.set_item_table(*features.item_history(ranker.items.ids()))
    return examples.with_context(context.user, context.items, context.categories, times=times_ms / 1000.0)


def ewc_anchors(ranker: SlowRanker) -> dict[str, torch.Tensor]:
    """The ranker's parameters as EWC anchors, its id tables cut to the ids it knows.

    A table's spare rows (capacity grows by doubling) hold initial values, not knowledge: ids
    registered after the champion land there, and anchoring them would pull new users and
    items back to their random start. Cut, they have no anchor and move freely.
    """
    rows = {"user_emb.weight": len(ranker.users), "item_in.weight": len(ranker.items) + 1,
            "item_out.weight": len(ranker.items), "item_bias.weight": len(ranker.items)}
    return {name: p.detach()[: rows[name]].clone() if name in rows else p.detach().clone()
            for name, p in ranker.net.named_parameters()}


def train_challenger(champion: SlowRanker, train: ReplaySample, config: ConsolidationConfig,
                     previous_fisher: dict[str, torch.Tensor] | None = None, distill: Distill | None = None,
                     on_epoch: Callable[[int, float], None] | None = None, features=None) -> Trained:
    """Clone ``champion`` and fit the clone on ``train`` (+ ``distill``) with the EWC penalty.

    The champion is never modified. ``on_epoch(epoch, mean_loss)`` runs after every epoch (an
    exception there aborts training and propagates). With ``features`` and a champion that
    reads context, the replay examples carry their point-in-time context
    (`with_training_context`).
    """
    seconds = {}
    started = time.perf_counter()
    challenger = champion.clone()
    examples = with_training_context(challenger, sample_examples(challenger, train), train, features)
    n_replay = len(examples)
    seconds["examples"] = time.perf_counter() - started
    started = time.perf_counter()
    fisher = online_fisher(previous_fisher, ranker_fisher(challenger, examples, config.fisher_samples, config.seed),
                           config.ewc_gamma)
    seconds["fisher"] = time.perf_counter() - started
    if distill is not None:
        examples = examples.concat(distill(challenger))
    anchors = ewc_anchors(champion)
    penalty = None
    if config.ewc_lambda > 0:
        penalty = lambda net: ewc_penalty(dict(net.named_parameters()), anchors, fisher, config.ewc_lambda)  # noqa: E731
    started = time.perf_counter()
    losses = challenger.fit(examples, epochs=config.epochs, penalty=penalty, on_epoch=on_epoch, lr=config.lr)
    seconds["train"] = time.perf_counter() - started
    logger.info("challenger trained on %d replay + %d distillation examples in %.1fs (losses %s)", n_replay,
                len(examples) - n_replay, seconds["train"], [round(x, 4) for x in losses])
    return Trained(challenger, fisher, losses, n_replay, len(examples) - n_replay, seconds)
