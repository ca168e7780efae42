"""The slow ranker: a torch two-tower model trained in batches, served from numpy.

Training (warm-up, consolidation, fine-tuning) runs torch; scoring a request reads numpy
copies of the weights refreshed after every training call, so serving never runs autograd.
The item output vectors feed the FAISS item index; the per-event fast path adjusts the user
vector this model computes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from models.slow_net import PAD, SlowRankerNet
from models.tails import tails
from models.vocab import Vocab

logger = logging.getLogger(__name__)

#: An extra loss term computed from the network (EWC uses this).
Penalty = Callable[[SlowRankerNet], torch.Tensor]


def recency_weights(length: int, decay: float) -> np.ndarray:
    """Weights decay**age for ages 0..length-1 (0 = most recent), summing to 1.

    >>> recency_weights(3, 0.5).round(4).tolist()
    [0.5714, 0.2857, 0.1429]
    """
    w = decay ** np.arange(length, dtype=np.float64)
    return w / w.sum() if length else w


@dataclass
class Examples:
    """Training examples: predict `targets` from user row and recent history (rows + 1)."""

    users: np.ndarray
    history: np.ndarray
    """(n, L) item rows + 1, most recent first, PAD (0) where shorter."""
    targets: np.ndarray
    weights: np.ndarray
    """Per-example loss weight (1.0 for observed events)."""

    def __len__(self) -> int:
        return len(self.targets)

    def concat(self, other: "Examples") -> "Examples":
        return Examples(np.concatenate([self.users, other.users]), np.concatenate([self.history, other.history]),
                        np.concatenate([self.targets, other.targets]), np.concatenate([self.weights, other.weights]))


class SlowRanker:
    """Ranking model for implicit feedback with ids that keep arriving.

    Parameters
    ----------
    dim
        Embedding size.
    history
        How many of a user's most recent items the user tower reads.
    history_decay
        Weight of an item `a` steps back in the history is proportional to decay**a.
    epochs, batch_size, lr, weight_decay
        Training schedule (Adam).
    negatives
        Sampled negatives per batch for the softmax; a catalogue no larger uses a full softmax.
    device
        torch device for training ("cpu", "cuda").
    seed
        Seed for initialisation, shuffling and negative sampling.

    Examples
    --------
    >>> ranker = SlowRanker(dim=8, epochs=30, seed=0)
    >>> events = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "z"), ("c", "w")] * 5
    >>> ex = ranker.build_examples([u for u, _ in events], [i for _, i in events])
    >>> _ = ranker.fit(ex)
    >>> scores = ranker.score("new-user", ["x"], ["y", "w"])   # a stranger who just had x
    >>> bool(scores[0] > scores[1])
    True
    """

    def __init__(self, dim: int = 64, history: int = 50, history_decay: float = 0.9, epochs: int = 10,
                 batch_size: int = 512, lr: float = 0.005, weight_decay: float = 1e-6,
                 negatives: int = 4096, device: str = "cpu", seed: int = 0) -> None:
        self.dim = dim
        self.history = history
        self.history_decay = history_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.negatives = negatives
        self.device = device
        self.seed = seed
        self.users = Vocab()
        self.items = Vocab()
        self._rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.net = SlowRankerNet(1024, 1024, dim).to(device)
        self._weights = recency_weights(history, history_decay)
        self.refresh()

    # ------------------------------------------------------------------ ids and examples
    def _ensure_capacity(self) -> None:
        n_users, n_items = len(self.users), len(self.items)
        if n_users > self.net.n_users or n_items > self.net.n_items:
            grow = lambda need, have: have if need <= have else max(need, 2 * have)
            self.net = self.net.grow(grow(n_users, self.net.n_users), grow(n_items, self.net.n_items))

    def build_examples(self, users: Sequence[str], items: Sequence[str],
                       initial_history: dict[str, Sequence[str]] | None = None,
                       weights: Sequence[float] | None = None) -> Examples:
        """Examples from time-ordered events, registering new ids (the tables grow to fit).

        Each event's history is the user's previous items: those in `initial_history` (items
        before the first event, oldest first) followed by the user's earlier events here.
        """
        recent: dict[str, list[int]] = {}
        if initial_history:
            for u, hist in initial_history.items():
                recent[u] = [self.items.add(i) + 1 for i in hist][-self.history:]
        n = len(items)
        hist = np.full((n, self.history), PAD, dtype=np.int64)
        user_rows = np.empty(n, dtype=np.int64)
        targets = np.empty(n, dtype=np.int64)
        for e, (u, i) in enumerate(zip(users, items)):
            user_rows[e] = self.users.add(u)
            targets[e] = self.items.add(i)
            mine = recent.setdefault(u, [])
            if mine:
                past = mine[::-1]
                hist[e, : len(past)] = past
            mine.append(targets[e] + 1)
            if len(mine) > self.history:
                del mine[0]
        self._ensure_capacity()
        w = np.ones(n, dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
        return Examples(user_rows, hist, targets, w)

    # ------------------------------------------------------------------ training
    def _batch_loss(self, ex: Examples, idx: np.ndarray) -> torch.Tensor:
        dev = self.device
        users = torch.as_tensor(ex.users[idx], device=dev)
        hist = torch.as_tensor(ex.history[idx], device=dev)
        hist_w = torch.as_tensor(self._weights, dtype=torch.float32, device=dev).expand(len(idx), -1)
        hist_w = hist_w * (hist != PAD)
        hist_w = hist_w / hist_w.sum(dim=1, keepdim=True).clamp(min=1e-12)
        targets = torch.as_tensor(ex.targets[idx], device=dev)
        n_items = len(self.items)
        if self.negatives >= n_items:
            logits = self.net(users, hist, hist_w, torch.arange(n_items, device=dev))
            losses = F.cross_entropy(logits, targets, reduction="none")
        else:
            negs = torch.as_tensor(self._rng.integers(0, n_items, size=self.negatives), device=dev)
            vec = self.net.user_vectors(users, hist, hist_w)
            pos = (vec * self.net.item_out(targets)).sum(-1) + self.net.item_bias(targets).squeeze(-1)
            neg = vec @ self.net.item_out(negs).T + self.net.item_bias(negs).squeeze(-1)
            neg = neg.masked_fill(negs.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
            losses = -pos + torch.logsumexp(torch.cat([pos.unsqueeze(1), neg], dim=1), dim=1)
        w = torch.as_tensor(ex.weights[idx], device=dev)
        return (losses * w).sum() / w.sum().clamp(min=1e-12)

    def fit(self, examples: Examples, epochs: int | None = None, penalty: Penalty | None = None,
            on_epoch: Callable[[int, float], None] | None = None, lr: float | None = None) -> list[float]:
        """Train on `examples` (plus `penalty(net)` per batch); returns the mean loss per epoch."""
        if not len(examples):
            return []
        self._ensure_capacity()
        was_training = self.net.training
        self.net.train()
        opt = torch.optim.Adam(self.net.parameters(), lr=lr or self.lr, weight_decay=self.weight_decay)
        history = []
        try:
            for epoch in range(epochs if epochs is not None else self.epochs):
                order = self._rng.permutation(len(examples))
                total, batches = 0.0, 0
                for start in range(0, len(order), self.batch_size):
                    loss = self._batch_loss(examples, order[start:start + self.batch_size])
                    if penalty is not None:
                        loss = loss + penalty(self.net)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total, batches = total + loss.item(), batches + 1
                history.append(total / max(batches, 1))
                if on_epoch is not None:
                    on_epoch(epoch, history[-1])
        finally:
            self.net.train(was_training)
        self.refresh()
        return history

    def sgd_step(self, examples: Examples, lr: float) -> float:
        """One plain SGD step on `examples` (the naive fine-tuning baseline)."""
        self._ensure_capacity()
        loss = self._batch_loss(examples, np.arange(len(examples)))
        self.net.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in self.net.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
        self.refresh()
        return loss.item()

    # ------------------------------------------------------------------ serving (numpy)
    def refresh(self) -> None:
        """Copy the weights into the numpy arrays scoring reads (after any training)."""
        net = self.net
        with torch.no_grad():
            n_items = len(self.items)
            self._item_out = net.item_out.weight[:n_items].detach().cpu().numpy().astype(np.float32)
            self._item_bias = net.item_bias.weight[:n_items, 0].detach().cpu().numpy().astype(np.float32)
            self._item_in = net.item_in.weight.detach().cpu().numpy().astype(np.float32)
            self._pool_w = net.pool.weight.detach().cpu().numpy().astype(np.float32)
            self._pool_b = net.pool.bias.detach().cpu().numpy().astype(np.float32)
            self._user_emb = net.user_emb.weight.detach().cpu().numpy().astype(np.float32)

    @property
    def item_vectors(self) -> np.ndarray:
        """(n_items, dim) item output vectors, row = `items` row."""
        return self._item_out

    @property
    def item_biases(self) -> np.ndarray:
        return self._item_bias

    def user_vector(self, user_id: str, recent_items: Sequence[str]) -> np.ndarray:
        """The slow user vector from the user's id and recent item ids (oldest first)."""
        rows = self.items.lookup(recent_items[-self.history:])
        return self.user_vector_rows(self.users.get(user_id), rows)

    def user_vector_rows(self, user_row: int, history_rows: np.ndarray) -> np.ndarray:
        """The slow user vector from a user row (-1: unknown) and item rows, oldest first (-1 skipped)."""
        rows = np.asarray(history_rows[-self.history:], dtype=np.int64)[::-1]
        known = rows >= 0
        vec = self._pool_b.copy()
        if known.any():
            w = self._weights[: len(rows)][known]
            vec += self._pool_w @ ((w / w.sum()).astype(np.float32) @ self._item_in[rows[known] + 1])
        if 0 <= user_row < len(self._user_emb):
            vec += self._user_emb[user_row]
        return vec

    def user_vectors_rows(self, user_rows: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Many slow user vectors at once: user rows (-1 unknown) and item-row histories, oldest first."""
        n = len(histories)
        rows, owner, age = tails(histories, self.history)
        known = rows >= 0
        rows, owner, w = rows[known], owner[known], self._weights[age[known]]
        totals = np.bincount(owner, weights=w, minlength=n)
        w = w / totals[owner]
        if len(rows) <= 4 * self.history:   # a handful of users: a direct gather is cheaper
            pooled = np.zeros((n, self.dim), dtype=np.float32)
            np.add.at(pooled, owner, (w[:, None] * self._item_in[rows + 1]).astype(np.float32))
        else:
            pooling = sp.csr_matrix((w.astype(np.float32), (owner, rows + 1)), shape=(n, len(self._item_in)))
            pooled = np.asarray(pooling @ self._item_in)
        vec = pooled @ self._pool_w.T + self._pool_b
        users = np.asarray(user_rows, dtype=np.int64)
        ok = (users >= 0) & (users < len(self._user_emb))
        vec[ok] += self._user_emb[users[ok]]
        return vec.astype(np.float32)

    def score(self, user_id: str, recent_items: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Scores of `item_ids` for the user; items the model never saw get -inf."""
        vec = self.user_vector(user_id, recent_items)
        rows = self.items.lookup(item_ids)
        known = (rows >= 0) & (rows < len(self._item_out))
        out = np.full(len(rows), -np.inf, dtype=np.float32)
        out[known] = self._item_out[rows[known]] @ vec + self._item_bias[rows[known]]
        return out

    def clone(self) -> "SlowRanker":
        """An independent copy with the same weights and ids (consolidation trains a clone)."""
        return copy.deepcopy(self)
