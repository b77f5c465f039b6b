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


def serving_tables(world: Any) -> tuple[Any, Any]:
    """The item catalogue and users table a decision service needs to compute
    :func:`build_ranker_features`' item- and user-level inputs for ``world``:
    catalogue ``item_id, category`` (the raw category, as events and behavioural
    features see it), ``category_idx`` (the ranker's code), ``price_log``,
    ``available``; users ``user_id, user_group`` (code). Two pyarrow tables."""
    import pyarrow as pa

    items = world.items
    cats = items["category"].to_pylist()
    catalogue = pa.table({
        "item_id": items["item_id"].cast(pa.string()), "category": pa.array([str(c) for c in cats]),
        "category_idx": pa.array(_codes(cats, "c")),
        "price_log": pa.array(np.log1p(items["price"].to_numpy()).astype(np.float32)),
        "available": pa.array(np.ones(items.num_rows, dtype=bool))})
    users = pa.table({"user_id": world.users["user_id"].cast(pa.string()),
                      "user_group": pa.array(_codes(world.users["group"].to_pylist(), "g"))})
    return catalogue, users


# --------------------------------------------------------------------------- ratings data (ml-100k)

RATINGS_FEATURE_SET_VERSION = "ratings_ranker_features/1"
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens age groups: <18, 18-24, ..., 56+ -> codes 1..7 (0 unknown)


