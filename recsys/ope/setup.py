"""The OPE setup: a log of impressions, its action set, and what models fit on.

Two kinds (never mixed silently):

* :func:`build_setup` joins a log to a prepared catalogue (``data=``; the synthetic
  world's own impressions by default): action space = the catalogue's items (plus
  any new ones the log shows). Models are fitted on the prepared data's training
  split and act on a user with that user's click history from the prepared data
  (the split's test history, the same for every request of the user: a
  simplification, the history is not cut at the request time); consumed items are
  excluded, as in the offline ranking.
* :func:`build_log_setup` uses the log alone (``logs=`` without ``data=``): action
  space = the log's items, or an explicit catalogue file's (:func:`read_catalogue`).
  Models are fitted on the clicks of the first half of the log's rounds and are
  evaluated on the second half (no round is both trained on and evaluated on).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.bandit_logs import BanditLog, LogOptions, read_bandit_log, synthetic_bandit_log
from recsys.data.prepare import PreparedData
from recsys.data.splits import Split
from recsys.evaluation import ope as O
from recsys.utils.errors import RecsysError
from recsys.utils.sparse import CSR

PolicyFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Setup:
    """Everything a policy needs, in the log's index space."""

    log: BanditLog
    world: Any  # SyntheticWorld, or None for a log read from a file (no truth)
    data: PreparedData | None  # None: the log alone (build_log_setup)
    split: Split | None
    user_to_prep: np.ndarray  # (n_log_users + 1,) prepared user idx, 0 = unknown
    item_to_log: np.ndarray  # (n_prep_items + 1,) log column of each prepared item, -1 = none
    history: CSR  # rows = prepared user idx
    train_users: np.ndarray  # what models are fitted on: (user, item) interactions, prepared idx
    train_items: np.ndarray
    n_fit_users: int
    n_fit_items: int
    fit_requests: int | None = None  # log alone: models fit on the first fit_requests rounds
    catalogue: str = "synthetic world"  # where the action set comes from (for reports)

    @property
    def n_actions(self) -> int:
        """M: the log's items plus the padding column 0."""
        return self.log.n_items + 1

    @property
    def slate_size(self) -> int:
        return self.log.slate_size


def _lookup(ids_from: np.ndarray, ids_to: pa.Array) -> np.ndarray:
    """Index of each ``ids_from`` string in ``ids_to`` plus 1 (0 = absent)."""
    found = pc.index_in(pa.array(ids_from, pa.string()), value_set=pc.cast(ids_to, pa.string()))
    return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64) + 1


def read_log(path: str | Path, data: PreparedData, options: LogOptions | None = None) -> BanditLog:
    """A log file (format of docs/ope.md) whose users and items are indexed as in ``data``."""
    return read_bandit_log(path, options or LogOptions(),
                           known_users=np.array(["", *data.users.column("user_id").to_pylist()], dtype=object),
                           known_items=np.array(["", *data.items.column("item_id").to_pylist()], dtype=object))


def build_setup(data: PreparedData, split: Split, world: Any = None, log: BanditLog | None = None) -> Setup:
    """Join ``log`` (default: the synthetic ``world``'s impressions) to ``data``.

    Pass ``world=None`` with a log read from a file: an external log carries no truth.
    """
    if log is None:
        if world is None:
            raise RecsysError(f"`recsys ope` without logs=<file> needs data=synthetic (got data={data.name})")
        log = synthetic_bandit_log(world)
    user_to_prep = np.concatenate([[0], _lookup(log.user_ids[1:], data.users.column("user_id"))])
    pos_in_log = _lookup(np.asarray(data.items.column("item_id").to_pylist(), dtype=object),
                         pa.array(log.item_ids[1:], pa.string()))
    item_to_log = np.concatenate([[0], np.where(pos_in_log > 0, pos_in_log, -1)])
    es = split.test  # history = the user's clicks before the test item, rows = prepared user idx
    order = np.argsort(es.users, kind="stable")
    lens = np.zeros(data.n_users + 1, dtype=np.int64)
    lens[es.users] = es.history.lengths()
    history = CSR(np.concatenate([[0], np.cumsum(lens)]), es.history.take(order).indices)
    users, items, _ = split.train_arrays()
    return Setup(log, world, data, split, user_to_prep, item_to_log, history, users, items, data.n_users,
                 data.n_items, None, "synthetic world" if world is not None else f"data={data.name}")


def read_catalogue(path: str | Path) -> np.ndarray:
    """An explicit action set: a Parquet/CSV file with an ``item_id`` column (one row per
    item, no duplicates) -> ``(n + 1,)`` id strings, [0] padding."""
    from recsys.data.bandit_logs import _strings, read_table
    from recsys.utils.errors import DataError

    table, csv = read_table(path)
    if "item_id" not in table.column_names:
        raise DataError(path, f"catalogue needs an item_id column; columns found: {', '.join(table.column_names)}",
                        column="item_id")
    ids = _strings(table, "item_id", str(path), csv)
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        row = int(first[np.flatnonzero(counts > 1)[0]])
        raise DataError(path, f"item {ids[row]!r} listed more than once", column="item_id",
                        line=row + 2 if csv else None)
    return np.concatenate([[""], ids]).astype(object)


