"""The slow ranker: a torch two-tower model trained in batches, served from numpy.

Training (warm-up, consolidation, fine-tuning) runs torch; scoring a request reads numpy
copies of the weights refreshed after every training call, so serving never runs autograd.
The item output vectors feed the FAISS item index; the per-event fast path adjusts the user
vector this model computes.

Context (optional, ``context=`` a spec such as `features.context.ContextSpec.as_dict` gives):
numeric user features enter the user tower, a category bucket and numeric item features the
item tower (`models.slow_net`). Training reads them per example (`Examples.user_context`,
``item_context``, ``item_category``: each event's features as of just before it); sampled
negatives read the item context table set with `set_item_table`, as of the time of the
examples they are scored against (`models.slow_context`). Scoring keeps the id part as it
was (`user_vector_rows`, `item_vectors`, `item_biases`) and adds `context_scores`, one
additive term per candidate; an item the model has no row for is scored by its context
alone. `context_item_vectors` folds the context part into per-item vectors and biases (what
FastSlow's fast path reads with context, `models.item_space`). A row of zeros and category bucket 0 mean "every
feature missing", which is what examples without context are given.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.slow_context import ContextArrays, ContextWeights, ItemContextTable, context_dims, time_batches
from models.slow_net import PAD, SlowRankerNet
from models.kernels import pool_histories
from models.vocab import Vocab

logger = logging.getLogger(__name__)

__all__ = ["ContextArrays", "Examples", "Penalty", "SlowRanker", "context_dims", "recency_weights"]

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
    user_context: np.ndarray | None = None
    """(n, n_user) numeric user features as of just before each event, or None."""
    item_context: np.ndarray | None = None
    """(n, n_item) numeric features of each target item as of just before its event, or None."""
    item_category: np.ndarray | None = None
    """(n,) category bucket of each target item (0: unknown), or None."""
    times: np.ndarray | None = None
    """(n,) unix seconds of each event (with context): negatives read the item table as of then."""

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def has_context(self) -> bool:
        return self.item_context is not None

    def with_context(self, user: np.ndarray, items: np.ndarray, categories: np.ndarray,
                     times: np.ndarray | None = None) -> "Examples":
        """The same examples carrying per-example context arrays (one row per example).

        ``times`` (the events' unix seconds) lets training read the negatives' context as of
        each example's time; without it negatives read the item table's latest values.
        """
        sizes = {len(user), len(items), len(categories), len(self)} | ({len(times)} if times is not None else set())
        if len(sizes) != 1:
            raise ValueError(f"context arrays have {len(user)}, {len(items)} and {len(categories)} rows "
                             f"for {len(self)} examples: build them from the same events, in order")
        return Examples(self.users, self.history, self.targets, self.weights, np.asarray(user, np.float32),
                        np.asarray(items, np.float32), np.asarray(categories, np.int64),
                        None if times is None else np.asarray(times, np.float64))

    def concat(self, other: "Examples") -> "Examples":
        """Both sets of examples; if only one carries context, the other's is all-missing (zeros)."""
        joined = Examples(np.concatenate([self.users, other.users]), np.concatenate([self.history, other.history]),
                          np.concatenate([self.targets, other.targets]), np.concatenate([self.weights, other.weights]))
        if not (self.has_context or other.has_context):
            return joined
        parts = [self._context_or_zeros(other), other._context_or_zeros(self)]
        times = (np.concatenate([self.times, other.times])
                 if self.times is not None and other.times is not None else None)
        return joined.with_context(*(np.concatenate([a, b]) for a, b in zip(*parts)), times=times)

    def _context_or_zeros(self, like: "Examples") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.has_context:
            return self.user_context, self.item_context, self.item_category
        n = len(self)
        return (np.zeros((n, like.user_context.shape[1]), np.float32),
                np.zeros((n, like.item_context.shape[1]), np.float32), np.zeros(n, np.int64))


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
    context
        Context features the model reads, as a plain dict (JSON-able, so it travels with the
        model through the registry): ``user`` and ``item`` (lists of numeric feature names),
        ``categories`` (number of category buckets, 0 for none), plus whatever else the
        feature provider needs to rebuild the same inputs (`features.context.ContextSpec`).
        None: ids and history only.
    cold_dropout
        With context: the share of training items (targets and negatives) whose id part is
        hidden, so the context part learns to score items on its own (items the model has no
        row for at serving time are scored that way).

    Examples
    --------
    >>> ranker = SlowRanker(dim=8, epochs=30, seed=0)
    >>> events = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "z"), ("c", "w")] * 5
    >>> ex = ranker.build_examples([u for u, _ in events], [i for _, i in events])
    >>> _ = ranker.fit(ex)
    >>> scores = ranker.score("new-user", ["x"], ["y", "w"])   # a stranger who just had x
    >>> bool(scores[0] > scores[1])
    True

    With context, an item trained on carries its category to items never trained on:

    >>> spec = {"user": [], "item": ["price"], "categories": 4}
    >>> ranker = SlowRanker(dim=8, epochs=40, seed=0, context=spec)
    >>> ex = ranker.build_examples([u for u, _ in events], [i for _, i in events])
    >>> category = {"x": 1, "y": 1, "z": 2, "w": 2}
    >>> cats = np.array([category[i] for _, i in events])
    >>> ex = ex.with_context(np.zeros((len(ex), 0)), np.zeros((len(ex), 1)), cats)
    >>> ranker.set_item_table(list(category), np.zeros((4, 1)), np.array(list(category.values())))
    >>> _ = ranker.fit(ex)
    >>> new = ContextArrays(np.zeros(0), np.zeros((2, 1)), np.array([1, 2]))  # unseen items: cat 1, cat 2
    >>> base = ranker.user_vector("new-user", ["x"])
    >>> scores = ranker.context_scores(base, np.array([-1, -1]), new)
    >>> bool(scores[0] > scores[1])
    True
    """

    def __init__(self, dim: int = 64, history: int = 50, history_decay: float = 0.9, epochs: int = 10,
                 batch_size: int = 512, lr: float = 0.005, weight_decay: float = 1e-6,
                 negatives: int = 4096, device: str = "cpu", seed: int = 0, context: dict | None = None,
                 cold_dropout: float = 0.2) -> None:
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
        self.context = context
        self.cold_dropout = cold_dropout
        self.users = Vocab()
        self.items = Vocab()
        self._rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        n_user, n_item, n_categories = context_dims(context)
        self.net = SlowRankerNet(1024, 1024, dim, n_user, n_item, n_categories).to(device)
        self._weights = recency_weights(history, history_decay)
        self._weights_f32 = self._weights.astype(np.float32)
        self._table = ItemContextTable([], np.zeros((0, n_item), np.float32), np.zeros(0, np.int64))
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
    # ------------------------------------------------------------------ context
    @property
    def uses_context(self) -> bool:
        """True if the model was built to read context (a `context` spec with features)."""
        return any(context_dims(getattr(self, "context", None)))

    def set_item_table(self, item_ids: Sequence[str], items: np.ndarray, categories: np.ndarray,
                       times: np.ndarray | None = None) -> None:
        """The item context that sampled negatives read while training (`ItemContextTable`).

        One entry per (item, time from which it holds). Without `times`, one snapshot (e.g.
        an online lookup right before training), read whatever the examples' times. Items
        without an entry read as all-missing.
        """
        self._table = ItemContextTable(item_ids, items, categories, times)

    def _context_loss(self, ex: Examples, idx: np.ndarray, users, hist, hist_w, targets,
                      table: np.ndarray) -> torch.Tensor:
        """Per-example softmax loss with context: targets read their own (point-in-time) context,
        negatives the item table as of the batch's earliest example; `cold_dropout` of both
        have their id part hidden. ``table``: table codes of this ranker's item rows."""
        dev, net = self.device, self.net
        user_ctx = torch.as_tensor(ex.user_context[idx], device=dev) if net.context is not None else None
        vec = net.user_vectors(users, hist, hist_w, user_ctx)
        hide = torch.as_tensor(self._rng.random(len(idx)) < self.cold_dropout, device=dev)
        pos_vec, pos_bias = net.item_parts(targets, torch.as_tensor(ex.item_context[idx], device=dev),
                                           torch.as_tensor(ex.item_category[idx], device=dev), hide)
        pos = (vec * pos_vec).sum(-1) + pos_bias
        n_items = len(self.items)
        negs = (torch.arange(n_items, device=dev) if self.negatives >= n_items else
                torch.as_tensor(self._rng.integers(0, n_items, size=self.negatives), device=dev))
        hide = torch.as_tensor(self._rng.random(len(negs)) < self.cold_dropout, device=dev)
        when = float(ex.times[idx].min()) if ex.times is not None else np.inf
        numeric, categories = self._table.as_of(table[negs.cpu().numpy()], when)
        neg_vec, neg_bias = net.item_parts(negs, torch.as_tensor(numeric, device=dev),
                                           torch.as_tensor(categories, device=dev), hide)
        neg = (vec @ neg_vec.T + neg_bias).masked_fill(negs.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        return torch.logsumexp(torch.cat([pos.unsqueeze(1), neg], dim=1), dim=1) - pos

    def _table_codes(self, examples: Examples) -> np.ndarray | None:
        """Item table codes of this ranker's item rows when these examples train the context
        part, else None: examples without context train the id part only."""
        if not (examples.has_context and self.uses_context):
            return None
        return self._table.rows_of(self.items.ids())

    def _batches(self, examples: Examples, timed: bool) -> list[np.ndarray]:
        """Shuffled batches; with a timed item table, of neighbouring times (`time_batches`)."""
        if timed and examples.times is not None and self._table.timed:
            return time_batches(examples.times, self.batch_size, self._rng)
        order = self._rng.permutation(len(examples))
        return [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def _batch_loss(self, ex: Examples, idx: np.ndarray,
                    table: np.ndarray | None = None) -> torch.Tensor:
        dev = self.device
        users = torch.as_tensor(ex.users[idx], device=dev)
        hist = torch.as_tensor(ex.history[idx], device=dev)
        hist_w = torch.as_tensor(self._weights, dtype=torch.float32, device=dev).expand(len(idx), -1)
        hist_w = hist_w * (hist != PAD)
        hist_w = hist_w / hist_w.sum(dim=1, keepdim=True).clamp(min=1e-12)
        targets = torch.as_tensor(ex.targets[idx], device=dev)
        n_items = len(self.items)
        if table is not None:
            losses = self._context_loss(ex, idx, users, hist, hist_w, targets, table)
        elif self.negatives >= n_items:
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
        table = self._table_codes(examples)
        was_training = self.net.training
        self.net.train()
        opt = torch.optim.Adam(self.net.parameters(), lr=lr or self.lr, weight_decay=self.weight_decay)
        history = []
        try:
            for epoch in range(epochs if epochs is not None else self.epochs):
                total, batches = 0.0, 0
                for batch in self._batches(examples, timed=table is not None):
                    loss = self._batch_loss(examples, batch, table)
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
        loss = self._batch_loss(examples, np.arange(len(examples)), self._table_codes(examples))
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
            self._context = ContextWeights.of(net)

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
        """The slow user vector from a user row (-1: unknown) and item rows, oldest first (-1 skipped).

        `user_vectors_rows` for one user, without its bookkeeping for many (the same arithmetic:
        one request pays this per event)."""
        flat = np.asarray(history_rows, dtype=np.int64)
        pooled = np.zeros((1, self.dim), dtype=np.float32)
        pool_histories(self._item_in, flat, np.array([len(flat)], dtype=np.int64), self._weights_f32, pooled)
        vec = pooled @ self._pool_w.T
        vec += self._pool_b
        if 0 <= user_row < len(self._user_emb):
            vec[0] += self._user_emb[user_row]
        return vec[0]

    def user_vectors_rows(self, user_rows: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Many slow user vectors at once: user rows (-1 unknown) and item-row histories, oldest first."""
        if len(histories) == 1:   # one request's user: no bookkeeping for many
            return self.user_vector_rows(int(np.asarray(user_rows)[0]), histories[0])[None, :]
        ends = np.cumsum(np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories)))
        flat = np.concatenate(histories).astype(np.int64, copy=False) if len(histories) else np.zeros(0, np.int64)
        pooled = np.zeros((len(histories), self.dim), dtype=np.float32)
        pool_histories(self._item_in, flat, ends, self._weights_f32, pooled)
        vec = pooled @ self._pool_w.T
        vec += self._pool_b
        users = np.asarray(user_rows, dtype=np.int64)
        ok = (users >= 0) & (users < len(self._user_emb))
        if ok.any():
            vec[ok] += self._user_emb[users[ok]]
        return vec

    def context_scores(self, base: np.ndarray, rows: np.ndarray, context: ContextArrays,
                       item_parts: np.ndarray | None = None) -> np.ndarray:
        """What context adds to each candidate's slow score, given the id-only user vector `base`.

        With ``u = base + C @ context.user`` (the user tower's context part) and each item's
        context part ``(e_j, b_j)`` (`item_context_parts`),

        - for an item row r >= 0: ``term = <u - base, item_out[r]> + <u, e_j> + b_j``, so
          ``<base, item_out[r]> + item_bias[r] + term`` is the full score;
        - for r = -1 (no row: an item the model never trained on): ``(e_j, b_j)`` include the
          unknown-item vector and bias, and ``term`` is the item's whole score (no id part).

        Returns zeros for a model without context. `rows` are this model's item rows (-1 for
        none). ``item_parts`` may pass `item_context_parts` computed before (for the same rows
        and item context) when many requests score the same catalogue.
        """
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros(len(rows), dtype=np.float32)
        if not self.uses_context:
            return out
        user_part = self._context.user_part(context.user)
        known = (rows >= 0) & (rows < len(self._item_out))
        out[known] = self._item_out[rows[known]] @ user_part
        if item_parts is None:
            item_parts = self.item_context_parts(rows, context.items, context.categories)
        u = np.asarray(base, np.float32) + user_part
        return out + item_parts[:, : self.dim] @ u + item_parts[:, self.dim]

    def item_context_parts(self, rows: np.ndarray, items: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """(N, dim + 1): each item's context vector (first dim columns) and context bias (last).

        Category embedding + projection of the numeric features, plus the unknown-item part
        for rows without an id (-1). Zeros for a model without item context.
        """
        rows = np.asarray(rows, dtype=np.int64)
        return self._context.item_parts((rows < 0) | (rows >= len(self._item_out)), items, categories)

    def context_user_vector(self, base: np.ndarray, user: np.ndarray) -> np.ndarray:
        """The user vector with context: the id-only vector `base` plus the user context part."""
        return np.asarray(base, np.float32) + self._context.user_part(user)

    def context_item_vectors(self, rows: np.ndarray, items: np.ndarray,
                             categories: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(item vectors V (N, dim), biases b (N,)) with context: full scores are ``V @ u + b``
        for u from `context_user_vector`. Rows without an id (-1) have no id part. To score a
        whole catalogue for many users, keep V and b while the items' context stays the same."""
        rows = np.asarray(rows, dtype=np.int64)
        known = (rows >= 0) & (rows < len(self._item_out))
        parts = self.item_context_parts(rows, items, categories)
        vectors, biases = parts[:, : self.dim].copy(), parts[:, self.dim].copy()
        vectors[known] += self._item_out[rows[known]]
        biases[known] += self._item_bias[rows[known]]
        return vectors, biases

    def score(self, user_id: str, recent_items: Sequence[str], item_ids: Sequence[str],
              context: ContextArrays | None = None) -> np.ndarray:
        """Scores of `item_ids` for the user; items the model never saw get -inf.

        With `context` (for these items, in this order) on a model that reads it, context is
        added (`context_scores`) and items the model never saw are scored by their context
        (the network's own score; rankings put them below known items, `below_known`).
        """
        vec = self.user_vector(user_id, recent_items)
        rows = self.items.lookup(item_ids)
        known = (rows >= 0) & (rows < len(self._item_out))
        with_context = context is not None and self.uses_context
        out = np.full(len(rows), 0.0 if with_context else -np.inf, dtype=np.float32)
        out[known] = self._item_out[rows[known]] @ vec + self._item_bias[rows[known]]
        if with_context:
            out += self.context_scores(vec, np.where(known, rows, -1), context)
        return out

    def clone(self) -> "SlowRanker":
        """An independent copy with the same weights and ids (consolidation trains a clone)."""
        return copy.deepcopy(self)


def slow_scores(ranker: SlowRanker, base: np.ndarray, rows: np.ndarray, context: ContextArrays | None,
                item_parts: np.ndarray | None = None) -> np.ndarray:
    """Raw slow scores of item rows (-1: no row) for a user vector `base`, context added.

    Without context an item with no row scores -inf. With it, items with no row rank below
    every item with one, in the order of their context scores (`below_known`).

    >>> ranker = SlowRanker(dim=4, context={"user": [], "item": ["x"], "categories": 0})
    >>> _ = ranker.build_examples(["u"], ["a"])
    >>> ranker.refresh()
    >>> ctx = ContextArrays(np.zeros(0), np.zeros((2, 1)), np.zeros(2, dtype=np.int64))
    >>> slow_scores(ranker, np.zeros(4), np.array([0, -1]), ctx).tolist()   # untrained: context adds 0
    [0.0, -1.0]
    >>> slow_scores(ranker, np.zeros(4), np.array([0, -1]), None).tolist()
    [0.0, -inf]
    """
    rows = np.asarray(rows, dtype=np.int64)
    known = (rows >= 0) & (rows < len(ranker.item_vectors))
    out = np.full(len(rows), -np.inf if context is None else 0.0, dtype=np.float32)
    out[known] = ranker.item_vectors[rows[known]] @ base + ranker.item_biases[rows[known]]
    if context is not None:
        out += ranker.context_scores(base, np.where(known, rows, -1), context, item_parts)
        out = below_known(out, known)
    return out


def below_known(scores: np.ndarray, known: np.ndarray) -> np.ndarray:
    """`scores` with the items the model has no row for moved below every item it has one for,
    keeping their order (and gaps) among themselves; items it knows keep their scores.

    Context alone scores a never-trained item on another scale than id + context: measured on
    the synthetic stream (60k events, `slow+features` NDCG@10), letting those scores compete
    gave 0.0354 against 0.0374 without context, ranking them below gave 0.0411.

    >>> below_known(np.array([2.0, 5.0, 1.0, 3.0]), np.array([True, False, True, False])).tolist()
    [2.0, 0.0, 1.0, -2.0]
    """
    unknown = ~np.asarray(known, dtype=bool)
    if not unknown.any() or unknown.all():
        return scores
    out = np.array(scores, copy=True)
    top = out[unknown].max()
    out[unknown] = out[~unknown].min() - 1.0 - (top - out[unknown])
    return out
