"""Features as of arbitrary query times (point in time), in polars + numpy.

:func:`asof_features` gives the features of (entity key, time) query rows, each
seeing only events strictly before its own time: cumulative sums per key, a
segmented scan for decayed sums, and strict backward as-of joins. The point-in-time
training set (:mod:`recsys.features.pointintime`) and the skew check use it; the
one-time snapshot of every key is :mod:`recsys.features.batch`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import polars as pl

from recsys.features.definitions import BEHAVIOURAL, ENTITIES, SOURCES, Accumulator, FeatureSet
from recsys.features.events import scan_events
from recsys.features.transforms import evaluate


# ---------------------------------------------------------------- source weights (polars)


def weight_expr(source: str) -> pl.Expr:
    """Per-event weight of a non-session source as a polars expression."""
    s = SOURCES[source]
    is_type = pl.col("event_type").is_in(list(s.event_types)) if len(s.event_types) > 1 else (
        pl.col("event_type") == s.event_types[0])
    val = pl.col("value")
    if s.weight == "one":
        return is_type.cast(pl.Float64)
    if s.weight == "value":
        return pl.when(is_type).then(val.fill_null(0.0)).otherwise(0.0)
    if s.weight == "value_sq":
        return pl.when(is_type).then((val * val).fill_null(0.0)).otherwise(0.0)
    if s.weight == "value_n":
        return (is_type & val.is_not_null()).cast(pl.Float64)
    if s.weight == "time":
        return pl.when(is_type).then(pl.col("timestamp"))
    raise ValueError(source)


def _max_value_expr(source: str) -> pl.Expr:
    """Values a ``max`` accumulator ranges over (null where the event does not count)."""
    s = SOURCES[source]
    if s.weight == "time":
        return weight_expr(source)
    is_type = pl.col("event_type").is_in(list(s.event_types))
    return pl.when(is_type).then(pl.col("value"))


def _sessions(lf: pl.LazyFrame, keys: list[str] | None = None) -> pl.LazyFrame:
    """One row per (user, session) with the times of its session flags."""
    t, et = pl.col("timestamp"), pl.col("event_type")
    keys = keys or ["user_id", "session_id"]
    first = [pl.col("user_id").first()] if "user_id" not in keys else []
    return (lf.filter(pl.col("session_id").is_not_null())
            .group_by(keys)
            .agg(*first, first_t=t.min(), cart_t=t.filter(et == "add_to_cart").min(),
                 purchase_t=t.filter(et == "purchase").min())
            .with_columns(converted_t=pl.when(pl.col("cart_t").is_not_null() & pl.col("purchase_t").is_not_null())
                          .then(pl.max_horizontal("cart_t", "purchase_t"))))


SESSION_TIME = {"start": "first_t", "cart": "cart_t", "converted": "converted_t"}


# ---------------------------------------------------------------- as-of (point in time)


def decay_scan(group: np.ndarray, t: np.ndarray, w: np.ndarray, half_life: float) -> np.ndarray:
    """``v[i] = sum_{j <= i, group[j] == group[i]} w[j] 2^(-(t[i] - t[j]) / h)`` for rows
    sorted by (group, t): a segmented linear recurrence solved by a parallel
    (Hillis-Steele) scan, log2(N) vector passes, every factor <= 1 (no overflow)."""
    n = len(t)
    v = np.asarray(w, dtype=np.float64).copy()
    if n == 0:
        return v
    a = np.zeros(n)
    same = group[1:] == group[:-1]
    a[1:] = np.exp2(-np.where(same, t[1:] - t[:-1], np.inf) / half_life)
    d = 1
    while d < n:
        v_new = v.copy()
        v_new[d:] += a[d:] * v[:-d]
        a_new = a.copy()
        a_new[d:] *= a[:-d]
        a_new[:d] = a[:d]
        v, a = v_new, a_new
        d *= 2
    return v


def _asof_rows(stream: pl.DataFrame, keys: list[str], q: pl.DataFrame, at: str,
               on: pl.Expr | None = None) -> np.ndarray:
    """Row of ``stream`` (sorted by time) holding the last event of the same key
    whose ``on`` (default: timestamp) is strictly below ``q[at]``, -1 where there
    is none. ``q`` has ``__qid``."""
    left = q.select([*keys, "__qid", pl.col(at).alias("__t")]).sort("__t")
    right = stream.select([*keys, (pl.col("timestamp") if on is None else on).alias("__t"), "__row"])
    j = left.join_asof(right, on="__t", by=keys, strategy="backward", allow_exact_matches=False,
                       check_sortedness=False)
    out = np.full(len(q), -1, dtype=np.int64)
    out[j["__qid"].to_numpy()] = j["__row"].fill_null(-1).to_numpy()
    return out


def _cumulative(stream: pl.DataFrame, keys: list[str], accs: list[Accumulator],
                weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Running state after each row of ``stream`` (sorted by time) per key."""
    gid = stream.select(pl.struct(keys).rank("dense")).to_series().to_numpy().astype(np.int64)
    t = stream["timestamp"].to_numpy()
    order = np.lexsort((np.arange(len(t)), gid))  # by key, then time order (stable)
    g_s, t_s = gid[order], t[order]
    out = {}
    for a in accs:
        w = weights[a.name][order]
        if a.mode in ("total", "window"):
            res = pl.DataFrame({"g": g_s, "x": w}).select(pl.col("x").cum_sum().over("g"))["x"].to_numpy()
        elif a.mode == "max":
            x = np.where(np.isnan(w), -np.inf, w)
            res = pl.DataFrame({"g": g_s, "x": x}).select(pl.col("x").cum_max().over("g"))["x"].to_numpy()
            res = np.where(np.isneginf(res), np.nan, res)
        else:
            res = decay_scan(g_s, t_s, w, a.half_life)
        full = np.empty(len(t))
        full[order] = res
        out[a.name] = full
    return out


