"""The OPE setup: a log of impressions joined to a prepared catalogue.

Action space of a setup = the log's item indices (the synthetic world's raw ids
when the log is the world's own). Models are fitted on the prepared data's
training split and act on a user with that user's click history from the
prepared data (the split's test history, the same for every request of the
user: a simplification, the history is not cut at the request time); consumed
items are excluded, as in the offline ranking.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.bandit_logs import BanditLog, read_bandit_log, synthetic_bandit_log
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
    data: PreparedData
    split: Split
    user_to_prep: np.ndarray  # (n_log_users + 1,) prepared user idx, 0 = unknown
    item_to_log: np.ndarray  # (n_prep_items + 1,) log column of each prepared item, -1 = none
    history: CSR  # rows = prepared user idx

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


def read_log(path: str | Path, data: PreparedData, columns: Mapping[str, str] | None = None,
             slate_size: int | None = None, binary_reward: bool = True) -> BanditLog:
    """A log file (format of docs/ope.md) whose users and items are checked against ``data``."""
    return read_bandit_log(path, columns=dict(columns) if columns else None, slate_size=slate_size,
                           binary_reward=binary_reward,
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
    return Setup(log, world, data, split, user_to_prep, item_to_log, history)


def fit_model(model: Any, s: Setup) -> Any:
    """Fit ``model`` on the setup's training split (prepared ids); returns it."""
    users, items, _ = s.split.train_arrays()
    model.fit(users, items, s.data.n_users, s.data.n_items)
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
