"""Leakage-safe splits: leave-one-out and global temporal.

A split returns the training interactions and, for validation and test, an
:class:`EvalSet`: the users, their history (time order; fed to the model and
excluded from the ranking) and their held-out target items.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from recsys.data.prepare import PreparedData, interaction_arrays
from recsys.utils.errors import RecsysError
from recsys.utils.sparse import CSR


@dataclass
class EvalSet:
    users: np.ndarray  # (U,) int64
    history: CSR  # U rows, time order
    targets: CSR  # U rows

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Split:
    train: pa.Table  # rows of PreparedData.interactions, same order
    val: EvalSet
    test: EvalSet
    info: dict[str, Any] = field(default_factory=dict)

    def train_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return interaction_arrays(self.train)


def _positions(users: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: number of events of its user, and 0-based position from the end."""
    counts = np.bincount(users, minlength=n_users + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(users)) - starts[users]
    return counts[users], counts[users] - 1 - pos


def _eval_set(users: np.ndarray, items: np.ndarray, hist_mask: np.ndarray, tgt_mask: np.ndarray,
              drop_targets_in_history: bool) -> tuple[EvalSet, int]:
    """Group masked rows (already sorted by user, time) into an EvalSet over the
    users that have at least one target."""
    eval_users = np.unique(users[tgt_mask])
    row_of = np.full(users.max() + 1 if len(users) else 1, -1)
    row_of[eval_users] = np.arange(len(eval_users))
    hist_rows = hist_mask & (row_of[users] >= 0)
    history = CSR.from_sorted_rows(row_of[users[hist_rows]], items[hist_rows], len(eval_users))
    t_users, t_items = users[tgt_mask], items[tgt_mask]
    n_ids = items.max() + 1
    key = row_of[t_users] * n_ids + t_items
    n_dropped = 0
    if drop_targets_in_history:
        keep = ~np.isin(key, row_of[users[hist_rows]] * n_ids + items[hist_rows])
        n_dropped = int((~keep).sum())
        t_users, t_items, key = t_users[keep], t_items[keep], key[keep]
    # one target per (user, item): keep the first occurrence
    _, first = np.unique(key, return_index=True)
    first.sort()
    targets = CSR.from_sorted_rows(row_of[t_users[first]], t_items[first], len(eval_users))
    keep_users = targets.lengths() > 0
    if not keep_users.all():
        idx = np.flatnonzero(keep_users)
        return EvalSet(eval_users[idx], history.take(idx), targets.take(idx)), n_dropped
    return EvalSet(eval_users, history, targets), n_dropped


class LeaveOneOut:
    """Last item -> test, second-to-last -> validation, the rest -> training.

    Users with fewer than ``min_len_for_test`` interactions stay in training only;
    users with fewer than ``min_len_for_val`` get a test target but no validation
    target (their earlier items train). The test history contains the
    validation item (it is input, never a training label). Targets that repeat a
    history item stay (and cannot be hit when history is excluded), as in the
    published protocol, unless ``drop_targets_in_history``.
    """

    def __init__(self, min_len_for_test: int = 2, min_len_for_val: int = 3, drop_targets_in_history: bool = False):
        if min_len_for_test < 2 or min_len_for_val < 3:
            raise RecsysError("leave-one-out needs min_len_for_test >= 2 and min_len_for_val >= 3")
        self.min_len_for_test = min_len_for_test
        self.min_len_for_val = min_len_for_val
        self.drop_targets_in_history = drop_targets_in_history

    def split(self, data: PreparedData) -> Split:
        users, items, _ = data.arrays()
        count, rev = _positions(users, data.n_users)
        has_test = count >= self.min_len_for_test
        has_val = count >= self.min_len_for_val
        test_mask = has_test & (rev == 0)
        val_mask = has_val & (rev == 1)
        train_mask = ~test_mask & ~val_mask
        test, drop_t = _eval_set(users, items, has_test & (rev >= 1), test_mask, self.drop_targets_in_history)
        val, drop_v = _eval_set(users, items, has_val & (rev >= 2), val_mask, self.drop_targets_in_history)
        per_user = np.bincount(users)
        info = {
            "split": "leave_one_out",
            "n_train_interactions": int(train_mask.sum()),
            "n_val_users": len(val),
            "n_test_users": len(test),
            "n_train_only_users": int(((per_user > 0) & (per_user < self.min_len_for_test)).sum()),
            "n_targets_dropped_in_history": drop_t + drop_v,
        }
        return Split(data.interactions.filter(pa.array(train_mask)), val, test, info)