def _weights_np(stream: pl.DataFrame, accs: list[Accumulator]) -> dict[str, np.ndarray]:
    exprs = []
    for a in accs:
        e = _max_value_expr(a.source) if a.mode == "max" else weight_expr(a.source)
        exprs.append(e.cast(pl.Float64).fill_null(float("nan") if a.mode == "max" else 0.0).alias(a.name))
    w = stream.select(exprs)
    return {a.name: w[a.name].to_numpy() for a in accs}


def asof_accumulators(lf: pl.LazyFrame, fs: FeatureSet, entity: str, queries: pl.DataFrame,
                      time_col: str = "timestamp") -> dict[str, np.ndarray]:
    """Accumulator values at each query row's time (events strictly before it)."""
    keys = list(ENTITIES[entity])
    q = queries.select([*keys, pl.col(time_col).cast(pl.Float64).alias("__qt")]).with_row_index("__qid")
    qt = q["__qt"].to_numpy()
    accs = fs.entity_accumulators(entity)
    out: dict[str, np.ndarray] = {}
    ev = (lf.filter(pl.col("event_type").is_in(list(BEHAVIOURAL))).select([*keys, "timestamp", "event_type",
                                                                             "value", "session_id"])
          .sort("timestamp", maintain_order=True).collect().with_row_index("__row"))
    plain = [a for a in accs if not SOURCES[a.source].session]
    if plain:
        cum = _cumulative(ev, keys, plain, _weights_np(ev, plain))
        rows = _asof_rows(ev, keys, q, "__qt")
        ok = rows >= 0
        r = np.where(ok, rows, 0)
        starts: dict[tuple[float, float], np.ndarray] = {}
        ts = ev["timestamp"].to_numpy()
        for a in plain:
            c = cum[a.name][r] if len(ev) else np.zeros(len(q))
            if a.mode == "total":
                v = np.where(ok, c, 0.0)
            elif a.mode == "max":
                v = np.where(ok, c, np.nan)
            elif a.mode == "decay":
                v = c * np.exp2(-np.where(ok, qt - ts[r], np.inf) / a.half_life) if len(ev) else np.zeros(len(q))
            else:
                k = (a.window, a.bucket)
                if k not in starts:  # last event in a bucket before the window's first bucket
                    first_bucket = np.floor(qt / a.bucket) - (a.n_buckets - 1)
                    qs = q.with_columns(__ws=pl.Series(first_bucket))
                    starts[k] = _asof_rows(ev, keys, qs, "__ws", on=(pl.col("timestamp") / a.bucket).floor())
                rs = starts[k]
                before = np.where(rs >= 0, cum[a.name][np.where(rs >= 0, rs, 0)], 0.0) if len(ev) else 0.0
                v = np.where(ok, c, 0.0) - before
            out[a.name] = v
    sess = [a for a in accs if SOURCES[a.source].session]
    if sess:
        st = _sessions(ev.lazy()).collect()
        for a in sess:
            col = SESSION_TIME[SOURCES[a.source].session]
            s = st.filter(pl.col(col).is_not_null()).select("user_id", pl.col(col).alias("timestamp")).sort(
                "timestamp").with_row_index("__row")
            rows = _asof_rows(s, keys, q, "__qt")
            cnt = _cumulative(s, keys, [a], {a.name: np.ones(len(s))})[a.name] if len(s) else np.zeros(0)
            out[a.name] = np.where(rows >= 0, cnt[np.where(rows >= 0, rows, 0)] if len(s) else 0.0, 0.0)
    return out


def asof_features(events: Any, fs: FeatureSet, entity: str, queries: pl.DataFrame,
                  params: Mapping[str, Any] | None, time_col: str = "timestamp") -> dict[str, np.ndarray]:
    """Feature values of ``entity`` at each query row (keys + ``time_col``)."""
    lf = events if isinstance(events, pl.LazyFrame) else scan_events(events)
    accs = asof_accumulators(lf, fs, entity, queries, time_col)
    t = queries[time_col].cast(pl.Float64).to_numpy()
    return evaluate(fs, entity, accs, t, params)
