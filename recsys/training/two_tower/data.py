"""Lightning DataModule for the two-tower model.

- Feature tensors from the prepared side tables: hashed ids (bucket 0 for items
  that have no training interaction, so they are described by features only),
  categorical columns (string, or numeric cut into quantile buckets) and
  multi-hot list columns. Vocabularies are built from the rows that appear in
  training (values seen only on cold items map to 0 = unknown) and are JSON.
- Training pairs: one per training interaction, ``(user, the user's last
  max_history training items before it, positive item)``.
- Item frequencies of the training positives (logQ correction) and the sorted
  ``user * (n_items + 1) + item`` keys of training positives (masking a user's own
  positives out of the in-batch negatives).
- Evaluation batches are row indices into the split's EvalSets, each process
  taking every ``world_size``-th row (exact gathered metrics, as for sequences).

Options are two specs: :class:`FeatureSpec` (which side columns, how they are
encoded) and :class:`LoaderSpec` (batch sizes, workers, shuffling seed); the
``datamodule`` config nests them under ``features:`` and ``loader:``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from recsys import schema as S
from recsys.data.prepare import PreparedData
from recsys.data.splits import EvalSet, Split
from recsys.models.two_tower import ID, ItemInputs, UserInputs, as_spec, hash_bucket
from recsys.training.sequence.data import check_positive_int
from recsys.utils.sparse import left_pad
from recsys.utils.errors import DataError
from recsys.utils.sparse import CSR

N_QUANTILE_BUCKETS = 8


def _auto_columns(table: pa.Table, skip: Sequence[str], max_vocab: int) -> tuple[list[str], list[str]]:
    """Categorical and multi-hot columns worth embedding: strings/numbers with
    2..max_vocab values that are not near-unique (ids, zip codes), string lists."""
    cat, multi = [], []
    n = max(table.num_rows, 1)
    for f in table.schema:
        if f.name in skip:
            continue
        col = table.column(f.name)
        if pa.types.is_list(f.type) and pa.types.is_string(f.type.value_type):
            k = len(pc.unique(pc.list_flatten(col)))
            if 2 <= k <= max_vocab:
                multi.append(f.name)
        elif pa.types.is_string(f.type) or pa.types.is_integer(f.type) or pa.types.is_floating(f.type):
            k = len(pc.unique(col))
            if pa.types.is_string(f.type) and (k < 2 or k > max_vocab or k > 0.5 * n):
                continue
            if k >= 2:
                cat.append(f.name)
    return cat, multi


def _as_strings(table: pa.Table, name: str) -> list[Any]:
    col = table.column(name)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        x = col.to_numpy(zero_copy_only=False).astype(np.float64)
        ok = ~np.isnan(x)
        edges = np.unique(np.quantile(x[ok], np.linspace(0, 1, N_QUANTILE_BUCKETS + 1)[1:-1])) if ok.any() else []
        b = np.searchsorted(edges, x, side="right")
        return [f"q{v}" if k else None for v, k in zip(b.tolist(), ok.tolist())]
    return col.to_pylist()


class FeatureTable:
    """Encoded side features of one table (users or items) with JSON vocabularies.

    Args:
        table: ``users`` or ``items`` table (row ``r`` = index ``r + 1``).
        id_column: the raw-id column (hashed into ``n_buckets``).
        known: ``(n_rows + 1,)`` bool, rows seen in training: only they get an id
            bucket and contribute to the vocabularies.
    """

    def __init__(self, table: pa.Table, id_column: str, known: np.ndarray, categorical: Sequence[str],
                 multi_hot: Sequence[str], n_buckets: int, max_tokens: int = 32, min_count: int = 1):
        for c in [*categorical, *multi_hot]:
            if c not in table.column_names:
                raise DataError(None, f"feature column '{c}' not in the table (columns: {table.column_names})")
        n = table.num_rows
        self.known = known
        self.n_buckets = n_buckets
        self.vocab: dict[str, list[str]] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        ids = table.column(id_column).to_pylist()
        hashed = np.zeros(n + 1, dtype=np.int64)
        if n_buckets > 0:
            hashed[1:] = [hash_bucket(str(i), n_buckets) for i in ids]
            hashed[~known] = 0
        self.tensors[ID] = torch.from_numpy(hashed)
        self.raw_ids = [str(i) for i in ids]
        kn = known[1:]
        for c in categorical:
            vals = _as_strings(table, c)
            self.vocab[c] = _vocab([[v] for v, k in zip(vals, kn) if k and v is not None], min_count)
            index = {v: j + 1 for j, v in enumerate(self.vocab[c])}
            codes = np.zeros(n + 1, dtype=np.int64)
            codes[1:] = [index.get(v, 0) for v in vals]
            self.tensors[c] = torch.from_numpy(codes)
        for c in multi_hot:
            if not pa.types.is_list(table.schema.field(c).type):
                raise DataError(None, f"multi-hot feature column '{c}' must be a list column, got "
                                      f"{table.schema.field(c).type}")
            vals = [v or [] for v in table.column(c).to_pylist()]
            self.vocab[c] = _vocab([v for v, k in zip(vals, kn) if k], min_count)
            index = {v: j + 1 for j, v in enumerate(self.vocab[c])}
            width = max(1, min(max_tokens, max((len(v) for v in vals), default=1)))
            codes = np.zeros((n + 1, width), dtype=np.int64)
            for r, v in enumerate(vals):
                toks = [index[t] for t in v if t in index][:width]
                codes[r + 1, : len(toks)] = toks
            self.tensors[c] = torch.from_numpy(codes)
        self.categorical, self.multi_hot = list(categorical), list(multi_hot)

    def sizes(self) -> tuple[dict[str, int], dict[str, int]]:
        """Vocabulary sizes including the 0 = unknown slot."""
        return ({c: len(self.vocab[c]) + 1 for c in self.categorical},
                {c: len(self.vocab[c]) + 1 for c in self.multi_hot})

    def take(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[rows] for k, v in self.tensors.items()}

    def metadata(self) -> dict[str, Any]:
        return {"n_buckets": self.n_buckets, "hash": "crc32(raw id) % n_buckets + 1; 0 = no id",
                "categorical": self.categorical, "multi_hot": self.multi_hot, "vocab": self.vocab}


def _vocab(rows: list[list[str]], min_count: int) -> list[str]:
    counts: dict[str, int] = {}
    for r in rows:
        for t in r:
            counts[t] = counts.get(t, 0) + 1
    return sorted(t for t, c in counts.items() if c >= min_count)


def history_matrix(users: np.ndarray, items: np.ndarray, length: int) -> np.ndarray:
    """``(N, length)``: for each row of a (user, time)-sorted interaction list, the
    user's previous ``length`` items (left-padded with 0, most recent last)."""
    n = len(users)
    if n == 0:
        return np.zeros((0, length), dtype=np.int64)
    new_user = np.r_[True, users[1:] != users[:-1]]
    start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    idx = np.arange(n)[:, None] - length + np.arange(length)[None, :]
    valid = idx >= start[:, None]
    return np.where(valid, items[np.clip(idx, 0, None)], 0).astype(np.int64)


