"""Ranker features from a synthetic world's impression log (numpy only, no torch).

One row per impression. Feature set :data:`FEATURE_SET_VERSION`:

* categorical (int64, 0 = padding/unknown): ``user`` (raw id, vocab
  n_users + 1), ``item`` (n_items + 1), ``category`` (1 + index of ``cN``,
  vocab n_categories + 1), ``position`` (0-based slot, vocab slate_size),
  ``hour`` (UTC hour of the request, vocab 24), ``user_group`` (1 + index of
  ``gN``, vocab n_groups + 1);
* dense (float32): ``price_log`` = log1p(price); ``user_ctr`` / ``item_ctr`` =
  smoothed click rate ``(clicks + A * p0) / (impressions + A)`` over the
  impressions of **earlier requests only** (point-in-time correct: a row never
  sees its own request or anything after it); ``user_log_imps`` /
  ``item_log_imps`` = log1p of those earlier impression counts.

The impression log has no channel column, so ``channel`` is not a feature of
this version; richer behavioural features belong to the features issue.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FEATURE_SET_VERSION = "ranker_features/1"
CATEGORICAL = ("user", "item", "category", "position", "hour", "user_group")
DENSE = ("price_log", "user_ctr", "item_ctr", "user_log_imps", "item_log_imps")
CTR_PRIOR, CTR_PRIOR_WEIGHT = 0.1, 20.0


@dataclass
class FeatureTable:
    """Column arrays of equal length N plus what a model needs to be built.

    ``features``: name -> (N,) int64 (categorical) or float32 (dense);
    ``label``: (N,) float32 clicks; ``request_id`` (N,) int64 and ``timestamp``
    (N,) float64 of the request; ``vocab_sizes``: categorical name -> size.
    """

    features: dict[str, np.ndarray]
    label: np.ndarray
    request_id: np.ndarray
    timestamp: np.ndarray
    vocab_sizes: dict[str, int]
    dense: list[str]
    version: str = FEATURE_SET_VERSION
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)

    def take(self, idx: np.ndarray) -> "FeatureTable":
        """Rows ``idx`` (an int index array) as a new table."""
        return FeatureTable({k: v[idx] for k, v in self.features.items()}, self.label[idx],
                            self.request_id[idx], self.timestamp[idx], dict(self.vocab_sizes),
                            list(self.dense), self.version, dict(self.meta))


def prior_counts(key: np.ndarray, request: np.ndarray, click: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clicks and impressions of the same ``key`` in strictly earlier requests.

    ``key``, ``request`` (ordered like time), ``click``: (N,). Returns two (N,)
    float64 arrays; rows of the same (key, request) share their counts.
    """
    order = np.lexsort((request, key))
    k, r, c = key[order], request[order], click[order].astype(np.float64)
    new_group = np.r_[True, (k[1:] != k[:-1]) | (r[1:] != r[:-1])]
    gid = np.cumsum(new_group) - 1  # group of each sorted row
    g_clicks = np.bincount(gid, weights=c)
    g_imps = np.bincount(gid).astype(np.float64)
    g_key = k[new_group]
    first = np.r_[True, g_key[1:] != g_key[:-1]]  # first group of each key
    start = np.maximum.accumulate(np.where(first, np.arange(len(g_key)), 0))
    cum_c, cum_i = np.cumsum(g_clicks) - g_clicks, np.cumsum(g_imps) - g_imps  # exclusive, global
    prior_c, prior_i = cum_c - cum_c[start], cum_i - cum_i[start]
    out_c, out_i = np.empty(len(key)), np.empty(len(key))
    out_c[order], out_i[order] = prior_c[gid], prior_i[gid]
    return out_c, out_i


def smoothed_ctr(clicks: np.ndarray, imps: np.ndarray) -> np.ndarray:
    return ((clicks + CTR_PRIOR_WEIGHT * CTR_PRIOR) / (imps + CTR_PRIOR_WEIGHT)).astype(np.float32)


def _codes(values: Any, prefix: str) -> np.ndarray:
    """``"c3"`` -> 4 (0 is kept for unknown)."""
    arr = np.asarray(values, dtype=object)
    return np.array([int(str(v)[len(prefix):]) + 1 for v in arr], dtype=np.int64)


def build_ranker_features(world: Any) -> FeatureTable:
    """The feature table of ``world.impressions`` (a
    :class:`~recsys.data.synthetic.SyntheticWorld`), rows in log order."""
    imp, cfg = world.impressions, world.config
    user = np.asarray(imp["user_id"].to_numpy(zero_copy_only=False), dtype=np.int64)
    item = np.asarray(imp["item_id"].to_numpy(zero_copy_only=False), dtype=np.int64)
    req = imp["request_id"].to_numpy().astype(np.int64)
    ts = imp["timestamp"].to_numpy().astype(np.float64)
    click = imp["click"].to_numpy().astype(np.float32)
    item_ids = np.asarray(world.items["item_id"].to_numpy(zero_copy_only=False), dtype=np.int64)
    cat_of = np.zeros(cfg.n_items + 1, dtype=np.int64)
    cat_of[item_ids] = _codes(world.items["category"].to_pylist(), "c")
    price_of = np.zeros(cfg.n_items + 1)
    price_of[item_ids] = world.items["price"].to_numpy()
    user_ids = np.asarray(world.users["user_id"].to_numpy(zero_copy_only=False), dtype=np.int64)
    group_of = np.zeros(cfg.n_users + 1, dtype=np.int64)
    group_of[user_ids] = _codes(world.users["group"].to_pylist(), "g")
    uc, ui = prior_counts(user, req, click)
    ic, ii = prior_counts(item, req, click)
    features = {
        "user": user, "item": item, "category": cat_of[item],
        "position": imp["position"].to_numpy().astype(np.int64),
        "hour": ((ts // 3600) % 24).astype(np.int64), "user_group": group_of[user],
        "price_log": np.log1p(price_of[item]).astype(np.float32),
        "user_ctr": smoothed_ctr(uc, ui), "item_ctr": smoothed_ctr(ic, ii),
        "user_log_imps": np.log1p(ui).astype(np.float32), "item_log_imps": np.log1p(ii).astype(np.float32),
    }
    vocab = {"user": cfg.n_users + 1, "item": cfg.n_items + 1, "category": cfg.n_categories + 1,
             "position": cfg.slate_size, "hour": 24, "user_group": cfg.n_groups + 1}
    return FeatureTable(features, click, req, ts, vocab, list(DENSE))
