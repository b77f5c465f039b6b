"""Ranker training data: the impression feature table
(:func:`recsys.features.ranker.build_ranker_features`) split by request time,
served as dicts of tensors.

The split is by request timestamp (every row of a request lands in the same
split; train < val < test in time), so no split sees the future of an earlier
one; the behavioural features are point-in-time correct by construction.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from recsys.features.ranker import FeatureTable, build_ranker_features


def time_split(table: FeatureTable, val_fraction: float = 0.1,
               test_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """Row indices of train / val / test: requests ordered by (timestamp,
    request_id), the last ``test_fraction`` of requests -> test, the
    ``val_fraction`` before them -> val."""
    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < val_fraction, test_fraction and a sum < 1, got {val_fraction}, {test_fraction}")
    req, first = np.unique(table.request_id, return_index=True)
    order = np.lexsort((req, table.timestamp[first]))  # requests in time order
    n = len(req)
    n_test, n_val = max(1, int(round(n * test_fraction))), max(1, int(round(n * val_fraction)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    row_rank = rank[np.searchsorted(req, table.request_id)]
    return {"train": np.flatnonzero(row_rank < n - n_test - n_val),
            "val": np.flatnonzero((row_rank >= n - n_test - n_val) & (row_rank < n - n_test)),
            "test": np.flatnonzero(row_rank >= n - n_test)}


def to_tensors(table: FeatureTable) -> dict[str, torch.Tensor]:
    """Feature columns as tensors (int64 / float32), plus ``label`` (float32)."""
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in table.features.items()}
    out["label"] = torch.from_numpy(np.ascontiguousarray(table.label, dtype=np.float32))
    return out


class TensorBatches(IterableDataset):
    """Batches of a dict of equal-length tensors (one dict per batch, no
    per-row collation); reshuffled every epoch when ``shuffle``."""

    def __init__(self, columns: dict[str, torch.Tensor], batch_size: int, shuffle: bool, seed: int = 0):
        self.columns, self.batch_size, self.shuffle, self.seed = columns, batch_size, shuffle, seed
        self.n = len(next(iter(columns.values())))
        self.epoch = 0

    @property
    def n_batches(self) -> int:  # no __len__: Lightning warns about IterableDataset lengths
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.n, generator=g)
            self.epoch += 1
        for s in range(0, self.n, self.batch_size):
            if self.shuffle:
                take = idx[s:s + self.batch_size]
                yield {k: v[take] for k, v in self.columns.items()}
            else:
                yield {k: v[s:s + self.batch_size] for k, v in self.columns.items()}


class RankerDataModule(L.LightningDataModule):
    """Train / val / test loaders over a feature table split by time.

    Args:
        table: the full feature table (or pass ``world`` to build it).
        batch_size: training batch size; evaluation uses ``eval_batch_size``.
    """

    def __init__(self, table: FeatureTable | None = None, world: Any = None, batch_size: int = 2048,
                 eval_batch_size: int = 16384, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 0):
        super().__init__()
        if table is None:
            if world is None:
                raise ValueError("RankerDataModule needs a feature table or a synthetic world")
            table = build_ranker_features(world)
        self.table = table
        self.splits = time_split(table, val_fraction, test_fraction)
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.columns = {k: to_tensors(table.take(v)) for k, v in self.splits.items()}

    def split_table(self, name: str) -> FeatureTable:
        return self.table.take(self.splits[name])

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"feature_set_version": self.table.version}
        for name, idx in self.splits.items():
            ts = self.table.timestamp[idx]
            out[name] = {"rows": int(len(idx)), "requests": int(len(np.unique(self.table.request_id[idx]))),
                         "ctr": float(self.table.label[idx].mean()) if len(idx) else None,
                         "t_min": float(ts.min()) if len(idx) else None, "t_max": float(ts.max()) if len(idx) else None}
        return out

    def _loader(self, name: str, train: bool) -> DataLoader:
        bs = self.batch_size if train else self.eval_batch_size
        return DataLoader(TensorBatches(self.columns[name], bs, shuffle=train, seed=self.seed), batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def position_popularity_baseline(train: FeatureTable, rows: FeatureTable) -> np.ndarray:
    """Non-personalised baseline score of ``rows``: train click rate of the
    position times the smoothed train click rate of the item (N,)."""
    pos_v, item_v = train.vocab_sizes["position"], train.vocab_sizes["item"]
    y = train.label.astype(np.float64)
    pos_ctr = np.bincount(train.features["position"], y, pos_v) / np.maximum(
        np.bincount(train.features["position"], minlength=pos_v), 1)
    mean = y.mean() if len(y) else 0.0
    item_ctr = (np.bincount(train.features["item"], y, item_v) + 20 * mean) / (
        np.bincount(train.features["item"], minlength=item_v) + 20)
    return pos_ctr[rows.features["position"]] * item_ctr[rows.features["item"]]
