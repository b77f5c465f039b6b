"""A generator of *external-shaped* bandit logs with known truth.

Real public bandit logs (e.g. a fashion e-commerce log of item impressions) look
unlike the synthetic world's slates: one row per impression and no request id,
positions numbered from 1, hashed context strings, per-row propensities of a
logger that is very sure in some contexts and almost never shows some items
(propensities from ``1e-5`` to ``0.95``), click rates of a few percent or less.
:class:`ExternalLogWorld` draws such logs from a known click model, so an OPE
estimate on them can be scored against the exact value of the evaluation policy.

Click model (logistic, exact truth):
``logit P(click | user u, position p, item a) = b0 + user[u] + ctx[c(u)] + pos[p]
+ feat[f(a)] + item[a] + inter[c(u), f(a)]`` where ``c(u)`` is the user's (hashed)
context feature and ``f(a)`` the item's (hashed) feature.

Logger: for context value ``c``, a fixed item order and a peakedness
``lam_c`` in ``[lam_min, 1]``: ``mu_c(a) ∝ base(rank_c(a)) ** lam_c`` where ``base`` puts
``max_propensity`` on the first item and a geometric tail down to
``min_propensity`` on the last; the most peaked context has exactly that span.

The file (:meth:`ExternalLogWorld.table`) has the columns ``timestamp``,
``user_id`` (hash), ``user_feature_0`` (hash), ``position`` (1-based), ``item_id``,
``item_feature_0`` (hash), ``click``, ``propensity_score``; :data:`READ_OPTIONS` are
the ``logs_options`` that read it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

READ_OPTIONS: dict[str, Any] = {
    "columns": {"request_id": None, "reward": "click", "propensity": "propensity_score"},
    "position_base": 1,
    "context_columns": ["user_feature_0"],
    "action_columns": ["item_feature_0"],
}


@dataclass(frozen=True)
class ExternalLogConfig:
    """Sizes and effects of an :class:`ExternalLogWorld` (all effects are logit-scale sds)."""

    n_rows: int = 50_000
    n_items: int = 40
    n_users: int = 1000
    n_positions: int = 3
    n_user_features: int = 6
    n_item_features: int = 5
    base_ctr: float = 0.05
    min_propensity: float = 1e-5
    max_propensity: float = 0.95
    lam_min: float = 0.3
    user_sd: float = 0.3
    ctx_sd: float = 0.4
    feat_sd: float = 0.5
    item_sd: float = 0.15
    inter_sd: float = 0.15
    seed: int = 0


def _hash(prefix: str, values: np.ndarray) -> np.ndarray:
    """16 hex digits of md5(prefix + value) per value (hashed ids, as real logs ship them)."""
    uniq, inv = np.unique(np.asarray(values), return_inverse=True)
    hashed = np.array([hashlib.md5(f"{prefix}{v}".encode()).hexdigest()[:16] for v in uniq], dtype=object)
    return hashed[np.ravel(inv)]


def _geometric_tail(n: int, total: float, last: float) -> np.ndarray:
    """``n`` decreasing values ``a r^i`` with ``a r^(n-1) = last`` summing to ``total``."""
    lo, hi = 1e-9, 1.0  # ratio r
    for _ in range(200):
        r = 0.5 * (lo + hi)
        vals = last * r ** -np.arange(n - 1, -1, -1.0)
        lo, hi = (r, hi) if vals.sum() > total else (lo, r)
    return last * (0.5 * (lo + hi)) ** -np.arange(n - 1, -1, -1.0)


class ExternalLogWorld:
    """Truth and logger of external-shaped logs (see the module docstring)."""

    def __init__(self, config: ExternalLogConfig = ExternalLogConfig()):
        c = self.config = config
        rng = np.random.default_rng([c.seed, 101])
        m = c.n_items
        self.user_ctx = rng.integers(0, c.n_user_features, c.n_users)
        self.item_feat = rng.integers(0, c.n_item_features, m)
        self.user_weight = 1.0 / (np.arange(c.n_users) + 20.0)
        self.user_weight /= self.user_weight.sum()
        b0 = np.log(c.base_ctr / (1 - c.base_ctr))
        self.logit = (b0 + rng.normal(0, c.user_sd, c.n_users)[:, None, None]
                      + rng.normal(0, c.ctx_sd, c.n_user_features)[self.user_ctx][:, None, None]
                      + np.linspace(0.3, -0.3, c.n_positions)[None, :, None]
                      + (rng.normal(0, c.feat_sd, c.n_item_features)[self.item_feat]
                         + rng.normal(0, c.item_sd, m))[None, None, :]
                      + rng.normal(0, c.inter_sd, (c.n_user_features, c.n_item_features))[
                          self.user_ctx][:, self.item_feat][:, None, :])  # (U, P, M)
        base = np.concatenate([[c.max_propensity],
                               _geometric_tail(m - 1, 1 - c.max_propensity, c.min_propensity)])
        lam = np.linspace(c.lam_min, 1.0, c.n_user_features)
        self.logger = np.zeros((c.n_user_features, m))
        for f in range(c.n_user_features):
            rank = rng.permutation(m)
            w = base[rank] ** lam[f]
            self.logger[f] = w / w.sum()

    @cached_property
    def click_probability(self) -> np.ndarray:
        """``(n_users, n_positions, n_items)`` true click probabilities."""
        return 1.0 / (1.0 + np.exp(-self.logit))

    def value(self, probs: np.ndarray) -> float:
        """Exact expected clicks per impression of a policy ``probs`` ``(n_users, n_positions,
        n_items)`` (or broadcastable), users and positions drawn as in the log."""
        p = np.broadcast_to(probs, self.click_probability.shape)
        per_user = (p * self.click_probability).sum(axis=2).mean(axis=1)
        return float((self.user_weight * per_user).sum())

    def uniform_value(self) -> float:
        return self.value(np.full(self.config.n_items, 1.0 / self.config.n_items))

    def logger_value(self) -> float:
        return self.value(self.logger[self.user_ctx][:, None, :])

    def item_ids(self) -> np.ndarray:
        """The catalogue: every item id (as written in the log's ``item_id``)."""
        return np.arange(1, self.config.n_items + 1)

    def table(self, seed: int, n_rows: int | None = None) -> pa.Table:
        """A log of ``n_rows`` impressions drawn with ``seed`` (file shape of the module docstring)."""
        c = self.config
        n = c.n_rows if n_rows is None else n_rows
        rng = np.random.default_rng([c.seed, seed, 7])
        u = rng.choice(c.n_users, n, p=self.user_weight)
        pos = rng.integers(0, c.n_positions, n)
        mu = self.logger[self.user_ctx[u]]  # (n, M)
        a = (rng.random(n)[:, None] < np.cumsum(mu, axis=1)).argmax(axis=1)
        a = np.minimum(a, c.n_items - 1)
        click = rng.random(n) < self.click_probability[u, pos, a]
        return pa.table({
            "timestamp": pa.array(1_700_000_000 + np.sort(rng.integers(0, 86_400 * 7, n))),
            "user_id": pa.array(_hash("u", u), pa.string()),
            "user_feature_0": pa.array(_hash("f", self.user_ctx[u]), pa.string()),
            "position": pa.array(pos + 1),
            "item_id": pa.array(a + 1),
            "item_feature_0": pa.array(_hash("i", self.item_feat[a]), pa.string()),
            "click": pa.array(click.astype(np.int64)),
            "propensity_score": pa.array(mu[np.arange(n), a]),
        })


def write_fixture(directory: str | Path, n_rows: int = 1000, seed: int = 0,
                  config: ExternalLogConfig | None = None, events_per_user: int = 4) -> dict[str, Path]:
    """A small real-shaped log and its companions as CSV files in ``directory``:
    ``log.csv`` (one impression per row, :data:`READ_OPTIONS`), ``catalogue.csv`` (every
    item id), ``table.csv`` (a probability table keyed by ``user_feature_0``: the
    logger's distribution flattened halfway to uniform), ``events.csv`` (an earlier
    interaction history: ``events_per_user`` items per user drawn in proportion to the
    click probability, for models to fit on). Returns name -> path."""
    import pyarrow.csv as pacsv

    cfg = config or ExternalLogConfig(n_rows=n_rows, n_users=200, base_ctr=0.01)
    world = ExternalLogWorld(cfg)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"log": out / "log.csv", "catalogue": out / "catalogue.csv", "table": out / "table.csv",
             "events": out / "events.csv"}
    pacsv.write_csv(world.table(seed, n_rows), paths["log"])
    pacsv.write_csv(pa.table({"item_id": pa.array(world.item_ids())}), paths["catalogue"])
    m = cfg.n_items
    dist = 0.5 * world.logger + 0.5 / m  # (n_user_features, M), rows sum to 1
    feats = _hash("f", np.arange(cfg.n_user_features))
    pacsv.write_csv(pa.table({
        "user_feature_0": pa.array(np.repeat(feats, m), pa.string()),
        "item_id": pa.array(np.tile(world.item_ids(), cfg.n_user_features)),
        "probability": pa.array(np.round(dist.ravel(), 12)),
    }), paths["table"])
    rng = np.random.default_rng([cfg.seed, seed, 11])
    q = world.click_probability.mean(axis=1)  # (U, M)
    q = q / q.sum(axis=1, keepdims=True)
    users = np.repeat(np.arange(cfg.n_users), events_per_user)
    items = (rng.random(len(users))[:, None] < np.cumsum(q[users], axis=1)).argmax(axis=1)
    pacsv.write_csv(pa.table({
        "user_id": pa.array(_hash("u", users), pa.string()),
        "item_id": pa.array(items + 1),
        "timestamp": pa.array(1_699_000_000 + np.arange(len(users)) * 60),
    }), paths["events"])
    return paths


if __name__ == "__main__":  # python -m recsys.data.external_logs <dir>: write the fixture
    import sys

    for name, p in write_fixture(sys.argv[1] if len(sys.argv) > 1 else ".").items():
        print(f"{name}: {p}")
