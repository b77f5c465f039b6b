"""Click-through rankers: DCN-v2 (full-rank cross network + deep tower, stacked
or parallel) and a plain MLP, as plain ``nn.Module``s.

Both take named 1-D tensors, one per feature, and return logits ``(B,)``:

* categorical features (``vocab_sizes``: name -> vocabulary size, id 0 is
  padding/unknown): int64 ``(B,)``, each looked up in its own embedding table;
* dense features (``dense_features``: names): float32 ``(B,)``, stacked.

``forward`` has a ``**features`` signature so the same net serves any feature
set; :attr:`input_names` gives the order (categorical sorted by name, then
dense as given) that export uses for its ONNX inputs.

Example::

    net = DCNv2({"user": 10, "item": 20}, ["price_log"], embedding_dim=4)
    logits = net(user=torch.tensor([1, 2]), item=torch.tensor([3, 4]),
                 price_log=torch.tensor([0.5, 1.0]))  # (2,)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn


class FeatureArch(nn.Module):
    """Embeddings of the categorical features concatenated with the dense ones.

    Output: ``(B, len(vocab_sizes) * embedding_dim + len(dense_features))``;
    categorical features in sorted name order (a JSON round trip of
    ``vocab_sizes`` with sorted keys must rebuild the same layout), then the
    dense ones in the given order.
    """

    def __init__(self, vocab_sizes: Mapping[str, int], dense_features: Sequence[str], embedding_dim: int):
        super().__init__()
        if not vocab_sizes:
            raise ValueError("a ranker needs at least one categorical feature")
        self.categorical = sorted(vocab_sizes)
        self.dense = list(dense_features)
        embeddings = {n: nn.Embedding(int(vocab_sizes[n]), embedding_dim) for n in self.categorical}
        for emb in embeddings.values():
            nn.init.normal_(emb.weight, std=0.05)
        self.embeddings = nn.ModuleDict(embeddings)
        self.out_dim = len(self.categorical) * embedding_dim + len(self.dense)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.embeddings[n](features[n]) for n in self.categorical]  # each (B, D)
        if self.dense:
            parts.append(torch.stack([features[n].float() for n in self.dense], dim=1))  # (B, n_dense)
        return torch.cat(parts, dim=1)  # (B, F)


class CrossNetwork(nn.Module):
    """DCN-v2 cross layers: ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``, full-rank
    ``W_l`` (F x F). Input and output ``(B, F)``."""

    def __init__(self, dim: int, n_layers: int):
        super().__init__()
        layers = [nn.Linear(dim, dim) for _ in range(n_layers)]
        for layer in layers:
            nn.init.xavier_uniform_(layer.weight, gain=0.5)
            nn.init.zeros_(layer.bias)
        self.layers = nn.ModuleList(layers)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x  # (B, F)
        return x


def mlp(in_dim: int, hidden: Sequence[int], dropout: float = 0.0) -> tuple[nn.Sequential, int]:
    """ReLU tower ``(B, in_dim) -> (B, hidden[-1])``; returns the module and its out dim."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = h
    return nn.Sequential(*layers), in_dim


class DCNv2(nn.Module):
    """Deep & Cross Network v2 (Wang et al., 2021).

    Args:
        vocab_sizes: categorical feature name -> vocabulary size (ids in ``[0, size)``).
        dense_features: names of the float features.
        embedding_dim: size of every embedding (D).
        n_cross: number of cross layers (L).
        deep: hidden sizes of the deep tower.
        structure: ``"stacked"`` (cross -> deep -> logit) or ``"parallel"``
            (cross and deep side by side, concatenated -> logit).
        dropout: dropout in the deep tower.

    Output: logits ``(B,)``.
    """

    def __init__(self, vocab_sizes: Mapping[str, int], dense_features: Sequence[str] = (),
                 embedding_dim: int = 16, n_cross: int = 3, deep: Sequence[int] = (256, 128),
                 structure: str = "stacked", dropout: float = 0.0):
        super().__init__()
        if structure not in ("stacked", "parallel"):
            raise ValueError(f"structure must be 'stacked' or 'parallel', got {structure!r}")
        self.structure = structure
        self.features = FeatureArch(vocab_sizes, dense_features, embedding_dim)
        f = self.features.out_dim
        self.cross = CrossNetwork(f, n_cross)
        self.deep, deep_out = mlp(f, deep, dropout)
        self.head = nn.Linear(deep_out if structure == "stacked" else f + deep_out, 1)

    @property
    def input_names(self) -> list[str]:
        return [*self.features.categorical, *self.features.dense]

    def forward(self, **features: torch.Tensor) -> torch.Tensor:
        x0 = self.features(features)  # (B, F)
        if self.structure == "stacked":
            h = self.deep(self.cross(x0))  # (B, H)
        else:
            h = torch.cat([self.cross(x0), self.deep(x0)], dim=1)  # (B, F + H)
        return self.head(h).squeeze(1)  # (B,)


class MLPRanker(nn.Module):
    """Embeddings + dense features -> ReLU MLP -> logit ``(B,)`` (no cross layers).

    Args: as :class:`DCNv2` without ``n_cross`` and ``structure``.
    """

    def __init__(self, vocab_sizes: Mapping[str, int], dense_features: Sequence[str] = (),
                 embedding_dim: int = 16, deep: Sequence[int] = (256, 128), dropout: float = 0.0):
        super().__init__()
        self.features = FeatureArch(vocab_sizes, dense_features, embedding_dim)
        self.deep, deep_out = mlp(self.features.out_dim, deep, dropout)
        self.head = nn.Linear(deep_out, 1)

    @property
    def input_names(self) -> list[str]:
        return [*self.features.categorical, *self.features.dense]

    def forward(self, **features: torch.Tensor) -> torch.Tensor:
        return self.head(self.deep(self.features(features))).squeeze(1)  # (B,)
