"""Two-tower retrieval model (plain nn.Modules).

- :class:`ItemTower`: hashed item-id embedding (bucket 0 = no id, e.g. an item
  never seen in training) + categorical feature embeddings + multi-hot features
  (``EmbeddingBag``, mean over the non-padding tokens) -> MLP -> ``dim``.
  An item without an id still gets a vector from its features (cold start).
- :class:`UserTower`: hashed user-id embedding (optional) + categorical user
  features + a pooled embedding (``mean`` or ``attention``) of the last
  ``max_history`` items (left-padded, 0 = pad), each represented by its item
  tower vector -> MLP -> ``dim``.
- :class:`TwoTower`: both towers; score = dot product, or cosine when
  ``normalize`` (the temperature lives in the training module).

Feature tensors are dicts: ``{"id": (N,) int64, "<categorical>": (N,) int64,
"<multi-hot>": (N, T) int64 padded with 0}``; value 0 always means
missing / unknown and embeds to zeros.
"""
from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

ID = "id"


def hash_bucket(key: str, n_buckets: int) -> int:
    """Stable hash of a raw id into ``1..n_buckets`` (0 is reserved for 'no id')."""
    return zlib.crc32(key.encode("utf-8")) % n_buckets + 1


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class FeatureEmbedder(nn.Module):
    """Hashed id + categorical + multi-hot features -> concatenated ``(N, n_fields * dim)``."""

    def __init__(self, n_id_buckets: int, categorical: dict[str, int], multi_hot: dict[str, int], dim: int,
                 use_id: bool = True):
        super().__init__()
        self.use_id = use_id and n_id_buckets > 0
        self.id_emb = nn.Embedding(n_id_buckets + 1, dim, padding_idx=0) if self.use_id else None
        self.cat_names, self.multi_names = sorted(categorical), sorted(multi_hot)
        self.cat = nn.ModuleList(nn.Embedding(categorical[n], dim, padding_idx=0) for n in self.cat_names)
        self.multi = nn.ModuleList(nn.EmbeddingBag(multi_hot[n], dim, mode="mean", padding_idx=0)
                                   for n in self.multi_names)
        for m in [*self.cat, *self.multi, *([self.id_emb] if self.id_emb is not None else [])]:
            nn.init.normal_(m.weight, std=0.05)
            with torch.no_grad():
                m.weight[0].zero_()
        self.n_fields = int(self.use_id) + len(self.cat_names) + len(self.multi_names)
        self.dim = dim

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.id_emb is not None:
            parts.append(self.id_emb(feats[ID]))
        parts += [emb(feats[n]) for n, emb in zip(self.cat_names, self.cat)]
        parts += [emb(feats[n]) for n, emb in zip(self.multi_names, self.multi)]
        return torch.cat(parts, dim=-1)


class ItemTower(nn.Module):
    def __init__(self, n_id_buckets: int, categorical: dict[str, int], multi_hot: dict[str, int], dim: int,
                 hidden: int, dropout: float = 0.0, use_id: bool = True):
        super().__init__()
        self.features = FeatureEmbedder(n_id_buckets, categorical, multi_hot, dim, use_id)
        if self.features.n_fields == 0:
            raise ValueError("the item tower needs an id embedding or at least one feature")
        self.mlp = _mlp(self.features.n_fields * dim, hidden, dim, dropout)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.features(feats))