def read_log_only(path: str | Path, options: LogOptions, catalogue: str | Path | None = None) -> BanditLog:
    """A log file read on its own; with ``catalogue`` its item ids fix the action set and an
    item the log shows that the catalogue lacks is refused (one line naming it)."""
    from recsys.utils.errors import DataError

    known = read_catalogue(catalogue) if catalogue is not None else None
    log = read_bandit_log(path, options, known_items=known)
    if known is not None and log.n_items > len(known) - 1:
        extra = log.item_ids[len(known):]
        raise DataError(path, f"item {extra[0]!r} (and {len(extra) - 1} more) is not in the catalogue {catalogue}",
                        column=(options.columns or {}).get("item_id") or "item_id")
    return log


def build_log_setup(log: BanditLog, catalogue: str | None = None, fit_share: float = 0.5) -> Setup:
    """A setup from the log alone: action space = the log's item index space (its items, or
    the catalogue's it was read against). Models fit on the clicks of the first
    ``fit_share`` of the rounds (histories = those clicks) and are evaluated on the rest."""
    n_fit = int(log.n_requests * fit_share)
    r = log.rewards[:n_fit] > 0
    users = np.broadcast_to(log.users[:n_fit, None], r.shape)[r]
    items = log.actions[:n_fit][r]
    order = np.argsort(users, kind="stable")
    lens = np.bincount(users, minlength=log.n_users + 1)
    history = CSR(np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), items[order].astype(np.int64))
    ident_u = np.arange(log.n_users + 1, dtype=np.int64)
    ident_i = np.arange(log.n_items + 1, dtype=np.int64)
    return Setup(log, None, None, None, ident_u, ident_i, history, users.astype(np.int64), items.astype(np.int64),
                 log.n_users, log.n_items, n_fit,
                 f"catalogue {catalogue}" if catalogue is not None else f"the log's {log.n_items} items")


def fit_model(model: Any, s: Setup) -> Any:
    """Fit ``model`` on the setup's training interactions (prepared ids); returns it."""
    model.fit(s.train_users, s.train_items, s.n_fit_users, s.n_fit_items)
    return model


def model_scores(model: Any, s: Setup) -> PolicyFn:
    """Log users ``(b,)`` -> model scores in log space ``(b, M)``; unknown / consumed items -inf."""
    m = s.n_actions
    keep = s.item_to_log >= 0
    keep[0] = False

    def fn(users: np.ndarray) -> np.ndarray:
        prep = s.user_to_prep[users]
        hist = s.history.take(prep)
        sc = np.array(model.score(prep, hist), dtype=np.float64)  # (b, n_prep + 1)
        sc[hist.row_ids(), hist.indices] = -np.inf
        out = np.full((len(users), m), -np.inf)
        out[:, s.item_to_log[keep]] = sc[:, keep]
        return out

    return fn


def user_features(s: Setup) -> np.ndarray:
    """One-hot user side features (string columns of the prepared users) + bias: (n_log_users + 1, d)."""
    if s.data is None:  # the log alone: no side features, a bias only
        return np.ones((s.log.n_users + 1, 1))
    u = s.data.users
    cols = [np.ones(u.num_rows)]
    for name in u.column_names:
        if name in ("user_idx", "user_id") or not pa.types.is_string(u.column(name).type):
            continue
        codes = pc.dictionary_encode(u.column(name)).combine_chunks().indices.to_numpy(zero_copy_only=False)
        cols.extend((codes == c).astype(np.float64) for c in range(int(codes.max()) + 1))
    prep_feats = np.concatenate([np.zeros((1, len(cols))), np.stack(cols, axis=1)])  # row = user_idx
    feats = prep_feats[s.user_to_prep]
    feats[:, 0] = 1.0
    return feats


def support_fn(s: Setup, eps: float) -> PolicyFn:
    """Users ``(b,)`` -> ``(b, K, M)`` True where the logger gives no support (prob <= eps;
    for a file log: never shown at that position anywhere in the log)."""
    if s.world is not None:
        return lambda u: s.world.logging_distribution(u) <= eps
    m, k = s.n_actions, s.slate_size
    shown = np.zeros((k, m), dtype=bool)
    shown[np.broadcast_to(np.arange(k), s.log.actions.shape), s.log.actions] = True
    return lambda u: np.broadcast_to(~shown, (len(u), k, m))


def true_value(world: Any, policy_fn: PolicyFn, users: np.ndarray, counts: np.ndarray | None = None,
               block: int = 256) -> tuple[float, float, float]:
    """Exact value of ``policy_fn`` averaged over ``users`` (weighted by ``counts``), and
    its mean total-variation distance and KL divergence from the logger."""
    uniq, cnt = (np.unique(users, return_counts=True) if counts is None else (users, counts))
    total = tv = kl = 0.0
    for st in range(0, len(uniq), block):
        ub, cb = uniq[st:st + block], cnt[st:st + block].astype(np.float64)
        p = policy_fn(ub)
        kk = len(world.truth["position_bias"])
        p = p if p.ndim == 3 else np.broadcast_to(p[:, None, :], (len(ub), kk, p.shape[-1]))
        total += world.policy_value(p * cb[:, None, None], ub) * len(ub)
        lg = world.logging_distribution(ub)[:, None, :]
        tv += O.total_variation(p, lg) * cb.sum()
        kl += float(O.kl_divergence(p, np.broadcast_to(lg, p.shape)) * cb.sum())
    n = cnt.sum()
    return total / n, tv / n, kl / n
