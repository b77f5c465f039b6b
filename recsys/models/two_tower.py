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

Constructor options are typed specs: :class:`ItemInputs` and :class:`UserInputs`
(what describes an item / a user; sizes come from the data module's
vocabularies) and :class:`TowerArch` (sizes, pooling, score; the ``net`` config).
Each accepts the dataclass or a mapping of its fields, so ``model_args.json``
(:meth:`TwoTower.model_args`) rebuilds the net with ``TwoTower(**model_args)``.

Feature tensors are dicts: ``{"id": (N,) int64, "<categorical>": (N,) int64,
"<multi-hot>": (N, T) int64 padded with 0}``; value 0 always means
missing / unknown and embeds to zeros.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ID = "id"
SpecT = TypeVar("SpecT", bound="DataclassInstance")


def hash_bucket(key: str, n_buckets: int) -> int:
    """Stable hash of a raw id into ``1..n_buckets`` (0 is reserved for 'no id')."""
    return zlib.crc32(key.encode("utf-8")) % n_buckets + 1


def as_spec(cls: type[SpecT], value: SpecT | Mapping[str, Any] | None, name: str) -> SpecT:
    """``value`` if it is a ``cls``, else ``cls(**value)`` (a dict, e.g. from JSON or a
    Hydra config node); ``None`` = the defaults. Unknown keys are a one-line TypeError."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"{name}: unknown option(s) {unknown} for {cls.__name__} "
                            f"(fields: {[f.name for f in fields(cls)]})")
        return cls(**value)
    raise TypeError(f"{name}: expected a {cls.__name__} or a mapping of its fields, got {type(value).__name__}")


def _sizes(d: Mapping[str, int] | None) -> dict[str, int]:
    return {str(k): int(v) for k, v in (d or {}).items()}


@dataclass(frozen=True)
class ItemInputs:
    """What describes an item (sizes from the data module's vocabularies).

    Args:
        n_id_buckets (int): hashed-id embedding size, bucket 0 = no id (0: no ids).
        categorical (dict[str, int]): ``{feature: vocab size incl. 0}``.
        multi_hot (dict[str, int]): ``{feature: vocab size incl. 0}`` (bags of tokens).
    """

    n_id_buckets: int = 0
    categorical: dict[str, int] = field(default_factory=dict)
    multi_hot: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "categorical", _sizes(self.categorical))
        object.__setattr__(self, "multi_hot", _sizes(self.multi_hot))


@dataclass(frozen=True)
class UserInputs:
    """What describes a user.

    Args:
        n_id_buckets (int): hashed-id embedding size (0: no ids).
        categorical (dict[str, int]): ``{feature: vocab size incl. 0}``.
        max_history (int): items of history the user tower reads (left-padded, most recent last).
    """

    n_id_buckets: int = 0
    categorical: dict[str, int] = field(default_factory=dict)
    max_history: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "categorical", _sizes(self.categorical))


@dataclass(frozen=True)
class TowerArch:
    """Sizes and scoring of both towers (the ``net`` config).

    Args:
        dim (int): embedding / output size.
        hidden (int): MLP hidden size of both towers.
        pooling (str): ``mean`` or ``attention`` over the history.
        normalize (bool): cosine score (L2-normalised vectors) instead of dot product.
        dropout (float): MLP dropout.
        use_item_id, use_user_id (bool): embed the hashed ids (when the inputs have buckets).
    """

    dim: int = 64
    hidden: int = 128
    pooling: str = "mean"
    normalize: bool = False
    dropout: float = 0.0
    use_item_id: bool = True
    use_user_id: bool = True


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
    """Item features -> ``(N, arch.dim)``."""

    def __init__(self, inputs: ItemInputs, arch: TowerArch):
        super().__init__()
        dim = arch.dim
        self.features = FeatureEmbedder(inputs.n_id_buckets, dict(inputs.categorical), dict(inputs.multi_hot), dim,
                                        arch.use_item_id)
        if self.features.n_fields == 0:
            raise ValueError("the item tower needs an id embedding or at least one feature")
        self.mlp = _mlp(self.features.n_fields * dim, arch.hidden, dim, arch.dropout)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.features(feats))


class UserTower(nn.Module):
    """User features + pooled history vectors -> ``(B, arch.dim)``."""

    def __init__(self, inputs: UserInputs, arch: TowerArch):
        super().__init__()
        if arch.pooling not in ("mean", "attention"):
            raise ValueError(f"pooling must be 'mean' or 'attention', got {arch.pooling!r}")
        dim, max_history = arch.dim, inputs.max_history
        self.features = FeatureEmbedder(inputs.n_id_buckets, dict(inputs.categorical), {}, dim, arch.use_user_id)
        self.pooling, self.max_history = arch.pooling, max_history
        n_ctx = self.features.n_fields * dim
        if arch.pooling == "attention":
            self.pos = nn.Embedding(max_history, dim)  # position counted from the most recent item
            nn.init.normal_(self.pos.weight, std=0.02)
            self.key = nn.Linear(dim, dim)
            self.query = nn.Parameter(torch.randn(dim) * 0.05)
            self.query_ctx = nn.Linear(n_ctx, dim) if n_ctx else None
        self.mlp = _mlp(n_ctx + dim, arch.hidden, dim, arch.dropout)

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
    """Item tower x user tower.

    Args:
        n_items (int): catalogue size (kept for artifacts; items are described by features).
        items (ItemInputs | dict): what describes an item; an item with neither ids nor
            features falls back to ``2 * n_items + 1`` hashed-id buckets.
        users (UserInputs | dict): what describes a user, and ``max_history``.
        arch (TowerArch | dict): sizes, pooling, dropout, cosine or dot score.

    Outputs: :meth:`item_vectors` ``N X dim``; :meth:`user_vectors` ``B X dim``.

    Example::

        net = TwoTower(100, ItemInputs(n_id_buckets=64, categorical={"genre": 5}),
                       UserInputs(n_id_buckets=32, max_history=20), TowerArch(dim=16, hidden=32))
        items = net.item_vectors({"id": torch.arange(101) % 65, "genre": torch.zeros(101, dtype=torch.long)})
        users = net.user_vectors(torch.tensor([3]), torch.tensor([[0, 7, 9]]), {}, items)  # 1 X 16
    """

    def __init__(self, n_items: int, items: ItemInputs | Mapping[str, Any] | None = None,
                 users: UserInputs | Mapping[str, Any] | None = None,
                 arch: TowerArch | Mapping[str, Any] | None = None):
        super().__init__()
        self.item_inputs = as_spec(ItemInputs, items, "items")
        self.user_inputs = as_spec(UserInputs, users, "users")
        self.arch = as_spec(TowerArch, arch, "arch")
        items, arch = self.item_inputs, self.arch
        self.n_items, self.dim, self.normalize = n_items, arch.dim, arch.normalize
        self.max_history = self.user_inputs.max_history
        item_arch = arch
        if items.n_id_buckets <= 0 and not (items.categorical or items.multi_hot):
            # nothing else describes an item: fall back to hashed ids
            items, item_arch = replace(items, n_id_buckets=2 * n_items + 1), replace(arch, use_item_id=True)
        self.item_tower = ItemTower(items, item_arch)
        self.user_tower = UserTower(self.user_inputs, arch)

    def model_args(self) -> dict[str, Any]:
        """JSON-ready constructor arguments: ``TwoTower(**net.model_args())`` rebuilds this net."""
        return {"n_items": int(self.n_items), "items": asdict(self.item_inputs), "users": asdict(self.user_inputs),
                "arch": asdict(self.arch)}

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
