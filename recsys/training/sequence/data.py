"""Lightning DataModule for next-item sequence models.

Training examples come from the split's training interactions only: per user,
the last ``max_len + 1`` training items give ``input = s[:-1]`` and
``labels = s[1:]`` (causal task, :class:`~recsys.training.sequence.batches.SequenceBatch`),
or ``max_len`` items to be masked (BERT4Rec's ``masked`` task,
:class:`~recsys.training.sequence.batches.MaskedBatch`), left-padded with 0.
Evaluation batches (:class:`~recsys.training.sequence.batches.EvalBatch`) carry
their rows of the split's :class:`~recsys.data.splits.EvalSet`, the histories
and the held-out items; each process takes every ``world_size``-th row and
nothing is padded or duplicated, so gathered metrics are exact (see
:class:`~recsys.training.sequence.module.SequentialRecModule`).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from recsys.data.splits import EvalSet, Split
from recsys.training.sequence.batches import EvalBatch, MaskedBatch, SequenceBatch
from recsys.utils.errors import RecsysError
from recsys.utils.sparse import CSR, left_pad  # noqa: F401  (left_pad re-exported)


class TrainingInputError(RecsysError, ValueError):
    """A data-module setting or split that would train zero steps (one line)."""


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an int if it is a positive integer (not a bool or a float),
    else :class:`TrainingInputError` naming ``name`` (e.g. ``datamodule.batch_size``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise TrainingInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def padded_histories(history: CSR, max_len: int) -> torch.Tensor:
    """``(R, T)`` the rows left-padded to the longest one, ``1 <= T <= max_len``
    (leading all-padding columns dropped: exact, positions count from the first item)."""
    longest = int(min(max(history.lengths().max(initial=1), 1), max_len))
    return torch.from_numpy(left_pad(history, longest))


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length, shuffled, deterministic in ``(seed, epoch)``.

    Each process takes every ``world``-th example of a seeded permutation; pools of
    ``pool_batches`` batches are sorted by length and cut into batches, whose order
    is shuffled. With the trimming collate functions a batch then costs about its
    real tokens instead of ``batch_size x max_len`` (Beauty: ~7x fewer tokens).
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int = 0, world: int = 1, rank: int = 0,
                 pool_batches: int = 50):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.world, self.rank, self.pool = world, rank, pool_batches * batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the training module at every epoch start with the trainer's
        epoch (restored on resume), not by Lightning's progress counter."""
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        idx = rng.permutation(len(self.lengths))[self.rank :: self.world]
        batches = []
        for s in range(0, len(idx), self.pool):
            pool = idx[s : s + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[b : b + self.batch_size].tolist() for b in range(0, len(pool), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()  # lazy: the epoch is read at the first batch

    def __len__(self) -> int:
        n = len(range(self.rank, len(self.lengths), self.world))
        return sum(-(-min(self.pool, n - s) // self.batch_size) for s in range(0, n, self.pool))


def _stack_trim(items: list[dict[str, torch.Tensor]], key: str) -> dict[str, torch.Tensor]:
    """Stack and drop the leading columns that are padding in every row of ``key``
    (exact: positions are counted from each row's first item)."""
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    nonpad = (batch[key] > 0).any(0).nonzero()
    start = int(nonpad[0]) if len(nonpad) else batch[key].shape[1] - 1
    return {k: v[:, start:] for k, v in batch.items()}


def collate_causal(items: list[dict[str, torch.Tensor]]) -> SequenceBatch:
    b = _stack_trim(items, "input")
    return SequenceBatch(input=b["input"], labels=b["labels"])


def collate_masked(items: list[dict[str, torch.Tensor]]) -> MaskedBatch:
    return MaskedBatch(seq=_stack_trim(items, "seq")["seq"])


class EvalCollate:
    """Row indices of ``eval_set`` -> :class:`EvalBatch` (histories cut to ``max_len``)."""

    def __init__(self, eval_set: EvalSet, max_len: int):
        self.eval_set, self.max_len = eval_set, max_len

    def __call__(self, rows: list[torch.Tensor]) -> EvalBatch:
        r = torch.stack(rows)
        idx = r.numpy()
        history = self.eval_set.history.take(idx)
        return EvalBatch(rows=r, seq=padded_histories(history, self.max_len), history=history,
                         targets=self.eval_set.targets.take(idx))


class _Arrays(Dataset):
    def __init__(self, **arrays: torch.Tensor):
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.arrays.items()}


class TrainingInteractions:
    """Training interactions without evaluation sets (a split-like object for
    :class:`SequenceDataModule` when only training is wanted, e.g. a fixed-epoch fit).
    ``users`` / ``items``: sorted by user, then time."""

    def __init__(self, users: np.ndarray, items: np.ndarray):
        self.users, self.items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        empty = CSR.from_lists([])
        self.val = self.test = EvalSet(users=np.zeros(0, np.int64), history=empty, targets=empty)

    def train_arrays(self) -> tuple[np.ndarray, np.ndarray, None]:
        return self.users, self.items, None


class SequenceDataModule(L.LightningDataModule):
    """Args:
        split: a :class:`~recsys.data.splits.Split` (or :class:`TrainingInteractions`).
        n_items: catalogue size.
        max_len: model input length (also the longest history evaluated).
        task: ``"causal"`` (predict every next item) or ``"masked"`` (BERT4Rec).
        batch_size: training sequences per step (per process).
        eval_batch_size: users per evaluation step.

    Sizes must be positive integers, and the split must give at least one
    training sequence: otherwise :class:`TrainingInputError` (a one-line
    :class:`~recsys.utils.errors.RecsysError`) instead of a fit of zero steps.
    """

    def __init__(self, split: Split | TrainingInteractions, n_items: int, max_len: int = 50, task: str = "causal",
                 batch_size: int = 256, eval_batch_size: int = 256, num_workers: int = 0, seed: int = 0):
        super().__init__()
        if task not in ("causal", "masked"):
            raise ValueError(f"task must be 'causal' or 'masked', got {task!r}")
        batch_size = check_positive_int(batch_size, "datamodule.batch_size")
        eval_batch_size = check_positive_int(eval_batch_size, "datamodule.eval_batch_size")
        max_len = check_positive_int(max_len, "datamodule.max_len")
        if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
            raise TrainingInputError(f"datamodule.num_workers must be an integer >= 0, got {num_workers!r}")
        self.split, self.n_items, self.max_len, self.task = split, n_items, max_len, task
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        users, items, _ = split.train_arrays()
        self.item_counts = np.bincount(items, minlength=n_items + 1)
        order_users = np.unique(users)
        seqs = CSR.from_sorted_rows(np.searchsorted(order_users, users), items, len(order_users))
        if task == "causal":
            keep = seqs.lengths() >= 2
            padded = left_pad(seqs.take(np.flatnonzero(keep)), max_len + 1)
            self.train_set = _Arrays(input=torch.from_numpy(padded[:, :-1]), labels=torch.from_numpy(padded[:, 1:]))
            self.train_lengths = (padded[:, 1:] > 0).sum(1)
        else:
            padded = left_pad(seqs, max_len)
            self.train_set = _Arrays(seq=torch.from_numpy(padded))
            self.train_lengths = (padded > 0).sum(1)
        if len(self.train_set) == 0:  # Lightning would "train" zero steps and evaluate the initial weights
            need = "2 training interactions" if task == "causal" else "1 training interaction"
            raise TrainingInputError(f"no training sequences: no user has {need} in the split "
                                     f"({len(items)} training interactions); nothing to train on")

    @property
    def val_set(self) -> EvalSet:
        return self.split.val

    @property
    def test_set(self) -> EvalSet:
        return self.split.test

    def _world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.world_size, t.global_rank) if t is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        # the order depends only on (seed, epoch), so a resumed run sees the same
        # batches as an uninterrupted one
        sampler = BucketBatchSampler(self.train_lengths, self.batch_size, self.seed, world, rank)
        collate = collate_causal if self.task == "causal" else collate_masked
        return DataLoader(self.train_set, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers)

    def _eval_loader(self, es: EvalSet) -> DataLoader:
        world, rank = self._world()
        rows = torch.arange(len(es))[rank::world]
        return DataLoader(rows, batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=EvalCollate(es, self.max_len))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.split.val)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.split.test)
