"""The empirical Fisher of the slow ranker's ranking log-likelihood, fast.

`consolidation.ewc.fisher_diagonal` materialises every per-sample gradient, which for a
ranker is as large as its embedding tables (millions of floats per sample). The two-tower
network's per-sample gradients have a closed form that never builds them, so its squares
sum as a few matrix products. With ``G = softmax(logits) - onehot(target)`` over the items
a sample is scored against, ``u`` its user vector and ``V`` the item output vectors:

- item output row j: ``G_j * u``                  -> squared: ``G_j^2 * u^2``
- item bias j: ``G_j``                            -> ``G_j^2``
- user vector gradient ``g = G @ V``; user row: ``g``; pool bias: ``g``;
  pool weight: ``outer(g, pooled)``               -> ``outer(g^2, pooled^2)``
- item input row h in the history with summed recency weight ``s_h``: ``s_h * (W^T g)``
  (W the pool weight)                             -> ``s_h^2 * (W^T g)^2``

Same convention as `fisher_diagonal` (mean over samples of squared per-sample gradients);
`ranker_fisher` uses the closed form for `models.slow_net.SlowRankerNet` without context
features and falls back to `fisher_diagonal` otherwise. The tests check both agree.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from consolidation.ewc import fisher_diagonal
from models.slow import Examples, SlowRanker, recency_weights
from models.slow_net import PAD, SlowRankerNet

#: Samples per closed-form batch (memory: batch x scored items floats).
BATCH = 1024
#: Memory the per-sample gradients of one generic (vmap) batch may take.
VMAP_BATCH_BYTES = 256 * 2**20


def _history_weights(ranker: SlowRanker, history: torch.Tensor) -> torch.Tensor:
    base = torch.as_tensor(recency_weights(ranker.history, ranker.history_decay), dtype=torch.float32,
                           device=history.device)
    weights = base[: history.shape[1]].expand(len(history), -1) * (history != PAD)
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)


def ranking_nll(ranker: SlowRanker, candidates: torch.Tensor | None = None):
    """Per-sample negative log-likelihood of the target among all items (or target + ``candidates``).

    Returns ``loss_fn(net, (users, history, targets)) -> (B,)`` for `fisher_diagonal`. A
    candidate equal to the target is masked out.
    """
    n_items = len(ranker.items)

    def loss(net, batch) -> torch.Tensor:
        users, history, targets = batch
        weights = _history_weights(ranker, history)
        if candidates is None:
            logits = net(users, history, weights, torch.arange(n_items, device=users.device))
            return F.cross_entropy(logits, targets, reduction="none")
        vec = net.user_vectors(users, history, weights)
        pos = (vec * net.item_out(targets)).sum(-1) + net.item_bias(targets).squeeze(-1)
        neg = vec @ net.item_out(candidates).T + net.item_bias(candidates).squeeze(-1)
        neg = neg.masked_fill(candidates.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        return torch.logsumexp(torch.cat([pos.unsqueeze(1), neg], dim=1), dim=1) - pos

    return loss


def _closed_form_batch(net: SlowRankerNet, ranker: SlowRanker, sums: dict[str, torch.Tensor], users, history,
                       targets, candidates: torch.Tensor | None) -> None:
    weights = _history_weights(ranker, history)
    pooled = (net.item_in(history) * weights.unsqueeze(-1)).sum(dim=1)
    u = net.user_vectors(users, history, weights)
    u2 = u.pow(2)
    if candidates is None:
        items = torch.arange(len(ranker.items), device=users.device)
        g = torch.softmax(u @ net.item_out(items).T + net.item_bias(items).squeeze(-1), dim=1)
        g[torch.arange(len(targets)), targets] -= 1.0
        sums["item_out.weight"][items] += g.pow(2).T @ u2
        sums["item_bias.weight"][items, 0] += g.pow(2).sum(dim=0)
        grad_u = g @ net.item_out(items)
    else:
        pos = (u * net.item_out(targets)).sum(-1) + net.item_bias(targets).squeeze(-1)
        neg = u @ net.item_out(candidates).T + net.item_bias(candidates).squeeze(-1)
        neg = neg.masked_fill(candidates.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        p = torch.softmax(torch.cat([pos.unsqueeze(1), neg], dim=1), dim=1)
        g_pos, g_neg = p[:, 0] - 1.0, p[:, 1:]
        sums["item_out.weight"].index_add_(0, targets, g_pos.pow(2).unsqueeze(1) * u2)
        sums["item_out.weight"].index_add_(0, candidates, g_neg.pow(2).T @ u2)
        sums["item_bias.weight"].index_add_(0, targets, g_pos.pow(2).unsqueeze(1))
        sums["item_bias.weight"].index_add_(0, candidates, g_neg.pow(2).sum(dim=0).unsqueeze(1))
        grad_u = g_pos.unsqueeze(1) * net.item_out(targets) + g_neg @ net.item_out(candidates)
    g2 = grad_u.pow(2)
    known = users >= 0
    sums["user_emb.weight"].index_add_(0, users[known], g2[known])
    sums["pool.bias"] += g2.sum(dim=0)
    sums["pool.weight"] += g2.T @ pooled.pow(2)
    _add_history_rows(sums["item_in.weight"], history, weights, (grad_u @ net.pool.weight).pow(2))


def _add_history_rows(target: torch.Tensor, history: torch.Tensor, weights: torch.Tensor, z2: torch.Tensor) -> None:
    """Add ``s_h^2 * z2[sample]`` to row h, ``s_h`` the sample's summed weight of item h."""
    sample = torch.arange(len(history), device=history.device).unsqueeze(1).expand_as(history)
    real = history != PAD
    keys = sample[real] * target.shape[0] + history[real]
    unique, inverse = torch.unique(keys, return_inverse=True)
    summed = torch.zeros(len(unique), device=history.device).index_add_(0, inverse, weights[real])
    target.index_add_(0, unique % target.shape[0], summed.pow(2).unsqueeze(1) * z2[unique // target.shape[0]])


def _closed_form(ranker: SlowRanker, batches, candidates) -> dict[str, torch.Tensor]:
    net = ranker.net
    sums = {name: torch.zeros_like(p) for name, p in net.named_parameters()}
    count = 0
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for users, history, targets in batches:
                _closed_form_batch(net, ranker, sums, users, history, targets, candidates)
                count += len(users)
    finally:
        net.train(was_training)
    return {name: s / count if count else s for name, s in sums.items()}


def ranker_fisher(ranker: SlowRanker, examples: Examples, n_samples: int, seed: int = 0,
                  method: str = "auto") -> dict[str, torch.Tensor]:
    """Empirical Fisher of the ranker's ranking log-likelihood on ``n_samples`` of ``examples``.

    Scored against every item when the catalogue fits the ranker's ``negatives``, else against
    one seeded set of ``negatives`` distinct sampled items (plus the target). ``method``:
    ``"closed"`` (two-tower closed form), ``"vmap"`` (generic per-sample gradients) or
    ``"auto"`` (closed form whenever the net allows it).
    """
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(examples), size=min(n_samples, len(examples)), replace=False))
    dev = ranker.device
    candidates = None
    if ranker.negatives < len(ranker.items):
        candidates = torch.as_tensor(rng.choice(len(ranker.items), ranker.negatives, replace=False), device=dev)
    closed = method == "closed" or (method == "auto" and type(ranker.net) is SlowRankerNet
                                    and ranker.net.context is None)
    if closed:
        size = BATCH
    else:
        n_params = sum(p.numel() for p in ranker.net.parameters())
        size = int(max(1, min(256, VMAP_BATCH_BYTES // (8 * n_params))))
    batches = ((torch.as_tensor(examples.users[idx], device=dev), torch.as_tensor(examples.history[idx], device=dev),
                torch.as_tensor(examples.targets[idx], device=dev))
               for idx in (chosen[s:s + size] for s in range(0, len(chosen), size)))
    if closed:
        return _closed_form(ranker, batches, candidates)
    return fisher_diagonal(ranker.net, batches, ranking_nll(ranker, candidates), method="vmap")