class TemporalSplit:
    """Global time cut-offs: events before ``t_val`` train; ``[t_val, t_test)`` are
    validation targets; ``>= t_test`` test targets. A user's history for an
    evaluation window is every event strictly before that window, so no future
    event reaches training or history.

    The cut-offs are the ``1 - val_fraction - test_fraction`` and
    ``1 - test_fraction`` quantiles of event time, unless given explicitly.
    """

    def __init__(self, val_fraction: float = 0.1, test_fraction: float = 0.1, val_time: float | None = None,
                 test_time: float | None = None, require_history: bool = True, drop_targets_in_history: bool = True):
        if not (0 < test_fraction < 1 and 0 <= val_fraction < 1 and val_fraction + test_fraction < 1):
            raise RecsysError(f"bad temporal fractions: val={val_fraction}, test={test_fraction}")
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.val_time, self.test_time = val_time, test_time
        self.require_history = require_history
        self.drop_targets_in_history = drop_targets_in_history

    def cutoffs(self, ts: np.ndarray) -> tuple[float, float]:
        t_test = self.test_time if self.test_time is not None else float(np.quantile(ts, 1 - self.test_fraction))
        t_val = self.val_time if self.val_time is not None else float(
            np.quantile(ts, 1 - self.test_fraction - self.val_fraction))
        if t_val > t_test:
            raise RecsysError(f"validation cut-off {t_val} is after the test cut-off {t_test}")
        return t_val, t_test

    def split(self, data: PreparedData) -> Split:
        if data.meta.get("timestamp_kind") == "ordinal":
            raise RecsysError(f"dataset '{data.name}' has no timestamps (ordinal only): use the leave-one-out split")
        users, items, ts = data.arrays()
        t_val, t_test = self.cutoffs(ts)
        before_val, before_test = ts < t_val, ts < t_test
        val_tgt = ~before_val & before_test
        test_tgt = ~before_test
        if self.require_history:
            val_tgt &= _has_any(users, before_val)[users]
            test_tgt &= _has_any(users, before_test)[users]
        val, drop_v = _eval_set(users, items, before_val, val_tgt, self.drop_targets_in_history)
        test, drop_t = _eval_set(users, items, before_test, test_tgt, self.drop_targets_in_history)
        info = {
            "split": "temporal",
            "t_val": t_val,
            "t_test": t_test,
            "n_train_interactions": int(before_val.sum()),
            "n_val_users": len(val),
            "n_test_users": len(test),
            "n_targets_dropped_in_history": drop_v + drop_t,
        }
        return Split(data.interactions.filter(pa.array(before_val)), val, test, info)


def _has_any(users: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.bincount(users[mask], minlength=users.max() + 1) > 0


def loo_leakage_warning(data: PreparedData, info: dict[str, Any], temporal: str = "split=temporal") -> str | None:
    """One line when a leave-one-out split (``info`` of :class:`Split`) is used on
    events read from files with recorded (unix) timestamps, else ``None``.

    Such events share one global clock: a user's last item (the test target) can be
    older than other users' training events, so the model learns from the future of
    the moment it is tested at (popularity trends, new items). Sequences without
    time (``timestamp_kind="ordinal"``, e.g. the S3-Rec Beauty/Toys files, where
    leave-one-out is the published protocol) and generated data (no source files:
    the synthetic world is stationary) get no warning. ``temporal`` names what to
    switch to (a preset or ``split=temporal``).
    """
    if info.get("split") != "leave_one_out":
        return None
    if data.meta.get("timestamp_kind") != "unix" or not data.meta.get("sources"):
        return None
    return (f"leave-one-out split on '{data.name}', whose events carry real timestamps: test targets can predate "
            f"other users' training events (leakage from the future); for a leakage-free estimate use {temporal}")
