"""The torch network behind the slow ranker: a two-tower model over ids and recent history.

User tower: a learned per-user vector (zero for users it never trained on) plus a projection
of the recency-weighted mean of the user's recent items' input embeddings, plus an optional
projection of context features. Item tower: an output embedding and a bias per item.
score(u, i) = <user vector, item vector> + item bias.

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
    """

    def __init__(self, n_users: int, n_items: int, dim: int, n_context: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.n_context = n_context
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_in = nn.Embedding(n_items + 1, dim, padding_idx=PAD)
        self.item_out = nn.Embedding(n_items, dim)
        self.item_bias = nn.Embedding(n_items, 1)
        self.pool = nn.Linear(dim, dim)
        self.context = nn.Linear(n_context, dim, bias=False) if n_context else None
        nn.init.zeros_(self.user_emb.weight)
        nn.init.normal_(self.item_in.weight, std=0.1)
        nn.init.normal_(self.item_out.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)
        with torch.no_grad():
            self.item_in.weight[PAD].zero_()

    @property
    def n_users(self) -> int:
        return self.user_emb.num_embeddings

    @property
    def n_items(self) -> int:
        return self.item_out.num_embeddings

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
                items: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, len(items)) of every user in the batch against the same item rows."""
        vec = self.user_vectors(users, history, weights, context)
        return vec @ self.item_out(items).T + self.item_bias(items).squeeze(-1)

    def grow(self, n_users: int, n_items: int) -> "SlowRankerNet":
        """A copy with room for more users/items: old rows kept, new rows freshly initialised."""
        bigger = SlowRankerNet(max(n_users, self.n_users), max(n_items, self.n_items), self.dim,
                               self.n_context).to(self.item_out.weight.device)
        with torch.no_grad():
            for name, param in self.state_dict().items():
                target = bigger.state_dict()[name]
                target[tuple(slice(0, s) for s in param.shape)] = param
        return bigger