def counts_before(key_e: np.ndarray, ts_e: np.ndarray, w_e: np.ndarray, key_q: np.ndarray,
                  ts_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number and weight sum of events with the same key and a strictly earlier
    timestamp, for each query (key_q, ts_q). All arrays 1-D; returns two (Q,) float64."""
    ts_all = np.unique(np.concatenate([ts_e, ts_q]))
    base = np.int64(len(ts_all) + 1)
    comp_e = key_e.astype(np.int64) * base + np.searchsorted(ts_all, ts_e)
    order = np.argsort(comp_e, kind="stable")
    comp_e = comp_e[order]
    w_cum = np.r_[0.0, np.cumsum(np.asarray(w_e, dtype=np.float64)[order])]
    q = key_q.astype(np.int64) * base
    hi = np.searchsorted(comp_e, q + np.searchsorted(ts_all, ts_q), side="left")
    lo = np.searchsorted(comp_e, q, side="left")
    return (hi - lo).astype(np.float64), w_cum[hi] - w_cum[lo]


def _dictionary_codes(values: list[Any]) -> tuple[np.ndarray, int]:
    """1-based codes of string values (sorted vocabulary; None/'' -> 0) and the vocab size."""
    vocab = sorted({str(v) for v in values if v not in (None, "")})
    index = {v: i + 1 for i, v in enumerate(vocab)}
    return np.array([index.get(str(v), 0) if v not in (None, "") else 0 for v in values], dtype=np.int64), len(vocab) + 1


def build_rating_features(data: Any, threshold: float = 4.0, negatives_per_event: int = 2,
                          seed: int = 0) -> FeatureTable:
    """Ranking rows from explicit ratings (a prepared dataset with ``value`` and
    user / item side tables, e.g. ml-100k).

    Every rating event is a "request" at its timestamp: the rated item (label 1
    if rating >= ``threshold``, else 0: shown but not liked) plus
    ``negatives_per_event`` items the user never rated (label 0), sampled
    uniformly. Feature set :data:`RATINGS_FEATURE_SET_VERSION`:

    * categorical: ``user``, ``item``, ``age`` (MovieLens age group, 1..7),
      ``gender``, ``occupation`` (dictionary codes, 0 = unknown);
    * dense: ``genre_<name>`` (0/1 per genre of the item's ``class`` list);
      ``item_log_pop`` / ``user_log_n`` = log1p of the item's / user's ratings
      strictly before the row's timestamp; ``item_like_rate`` / ``user_like_rate``
      = smoothed share of those ratings that were >= threshold (point in time:
      nothing at or after the row's own timestamp is counted).

    ``request_id`` is the rating event (its rows share its timestamp, so a time
    split never separates them); per-user candidate lists group by ``user``.
    """
    inter = data.interactions
    if "value" not in inter.column_names or inter.column("value").null_count == inter.num_rows:
        raise ValueError(f"data {data.name!r}: no rating values (column 'value'); a ratings ranker needs explicit ratings")
    u = inter.column("user_idx").to_numpy().astype(np.int64)
    it = inter.column("item_idx").to_numpy().astype(np.int64)
    ts = inter.column("timestamp").to_numpy().astype(np.float64)
    val = inter.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
    liked = (np.nan_to_num(val, nan=0.0) >= threshold).astype(np.float64)
    n_users, n_items = data.n_users, data.n_items
    rng = np.random.default_rng(seed)
    # sampled negatives: items the user never rated (rejection sampling, vectorised)
    rated = set((u * (n_items + 1) + it).tolist())
    k = int(negatives_per_event)
    neg_u, neg_t, neg_req = np.repeat(u, k), np.repeat(ts, k), np.repeat(np.arange(len(u)), k)
    neg_i = rng.integers(1, n_items + 1, len(neg_u))
    for _ in range(50):
        bad = np.fromiter(((a * (n_items + 1) + b) in rated for a, b in zip(neg_u.tolist(), neg_i.tolist())),
                          dtype=bool, count=len(neg_u))
        if not bad.any():
            break
        neg_i[bad] = rng.integers(1, n_items + 1, int(bad.sum()))
    row_u, row_i = np.r_[u, neg_u], np.r_[it, neg_i]
    row_t, row_req = np.r_[ts, neg_t], np.r_[np.arange(len(u)), neg_req]
    label = np.r_[liked, np.zeros(len(neg_u))].astype(np.float32)
    order = np.lexsort((row_i, row_req))
    row_u, row_i, row_t, row_req, label = row_u[order], row_i[order], row_t[order], row_req[order], label[order]

    users, items = data.users, data.items

    def side(table: Any, col: str, n: int) -> list[Any]:
        out: list[Any] = [None] * (n + 1)
        if col in table.column_names:
            for idx, v in zip(table.column(table.column_names[0]).to_pylist(), table.column(col).to_pylist()):
                out[int(idx)] = v
        return out

    ages = side(users, "age", n_users)
    age_code = np.array([0 if a in (None, "") else 1 + int(np.searchsorted(AGE_EDGES, float(a), side="right"))
                         for a in ages], dtype=np.int64)
    gender, g_vocab = _dictionary_codes(side(users, "gender", n_users))
    occupation, o_vocab = _dictionary_codes(side(users, "occupation", n_users))
    genres_of = side(items, "class", n_items)
    genre_names = sorted({g for gs in genres_of if gs for g in gs})
    g_index = {g: j for j, g in enumerate(genre_names)}
    genre = np.zeros((n_items + 1, len(genre_names)), dtype=np.float32)
    for i, gs in enumerate(genres_of):
        for g in gs or []:
            genre[i, g_index[g]] = 1.0
    i_n, i_like = counts_before(it, ts, liked, row_i, row_t)
    u_n, u_like = counts_before(u, ts, liked, row_u, row_t)
    prior = float(liked.mean()) if len(liked) else 0.5
    features: dict[str, np.ndarray] = {
        "user": row_u, "item": row_i, "age": age_code[row_u], "gender": gender[row_u], "occupation": occupation[row_u],
        "item_log_pop": np.log1p(i_n).astype(np.float32), "user_log_n": np.log1p(u_n).astype(np.float32),
        "item_like_rate": ((i_like + CTR_PRIOR_WEIGHT * prior) / (i_n + CTR_PRIOR_WEIGHT)).astype(np.float32),
        "user_like_rate": ((u_like + CTR_PRIOR_WEIGHT * prior) / (u_n + CTR_PRIOR_WEIGHT)).astype(np.float32),
    }
    safe = {g: "genre_" + "".join(c if c.isalnum() else "_" for c in g.lower()) for g in genre_names}
    for g in genre_names:
        features[safe[g]] = genre[row_i, g_index[g]]
    dense = ["item_log_pop", "user_log_n", "item_like_rate", "user_like_rate", *[safe[g] for g in genre_names]]
    vocab = {"user": n_users + 1, "item": n_items + 1, "age": len(AGE_EDGES) + 2, "gender": g_vocab,
             "occupation": o_vocab}
    return FeatureTable(features, label, row_req.astype(np.int64), row_t, vocab, dense,
                        RATINGS_FEATURE_SET_VERSION,
                        {"threshold": threshold, "negatives_per_event": k,
                         "positive_rate_rated": prior, "genres": genre_names})


def signed_log1p(v: Any) -> np.ndarray:
    """``sign(x) * log1p(|x|)`` as float32, NaN / inf -> 0: how a behavioural feature
    enters the ranker (counts and seconds span orders of magnitude); offline
    (:func:`add_behavioural_features`) and online (the decision service) alike."""
    v = np.asarray(v, dtype=np.float64)
    return np.nan_to_num(np.sign(v) * np.log1p(np.abs(v)), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def json_plain(x: Any) -> Any:
    """``x`` with numpy scalars / arrays turned into JSON types (for manifests)."""
    if isinstance(x, dict):
        return {str(k): json_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_plain(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    return x


def add_behavioural_features(table: FeatureTable, world: Any, feature_set: Any = None,
                             names: list[str] | None = None, params: dict[str, Any] | None = None,
                             prefix: str = "bf_") -> FeatureTable:
    """``table`` (from :func:`build_ranker_features`, rows in impression-log order)
    plus behavioural features of each impression's user, item, user x item and
    user x category as of the request time (events strictly before it; see
    :func:`recsys.features.pointintime.build_training_set`).

    ``feature_set``: a :class:`~recsys.features.definitions.FeatureSet` or its
    config mapping (default: ``configs/features/default.yaml``'s knobs); ``names``:
    which features (default: all). Each becomes a dense float32 column
    ``prefix + name`` holding ``sign(x) * log1p(|x|)`` (counts and seconds span
    orders of magnitude), NaN -> 0. The table's version gains the feature-set hash.
    """
    from recsys.features.pointintime import build_training_set

    from recsys.features.definitions import FeatureSet, build_feature_set

    fs = feature_set if isinstance(feature_set, FeatureSet) else build_feature_set(feature_set)
    imp = world.impressions.select(["user_id", "item_id", "timestamp"])
    rows, info = build_training_set(world.events, imp, fs, params=params, items=world.items)
    skip = {"user_id", "item_id", "timestamp", "category"}
    names = names or [c for c in rows.columns if c not in skip]
    feats, dense = dict(table.features), list(table.dense)
    for n in names:
        feats[prefix + n] = signed_log1p(rows.get_column(n).cast(float).to_numpy())
        dense.append(prefix + n)
    # everything a service needs to compute the same columns online (recsys.service.behaviour)
    meta = {**table.meta, "behavioural": {"feature_set": info["feature_set"], "fit_time": info["fit_time"],
                                          "names": names, "prefix": prefix, "transform": "signed_log1p",
                                          "config": json_plain(fs.config), "params": json_plain(info["params"])}}
    return FeatureTable(feats, table.label, table.request_id, table.timestamp, dict(table.vocab_sizes), dense,
                        f"{table.version}+{info['feature_set']}", meta)