class UserTower(nn.Module):
    def __init__(self, n_id_buckets: int, categorical: dict[str, int], dim: int, hidden: int,
                 pooling: str = "mean", max_history: int = 50, dropout: float = 0.0, use_id: bool = True):
        super().__init__()
        if pooling not in ("mean", "attention"):
            raise ValueError(f"pooling must be 'mean' or 'attention', got {pooling!r}")
        self.features = FeatureEmbedder(n_id_buckets, categorical, {}, dim, use_id)
        self.pooling, self.max_history = pooling, max_history
        n_ctx = self.features.n_fields * dim
        if pooling == "attention":
            self.pos = nn.Embedding(max_history, dim)  # position counted from the most recent item
            nn.init.normal_(self.pos.weight, std=0.02)
            self.key = nn.Linear(dim, dim)
            self.query = nn.Parameter(torch.randn(dim) * 0.05)
            self.query_ctx = nn.Linear(n_ctx, dim) if n_ctx else None
        self.mlp = _mlp(n_ctx + dim, hidden, dim, dropout)

    def pool(self, history: torch.Tensor, hist_vecs: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        mask = history > 0  # B, L
        if self.pooling == "mean":
            w = mask.to(hist_vecs.dtype)
            return (hist_vecs * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1.0)
        L = history.shape[1]
        pos = self.pos(torch.arange(L - 1, -1, -1, device=history.device).clamp(max=self.max_history - 1))
        keys = self.key(hist_vecs + pos)  # B, L, D
        q = self.query.expand(history.shape[0], -1)  # shape[0], not len(): keeps the batch dim symbolic under torch.export
        if self.query_ctx is not None and ctx is not None:
            q = q + self.query_ctx(ctx)
        att = (keys * q[:, None, :]).sum(-1) / keys.shape[-1] ** 0.5
        att = att.masked_fill(~mask, float("-inf"))
        w = torch.softmax(att, dim=1).nan_to_num(0.0)  # all-padding rows -> zeros
        return (w[..., None] * (hist_vecs + pos)).sum(1) * mask.any(1, keepdim=True)

    def forward(self, user_feats: dict[str, torch.Tensor], history: torch.Tensor,
                hist_vecs: torch.Tensor) -> torch.Tensor:
        ctx = self.features(user_feats) if self.features.n_fields else None
        pooled = self.pool(history, hist_vecs, ctx)
        x = pooled if ctx is None else torch.cat([ctx, pooled], dim=-1)
        return self.mlp(x)


class TwoTower(nn.Module):
    """Args:
        n_items: catalogue size (kept for artifacts; items are described by features).
        dim: embedding / output size.
        hidden: MLP hidden size of both towers.
        n_item_buckets, n_user_buckets: hashed-id embedding sizes (0 disables ids).
        item_categorical, item_multi_hot, user_categorical: ``{feature: vocab size incl. 0}``.
        pooling: ``mean`` or ``attention`` over the last ``max_history`` items.
        normalize: cosine score (L2-normalised vectors) instead of dot product.
    """

    def __init__(self, n_items: int, dim: int = 64, hidden: int = 128, n_item_buckets: int = 0,
                 n_user_buckets: int = 0, item_categorical: dict[str, int] | None = None,
                 item_multi_hot: dict[str, int] | None = None, user_categorical: dict[str, int] | None = None,
                 pooling: str = "mean", max_history: int = 50, normalize: bool = False, dropout: float = 0.0,
                 use_item_id: bool = True, use_user_id: bool = True):
        super().__init__()
        self.n_items, self.dim, self.normalize, self.max_history = n_items, dim, normalize, max_history
        if n_item_buckets <= 0 and not (item_categorical or item_multi_hot):
            n_item_buckets = 2 * n_items + 1  # nothing else describes an item: fall back to hashed ids
            use_item_id = True
        self.item_tower = ItemTower(n_item_buckets, dict(item_categorical or {}), dict(item_multi_hot or {}), dim,
                                    hidden, dropout, use_item_id)
        self.user_tower = UserTower(n_user_buckets, dict(user_categorical or {}), dim, hidden, pooling, max_history,
                                    dropout, use_user_id)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def item_vectors(self, item_feature_tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(N, dim)`` vectors of the items described by the feature tensors."""
        return self._out(self.item_tower(item_feature_tensors))

    def user_vectors(self, user_idx: torch.Tensor, history: torch.Tensor, user_features: dict[str, torch.Tensor],
                     item_vecs: torch.Tensor) -> torch.Tensor:
        """``(B, dim)`` user vectors.

        Args:
            user_idx: ``(B,)`` hashed user-id buckets (0 = unknown user).
            history: ``(B, L)`` item indices, left-padded with 0, most recent last.
            user_features: ``{name: (B,)}`` categorical codes.
            item_vecs: item vectors, either a table ``(n_items + 1, dim)`` indexed by
                ``history`` or the history's vectors ``(B, L, dim)``.
        """
        hist_vecs = item_vecs if item_vecs.dim() == 3 else item_vecs[history]
        feats = {ID: user_idx, **user_features}
        return self._out(self.user_tower(feats, history, hist_vecs))
