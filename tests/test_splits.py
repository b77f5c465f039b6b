"""Leave-one-out and temporal splits: correct targets, no leakage."""
from __future__ import annotations

import numpy as np
import pytest

from recsys.data.splits import LeaveOneOut, TemporalSplit
from recsys.utils.errors import RecsysError
from tests.helpers import prepared

# user a: 5 events, b: 2 events, c: 1 event; timestamps deliberately out of file order
ROWS = [
    ("a", "10", 5.0), ("a", "11", 1.0), ("a", "12", 2.0), ("a", "13", 3.0), ("a", "14", 4.0),
    ("b", "11", 2.0), ("b", "12", 1.0),
    ("c", "13", 1.0),
]


def _items(data, raw_ids):
    ids = data.items.column("item_id").to_pylist()
    return [ids.index(r) + 1 for r in raw_ids]


def test_leave_one_out_targets_follow_time_order():
    data = prepared(ROWS)
    split = LeaveOneOut().split(data)
    ua = 1  # users sorted: a, b, c
    # a in time order: 11, 12, 13, 14, 10
    row = list(split.test.users).index(ua)
    assert split.test.targets.row(row).tolist() == _items(data, ["10"])
    assert split.test.history.row(row).tolist() == _items(data, ["11", "12", "13", "14"])
    vrow = list(split.val.users).index(ua)
    assert split.val.targets.row(vrow).tolist() == _items(data, ["14"])
    assert split.val.history.row(vrow).tolist() == _items(data, ["11", "12", "13"])


def test_leave_one_out_short_users_are_explicit():
    data = prepared(ROWS)
    split = LeaveOneOut().split(data)
    assert split.test.users.tolist() == [1, 2]  # c (1 event) has no test
    assert split.val.users.tolist() == [1]  # b (2 events) has no validation
    assert split.info["n_train_only_users"] == 1
    # training: a's first three, b's first, c's only event
    u, i, _ = split.train_arrays()
    assert u.tolist() == [1, 1, 1, 2, 3]
    assert split.info["n_train_interactions"] == 5


def test_leave_one_out_never_trains_on_targets():
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{rng.integers(50)}", float(t)) for u in range(30) for t in range(rng.integers(1, 9))]
    data = prepared(rows)
    split = LeaveOneOut().split(data)
    users, items, ts = split.train_arrays()
    last_train_t = {}
    for u, t in zip(users, ts):
        last_train_t[u] = max(last_train_t.get(u, -1), t)
    all_u, all_i, all_t = data.arrays()
    for es in (split.val, split.test):
        for r, u in enumerate(es.users):
            # the target is the user's event right after the history
            n_hist = len(es.history.row(r))
            user_items = all_i[all_u == u]
            assert es.targets.row(r).tolist() == [user_items[n_hist]]
            assert last_train_t[u] < all_t[all_u == u][n_hist]


def test_temporal_split_has_no_future_in_train_or_history():
    rng = np.random.default_rng(1)
    rows = [(f"u{rng.integers(40)}", f"i{rng.integers(60)}", float(rng.integers(0, 1000))) for _ in range(2000)]
    data = prepared(rows)
    sp = TemporalSplit(val_fraction=0.2, test_fraction=0.2)
    split = sp.split(data)
    _, _, ts = split.train_arrays()
    t_val, t_test = split.info["t_val"], split.info["t_test"]
    assert ts.max() < t_val
    all_u, all_i, all_t = data.arrays()
    for es, cutoff, end in ((split.val, t_val, t_test), (split.test, t_test, np.inf)):
        assert len(es) > 0
        for r, u in enumerate(es.users):
            mask = all_u == u
            hist_expected = all_i[mask & (all_t < cutoff)]
            assert es.history.row(r).tolist() == hist_expected.tolist()
            window = set(all_i[mask & (all_t >= cutoff) & (all_t < end)].tolist()) - set(hist_expected.tolist())
            assert set(es.targets.row(r).tolist()) == window
            assert len(set(es.targets.row(r).tolist())) == len(es.targets.row(r))


def test_temporal_split_explicit_cutoffs_and_errors():
    data = prepared(ROWS)
    split = TemporalSplit(val_time=2.0, test_time=4.0, require_history=False).split(data)
    _, _, ts = split.train_arrays()
    assert ts.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(RecsysError, match="ordinal"):
        TemporalSplit().split(prepared(ROWS, timestamp_kind="ordinal"))
    with pytest.raises(RecsysError, match="fractions"):
        TemporalSplit(val_fraction=0.6, test_fraction=0.5)
