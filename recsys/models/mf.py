"""Matrix factorisation: user and item embeddings, dot-product score (plain nn.Module)."""
from __future__ import annotations

import torch
from torch import nn


class MatrixFactorization(nn.Module):
    """``score(u, i) = <p_u, q_i> + b_i``.

    Example::

        >>> mf = MatrixFactorization(n_users=10, n_items=20, dim=8)
        >>> mf(torch.tensor([1, 2]), torch.tensor([3, 4])).shape
        torch.Size([2])
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 64):
        super().__init__()
        self.user = nn.Embedding(n_users + 1, dim)
        self.item = nn.Embedding(n_items + 1, dim)
        self.item_bias = nn.Embedding(n_items + 1, 1)
        nn.init.normal_(self.user.weight, std=0.05)
        nn.init.normal_(self.item.weight, std=0.05)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user(users) * self.item(items)).sum(-1) + self.item_bias(items).squeeze(-1)

    def all_scores(self, users: torch.Tensor) -> torch.Tensor:
        """``(B, n_items + 1)`` scores of every item."""
        return self.user(users) @ self.item.weight.T + self.item_bias.weight.T
