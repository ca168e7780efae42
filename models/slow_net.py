"""The torch network behind the slow ranker: a two-tower model over ids and recent history.

User tower: a learned per-user vector (zero for users it never trained on) plus a projection
of the recency-weighted mean of the user's recent items' input embeddings, plus an optional
projection of user context features. Item tower: an output embedding and a bias per item,
plus (optionally) item context: a learned embedding of the item's category bucket and a
projection of numeric item features, each giving a vector part and a bias part.
score(u, i) = <user vector, item vector> + item bias.

An item without an id row (-1: the net never trained on it), or whose id part is hidden on
purpose while training (``hide``: cold-start dropout), is scored by its context alone: its id
vector and bias are replaced by one learned "unknown item" vector and bias. Every context
layer starts at zero, so a net with context starts out scoring exactly like one without.

Because the user tower reads recent history, a model frozen after training still ranks for
users and histories it never saw; ids it never saw are rows that do not exist yet, never a
hash bucket shared with another id.
"""

from __future__ import annotations

import torch
from torch import nn

#: Row 0 of the history embedding is padding; item row r is stored at r + 1.
PAD = 0


class SlowRankerNet(nn.Module):
    """Two-tower ranking network with growable id tables.

    Examples
    --------
    >>> net = SlowRankerNet(n_users=2, n_items=3, dim=4)
    >>> users = torch.tensor([0, -1])                      # -1: a user the net never saw
    >>> history = torch.tensor([[1, 2], [3, PAD]])         # item rows + 1, 0 = padding
    >>> weights = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    >>> net(users, history, weights, torch.tensor([0, 2])).shape
    torch.Size([2, 2])
    >>> net.grow(n_users=5, n_items=7).item_out.num_embeddings
    7

    With context (2 user features, 3 numeric item features, 8 category buckets):

    >>> net = SlowRankerNet(n_users=2, n_items=3, dim=4, n_context=2, n_item_context=3, n_categories=8)
    >>> items = torch.tensor([0, -1])                      # -1: an item the net has no row for
    >>> net(users, history, weights, items, context=torch.ones(2, 2),
    ...     item_context=torch.ones(2, 3), item_category=torch.tensor([5, 0])).shape
    torch.Size([2, 2])
    """

    def __init__(self, n_users: int, n_items: int, dim: int, n_context: int = 0, n_item_context: int = 0,
                 n_categories: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.n_context = n_context
        self.n_item_context = n_item_context
        self.n_categories = n_categories
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_in = nn.Embedding(n_items + 1, dim, padding_idx=PAD)
        self.item_out = nn.Embedding(n_items, dim)
        self.item_bias = nn.Embedding(n_items, 1)
        self.pool = nn.Linear(dim, dim)
        nn.init.zeros_(self.user_emb.weight)
        nn.init.normal_(self.item_in.weight, std=0.1)
        nn.init.normal_(self.item_out.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)
        with torch.no_grad():
            self.item_in.weight[PAD].zero_()
        # context layers come after the id layers' random initialisation, so with a given
        # seed the id part starts out the same with or without context
        self.context = nn.Linear(n_context, dim, bias=False) if n_context else None
        # item context: columns 0..dim-1 add to the item vector, column dim to the item bias
        self.item_context = nn.Linear(n_item_context, dim + 1, bias=False) if n_item_context else None
        self.category = nn.Embedding(n_categories, dim + 1) if n_categories else None
        self.unknown_item = nn.Parameter(torch.zeros(dim + 1)) if n_item_context or n_categories else None
        for layer in (self.context, self.item_context, self.category):
            if layer is not None:
                nn.init.zeros_(layer.weight)

    @property
    def n_users(self) -> int:
        return self.user_emb.num_embeddings

    @property
    def n_items(self) -> int:
        return self.item_out.num_embeddings

    @property
    def has_item_context(self) -> bool:
        """True if the item tower reads context (category and/or numeric item features)."""
        return getattr(self, "unknown_item", None) is not None  # nets pickled before context: False

    def item_parts(self, items: torch.Tensor, item_context: torch.Tensor | None = None,
                   item_category: torch.Tensor | None = None,
                   hide: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors (B, dim), biases (B,)) of item rows (-1 = no row), with their context if given.

        ``hide`` (bool, B) replaces the id part of those items by the unknown-item part, as for
        an item without a row (cold-start dropout while training).
        """
        safe = items.clamp(min=0)
        vec, bias = self.item_out(safe), self.item_bias(safe).squeeze(-1)
        if not self.has_item_context:
            return vec, bias
        hidden = items < 0 if hide is None else (items < 0) | hide
        extra = self.unknown_item * hidden.unsqueeze(-1).to(vec.dtype)
        if self.item_context is not None and item_context is not None:
            extra = extra + self.item_context(item_context)
        if self.category is not None and item_category is not None:
            extra = extra + self.category(item_category)
        keep = (~hidden).to(vec.dtype)
        return vec * keep.unsqueeze(-1) + extra[:, : self.dim], bias * keep + extra[:, self.dim]

    def user_vectors(self, users: torch.Tensor, history: torch.Tensor, weights: torch.Tensor,
                     context: torch.Tensor | None = None) -> torch.Tensor:
        """User vectors (B, dim) from user rows (-1 = unknown), history rows+1 and their weights."""
        pooled = (self.item_in(history) * weights.unsqueeze(-1)).sum(dim=1)
        known = (users >= 0).unsqueeze(-1).to(pooled.dtype)
        vec = self.pool(pooled) + self.user_emb(users.clamp(min=0)) * known
        if self.context is not None and context is not None:
            vec = vec + self.context(context)
        return vec

    def forward(self, users: torch.Tensor, history: torch.Tensor, weights: torch.Tensor,
                items: torch.Tensor, context: torch.Tensor | None = None,
                item_context: torch.Tensor | None = None,
                item_category: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, len(items)) of every user in the batch against the same item rows.

        ``context`` is per user (B, n_context); ``item_context`` (len(items), n_item_context)
        and ``item_category`` (len(items),) are per item.
        """
        vec = self.user_vectors(users, history, weights, context)
        if not self.has_item_context:
            return vec @ self.item_out(items).T + self.item_bias(items).squeeze(-1)
        item_vec, item_bias = self.item_parts(items, item_context, item_category)
        return vec @ item_vec.T + item_bias

    def grow(self, n_users: int, n_items: int) -> "SlowRankerNet":
        """A copy with room for more users/items: old rows kept, new rows freshly initialised."""
        bigger = SlowRankerNet(max(n_users, self.n_users), max(n_items, self.n_items), self.dim,
                               self.n_context, getattr(self, "n_item_context", 0),
                               getattr(self, "n_categories", 0)).to(self.item_out.weight.device)
        with torch.no_grad():
            for name, param in self.state_dict().items():
                target = bigger.state_dict()[name]
                target[tuple(slice(0, s) for s in param.shape)] = param
        return bigger