class ShardedBatchSampler(Sampler[list[int]]):
    """Shuffled batches, deterministic in ``(seed, epoch)``; rank ``r`` of ``world``
    takes every ``world``-th example of the permutation."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, world: int = 1, rank: int = 0):
        self.n, self.batch_size, self.seed, self.world, self.rank = n, batch_size, seed, world, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        idx = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)[self.rank :: self.world]
        for s in range(0, len(idx), self.batch_size):
            yield idx[s : s + self.batch_size].tolist()

    def __len__(self) -> int:
        return -(-len(range(self.rank, self.n, self.world)) // self.batch_size)


class _Pairs(Dataset):
    def __init__(self, users: torch.Tensor, history: torch.Tensor, pos: torch.Tensor):
        self.users, self.history, self.pos = users, history, pos

    def __len__(self) -> int:
        return len(self.users)

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        i = torch.as_tensor(idx)
        return {"users": self.users[i], "history": self.history[i], "pos": self.pos[i]}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"users": self.users[i], "history": self.history[i], "pos": self.pos[i]}


def _identity(batch: Any) -> Any:
    return batch


def _columns(value: Sequence[str] | None) -> tuple[str, ...] | None:
    if value is not None and isinstance(value, (str, bytes, Mapping)):
        raise TypeError(f"feature columns must be a list of names or null, got {value!r}")
    return None if value is None else tuple(str(c) for c in value)


@dataclass(frozen=True)
class FeatureSpec:
    """Which side columns feed the towers and how they are encoded.

    Args:
        item_categorical, item_multi_hot, user_categorical (list[str] | None): feature
            columns; ``None`` = automatic (see :func:`_auto_columns`), ``[]`` = none.
        n_item_buckets, n_user_buckets (int): hashed-id embedding sizes (0: no ids).
        max_tokens (int): width of a multi-hot feature (tokens kept per row).
        min_count (int): a value enters a vocabulary when seen on that many training rows.
        max_vocab (int): automatic columns have at most this many distinct values.
    """

    item_categorical: Sequence[str] | None = None
    item_multi_hot: Sequence[str] | None = None
    user_categorical: Sequence[str] | None = None
    n_item_buckets: int = 16384
    n_user_buckets: int = 16384
    max_tokens: int = 32
    min_count: int = 1
    max_vocab: int = 1000

    def __post_init__(self) -> None:
        for name in ("item_categorical", "item_multi_hot", "user_categorical"):
            object.__setattr__(self, name, _columns(getattr(self, name)))


@dataclass(frozen=True)
class LoaderSpec:
    """How batches are drawn.

    Args:
        batch_size (int): training pairs per step (per process).
        eval_batch_size (int): users per evaluation step.
        num_workers (int): DataLoader workers for training.
        seed (int): the training shuffle is a function of ``(seed, epoch)``.
    """

    batch_size: int = 512
    eval_batch_size: int = 256
    num_workers: int = 0
    seed: int = 0


class TwoTowerDataModule(L.LightningDataModule):
    """Feature tables, training pairs and evaluation rows for :class:`~recsys.models.two_tower.TwoTower`.

    Args:
        data (PreparedData): the prepared dataset (side tables).
        split (Split): training interactions and the val/test :class:`~recsys.data.splits.EvalSet`.
        max_history (int): items fed to the user tower.
        features (FeatureSpec | dict): feature columns and their encoding.
        loader (LoaderSpec | dict): batch sizes, workers, shuffling seed.

    Training batches: ``{"users": B, "history": B X max_history, "pos": B}`` int64.

    Example::

        dm = TwoTowerDataModule(data, split, max_history=20, features=FeatureSpec(item_multi_hot=[]),
                                loader=LoaderSpec(batch_size=128))
        net = TwoTower(**dm.net_args(), arch=TowerArch(dim=32))
    """

    def __init__(self, data: PreparedData, split: Split, max_history: int = 50,
                 features: FeatureSpec | Mapping[str, Any] | None = None,
                 loader: LoaderSpec | Mapping[str, Any] | None = None):
        super().__init__()
        features = as_spec(FeatureSpec, features, "datamodule.features")
        loader = as_spec(LoaderSpec, loader, "datamodule.loader")
        if max_history < 1:
            raise DataError(None, f"max_history must be >= 1, got {max_history}")
        # <= 0 would train zero steps
        batch_size = check_positive_int(loader.batch_size, "datamodule.loader.batch_size")
        eval_batch_size = check_positive_int(loader.eval_batch_size, "datamodule.loader.eval_batch_size")
        self.data, self.split, self.max_history = data, split, max_history
        self.features, self.loader = features, loader
        self.n_items, self.n_users = data.n_items, data.n_users
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = loader.num_workers, loader.seed
        users, items, _ = split.train_arrays()
        if len(users) == 0:
            raise DataError(None, "the split has no training interactions")
        self.item_counts = np.bincount(items, minlength=self.n_items + 1).astype(np.int64)
        item_known = self.item_counts > 0
        user_known = np.bincount(users, minlength=self.n_users + 1) > 0
        f = features
        auto_i = _auto_columns(data.items, (S.ITEM_IDX, S.ITEM_ID), f.max_vocab)
        auto_u = _auto_columns(data.users, (S.USER_IDX, S.USER_ID), f.max_vocab)
        self.items = FeatureTable(data.items, S.ITEM_ID, item_known,
                                  auto_i[0] if f.item_categorical is None else list(f.item_categorical),
                                  auto_i[1] if f.item_multi_hot is None else list(f.item_multi_hot),
                                  f.n_item_buckets, f.max_tokens, f.min_count)
        self.users = FeatureTable(data.users, S.USER_ID, user_known,
                                  auto_u[0] if f.user_categorical is None else list(f.user_categorical), [],
                                  f.n_user_buckets, f.max_tokens, f.min_count)
        hist = history_matrix(users, items, max_history)
        self.train_set = _Pairs(torch.from_numpy(users), torch.from_numpy(hist), torch.from_numpy(items))
        self.pos_keys = torch.from_numpy(np.unique(users * (self.n_items + 1) + items))
        self.train_history = CSR.from_sorted_rows(users, items, self.n_users + 1)  # row = user_idx

    def net_args(self) -> dict[str, Any]:
        """Constructor arguments of :class:`~recsys.models.two_tower.TwoTower` that come from
        the data: ``n_items``, ``items`` (:class:`ItemInputs`), ``users`` (:class:`UserInputs`)."""
        ic, im = self.items.sizes()
        uc, _ = self.users.sizes()
        return {"n_items": self.n_items,
                "items": ItemInputs(n_id_buckets=self.items.n_buckets, categorical=ic, multi_hot=im),
                "users": UserInputs(n_id_buckets=self.users.n_buckets, categorical=uc, max_history=self.max_history)}

    def feature_metadata(self) -> dict[str, Any]:
        return {"max_history": self.max_history, "items": self.items.metadata(), "users": self.users.metadata()}

    @property
    def val_set(self) -> EvalSet:
        return self.split.val

    @property
    def test_set(self) -> EvalSet:
        return self.split.test

    def eval_history(self, es: EvalSet, rows: np.ndarray) -> np.ndarray:
        return left_pad(es.history.take(rows), self.max_history)

    def _world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.world_size, t.global_rank) if t is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        sampler = ShardedBatchSampler(len(self.train_set), self.batch_size, self.seed, world, rank)
        return DataLoader(self.train_set, batch_sampler=sampler, collate_fn=_identity, num_workers=self.num_workers)

    def _eval_loader(self, es: EvalSet) -> DataLoader:
        world, rank = self._world()
        return DataLoader(torch.arange(len(es))[rank::world], batch_size=self.eval_batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.split.val)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.split.test)
