"""Batch feature computation over event logs (numpy on integer ids; polars for as-of).

Two entry points share :mod:`recsys.features.definitions`:

* :func:`snapshot` - every entity's features as of one time ``T``: the id
  columns are dictionary-encoded once (Parquet dictionary pages reused) and every
  accumulator is a ``bincount`` / ``maximum.at`` over integer group ids, the path
  ``recsys features build`` and the bench use;
* :func:`asof_features` - features of arbitrary (entity key, time) query rows,
  each seeing only events strictly before its own time: cumulative sums per key,
  a segmented scan for decayed sums, and strict backward as-of joins (the path
  the point-in-time training set uses).

Events need ``user_id``, ``item_id``, ``timestamp``, ``event_type``; ``value``
(dwell seconds of views), ``session_id`` and ``category`` are optional.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import polars as pl

from recsys.features.definitions import (
    BEHAVIOURAL,
    ENTITIES,
    SOURCES,
    Accumulator,
    FeatureSet,
    evaluate,
    fit_params,
)
from recsys.utils.errors import DataError

LN2 = math.log(2.0)
REQUIRED = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Float64, "event_type": pl.String}
OPTIONAL = {"value": pl.Float64, "session_id": pl.String, "category": pl.String}
UNKNOWN_CATEGORY = "unknown"


# ---------------------------------------------------------------- input


def scan_events(source: str | Path | pl.DataFrame | pl.LazyFrame | Any, items: Any = None,
                name: str | None = None) -> pl.LazyFrame:
    """Events as a LazyFrame with the columns features need, checked.

    ``source``: a Parquet path, a polars frame or a pyarrow table. ``items``: an
    optional table (path or frame) with ``item_id`` and ``category``, joined when
    the events carry no ``category``. Raises :class:`DataError` naming the file
    for a missing file, a missing or mistyped column or an empty log.
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "<events>")
    if isinstance(source, (str, Path)):
        if not Path(source).exists():
            raise DataError(label, "no such file")
        try:
            lf = pl.scan_parquet(source)
            schema = lf.collect_schema()
        except Exception as e:  # polars raises many kinds for a bad file
            raise DataError(label, f"not a readable Parquet file ({type(e).__name__})") from None
    else:
        lf = source.lazy() if isinstance(source, pl.DataFrame) else (
            source if isinstance(source, pl.LazyFrame) else pl.from_arrow(source).lazy())
        schema = lf.collect_schema()
    for col, dtype in REQUIRED.items():
        if col not in schema:
            raise DataError(label, f"missing required column (have {list(schema.names())})", column=col)
        if not _compatible(schema[col], dtype):
            raise DataError(label, f"expected {dtype}, found {schema[col]}", column=col)
    casts = [pl.col("timestamp").cast(pl.Float64)]
    for col, dtype in OPTIONAL.items():
        if col in schema:
            casts.append(pl.col(col).cast(dtype))
        elif col != "category":
            casts.append(pl.lit(None, dtype).alias(col))
    lf = lf.with_columns(casts)
    if "category" not in schema:
        if items is not None:
            it = items if isinstance(items, (pl.DataFrame, pl.LazyFrame)) else (
                pl.scan_parquet(items) if isinstance(items, (str, Path)) else pl.from_arrow(items))
            it = it.lazy().select(pl.col("item_id").cast(pl.String), pl.col("category").cast(pl.String))
            lf = lf.join(it, on="item_id", how="left", maintain_order="left")
            lf = lf.with_columns(pl.col("category").fill_null(UNKNOWN_CATEGORY))
        else:
            lf = lf.with_columns(pl.lit(UNKNOWN_CATEGORY).alias("category"))
    return lf.select([*REQUIRED, *OPTIONAL])


def _compatible(actual: Any, wanted: Any) -> bool:
    if wanted == pl.String:
        return actual in (pl.String, pl.Categorical) or isinstance(actual, (pl.Categorical, pl.Enum))
    return actual.is_numeric()


def check_events(lf: pl.LazyFrame, label: str = "<events>") -> dict[str, Any]:
    """Row-level checks (one pass): not empty, no null keys, no NaN/null timestamps."""
    s = lf.select(n=pl.len(), bad_t=(pl.col("timestamp").is_null() | pl.col("timestamp").is_nan()).sum(),
                  null_user=pl.col("user_id").null_count(), null_item=pl.col("item_id").null_count(),
                  null_type=pl.col("event_type").null_count(), t_min=pl.col("timestamp").min(),
                  t_max=pl.col("timestamp").max()).collect().row(0, named=True)
    return _raise_bad(s, label)


def _raise_bad(s: Mapping[str, Any], label: str) -> dict[str, Any]:
    if s["n"] == 0:
        raise DataError(label, "empty event log (0 rows)")
    if s["bad_t"]:
        raise DataError(label, f"{s['bad_t']} rows with a null or NaN timestamp", column="timestamp")
    for col in ("user", "item", "type"):
        if s[f"null_{col}"]:
            name = {"user": "user_id", "item": "item_id", "type": "event_type"}[col]
            raise DataError(label, f"{s[f'null_{col}']} null values", column=name)
    return dict(s)


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


# ---------------------------------------------------------------- snapshot (integer-coded, numpy)
#
# The snapshot dictionary-encodes the id columns once (user, item, category,
# session -> dense int codes; a Parquet file's own dictionary pages are reused, so
# no id string is hashed per row) and aggregates on those integer codes with
# ``np.bincount`` / ``np.maximum.at``: users and items index dense arrays directly,
# (user, category) and (user, item) are packed into one int64 and compacted (dense
# remap, or one hash factorisation when the packed range is too wide), sessions map
# to their user through a dense array. Count-like sources share one pass per
# (entity, mode) by summing per (key, event type); windows only touch the events
# inside them. Raw ids come back only on the output rows.

_ID_COLS = ("user_id", "item_id", "category", "session_id")
_TYPE_CODES = {t: i for i, t in enumerate(BEHAVIOURAL)}


class _Events:
    """Behavioural events before ``as_of`` as numpy columns with integer ids."""

    def __init__(self, t: np.ndarray, code: np.ndarray, value: np.ndarray, ids: dict[str, np.ndarray],
                 dicts: dict[str, Any]):
        self.t, self.code, self.value, self.ids, self.dicts = t, code, value, ids, dicts
        self.n = len(t)
        self._cache: dict[Any, Any] = {}

    def cached(self, key: Any, fn: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]


def _read_arrow(events: Any, label: str) -> Any:
    """The checked events as a pyarrow table (id columns dictionary-encoded when
    read straight from Parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(events, (str, Path)):
        lf = scan_events(events, name=label)  # schema checks, DataError naming the file
        schema = pl.scan_parquet(events).collect_schema()
        if "category" in schema:
            cols = [c for c in (*REQUIRED, *OPTIONAL) if c in schema]
            dict_cols = [c for c in cols if c in (*_ID_COLS, "event_type") and schema[c] == pl.String]
            try:
                tab = pq.read_table(events, columns=cols, read_dictionary=dict_cols)
            except Exception as e:  # pragma: no cover - scan_events already opened it
                raise DataError(label, f"not a readable Parquet file ({type(e).__name__})") from None
            n = tab.num_rows
            for col, dtype in OPTIONAL.items():
                if col not in tab.column_names:
                    tab = tab.append_column(col, pa.nulls(n, pa.float64() if dtype == pl.Float64 else pa.string()))
            return tab
        return lf.collect().to_arrow()
    if isinstance(events, pl.LazyFrame):
        return events.collect().to_arrow()
    return scan_events(events, name=label).collect().to_arrow()


def _dict_codes(col: Any) -> tuple[np.ndarray, Any]:
    """(int64 codes with -1 for null, dictionary values) of a (chunked) column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_dictionary(col.type):
        if pa.types.is_string_view(col.type) or pa.types.is_large_string(col.type):
            col = col.cast(pa.string()) if pa.types.is_string_view(col.type) else col
        col = pc.dictionary_encode(col)
    chunks = col.chunks if hasattr(col, "chunks") else [col]
    if not chunks:
        return np.zeros(0, dtype=np.int32), pa.array([], pa.string())
    dictionary = chunks[0].dictionary
    parts = []
    for ch in chunks:
        idx = ch.indices
        if idx.null_count:
            idx = pc.fill_null(idx, -1)
        parts.append(idx.to_numpy(zero_copy_only=False))
    codes = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return codes.astype(np.int32, copy=False), dictionary


def _null_as_code(codes: np.ndarray, dictionary: Any) -> tuple[np.ndarray, Any]:
    """A null key (e.g. a null category) becomes one more code whose value is null."""
    import pyarrow as pa

    if len(codes) and codes.min() < 0:
        codes = np.where(codes < 0, len(dictionary), codes)
        dictionary = pa.concat_arrays([dictionary, pa.nulls(1, dictionary.type)])
    return codes, dictionary


def encode_events(events: Any, as_of: float, label: str = "<events>") -> _Events:
    """Read, check and integer-encode the events; keep behavioural ones before ``as_of``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    tab = _read_arrow(events, label)
    dict_cols = [c for c in (*_ID_COLS, "event_type") if pa.types.is_dictionary(tab.schema.field(c).type)]
    if len(dict_cols) > 1:
        tab = tab.unify_dictionaries()
    n = tab.num_rows
    ts = pc.cast(tab.column("timestamp"), pa.float64())
    t = np.asarray(ts.to_numpy(), dtype=np.float64) if n else np.zeros(0)
    stats = {"n": n, "bad_t": int(ts.null_count + (np.isnan(t).sum() if n else 0)),
             "null_user": tab.column("user_id").null_count, "null_item": tab.column("item_id").null_count,
             "null_type": tab.column("event_type").null_count}
    _raise_bad(stats, label)
    type_codes, type_dict = _dict_codes(tab.column("event_type"))
    lut = np.array([_TYPE_CODES.get(s, -1) for s in type_dict.to_pylist()] + [-1], dtype=np.int8)
    code = lut[type_codes]
    keep = (code >= 0) & (t < as_of)
    all_kept = bool(keep.all())
    sel = (lambda a: a) if all_kept else (lambda a: a[keep])
    value = np.asarray(pc.cast(tab.column("value"), pa.float64()).to_numpy(), dtype=np.float64)
    ids, dicts = {}, {}
    for c in _ID_COLS:
        codes, dictionary = _dict_codes(tab.column(c))
        if c != "session_id":
            codes, dictionary = _null_as_code(codes, dictionary)
        ids[c], dicts[c] = sel(codes), dictionary
    return _Events(sel(t), sel(code), sel(value), ids, dicts)


def _factorize(key: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(dense group id per row, packed key per group) of int64 keys in [0, width)."""
    if width <= max(4 * len(key), 1 << 22):
        present = np.flatnonzero(np.bincount(key, minlength=width))
        remap = np.empty(width, dtype=np.int32 if len(present) < 2**31 else np.int64)
        remap[present] = np.arange(len(present))
        return remap[key], present
    import pandas as pd

    gid, uniq = pd.factorize(key, sort=False)
    return gid, np.asarray(uniq, dtype=np.int64)


def _entity_groups(ev: _Events, entity: str) -> tuple[np.ndarray, int, dict[str, np.ndarray]]:
    """(group id per event, number of groups, key column -> code per group)."""
    cols = ENTITIES[entity]
    if len(cols) == 1:
        c = ev.ids[cols[0]]
        gid, present = _factorize(c, len(ev.dicts[cols[0]]))
        return gid, len(present), {cols[0]: present}
    a, b = ev.ids[cols[0]], ev.ids[cols[1]]
    nb = max(len(ev.dicts[cols[1]]), 1)
    key = a.astype(np.int64)
    key *= nb
    key += b
    gid, packed = _factorize(key, len(ev.dicts[cols[0]]) * nb)
    return gid, len(packed), {cols[0]: packed // nb, cols[1]: packed % nb}


def _variant(a: Accumulator) -> tuple:
    if a.mode == "decay":
        return ("decay", a.half_life)
    if a.mode == "window":
        return ("window", a.window, a.bucket)
    return ("total",)


#: rows per chunk: temporaries stay small (reused by the allocator, cache-friendly)
CHUNK = 1 << 20


def _chunk_factor(t: np.ndarray, variant: tuple, as_of: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(rows of the chunk in the window, or None for all; per-row factor or None for 1)."""
    if variant[0] == "decay":
        x = t - as_of
        x *= LN2 / variant[1]
        return None, np.exp(x, out=x)
    if variant[0] == "window":
        a = Accumulator("", "event", "window", window=variant[1], bucket=variant[2])
        first_bucket = float(np.floor(as_of / a.bucket) - (a.n_buckets - 1))
        return np.flatnonzero(np.floor(t / a.bucket) >= first_bucket), None
    return None, None


def _accumulate(ev: _Events, entity: str, accs: list[Accumulator], as_of: float
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Every non-session accumulator of ``entity`` per group: (values, key codes, gid).

    Events are visited in chunks of :data:`CHUNK` rows (views, no copies); each
    chunk adds into preallocated per-group arrays with ``np.add.at`` /
    ``np.maximum.at``. Count-like (weight ``one``) sources share one table per
    mode: sums per (group, event type), a source sums its types' columns."""
    gid, G, keys = _entity_groups(ev, entity)
    nt = len(BEHAVIOURAL)
    plain = [a for a in accs if not SOURCES[a.source].session]
    split = {_variant(a): np.zeros(G * nt) for a in plain if a.mode != "max" and SOURCES[a.source].weight == "one"}
    sums = {a.name: np.zeros(G) for a in plain if a.mode != "max" and SOURCES[a.source].weight != "one"}
    maxes = {a.name: np.full(G, -np.inf) for a in plain if a.mode == "max"}
    variants = list(dict.fromkeys([_variant(a) for a in plain if a.mode != "max"]))
    for lo in range(0, ev.n, CHUNK):
        sl = slice(lo, min(lo + CHUNK, ev.n))
        g, code, t, value = gid[sl], ev.code[sl], ev.t[sl], ev.value[sl]
        key4 = None
        done: set[tuple] = set()
        # per-chunk decay factors / window rows, shared by every entity of the snapshot
        factors = {v: ev.cached((v, lo), lambda v=v: _chunk_factor(t, v, as_of)) for v in variants}
        subsets: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for a in plain:
            s = SOURCES[a.source]
            if a.mode == "max":
                gg, _, x = _chunk_subset(subsets, g, code, t, value, s, None)
                np.maximum.at(maxes[a.name], gg, x)
                continue
            var = _variant(a)
            rows, factor = factors[var]
            if s.weight == "one":
                if var not in done:
                    if key4 is None:
                        key4 = g.astype(np.int64)
                        key4 *= nt
                        key4 += code
                    k = key4 if rows is None else key4[rows]
                    np.add.at(split[var], k, 1.0 if factor is None else factor)
                    done.add(var)
                continue
            gg, idx, x = _chunk_subset(subsets, g, code, t, value, s, rows, var)
            if s.weight == "value_sq":
                x = x * x
            elif s.weight == "value_n":
                x = 1.0
            if factor is not None:
                x = x * factor[idx]
            np.add.at(sums[a.name], gg, x)
    out: dict[str, np.ndarray] = {}
    for a in plain:
        if a.mode == "max":
            m = maxes[a.name]
            out[a.name] = np.where(np.isneginf(m), np.nan, m)
        elif SOURCES[a.source].weight == "one":
            tab = split[_variant(a)].reshape(G, nt)
            types = [_TYPE_CODES[e] for e in SOURCES[a.source].event_types]
            out[a.name] = tab[:, types[0]].copy() if len(types) == 1 else tab[:, types].sum(axis=1)
        else:
            out[a.name] = sums[a.name]
    return out, keys, gid


#: entities aggregated by a polars group-by (multithreaded, releases the GIL) on a
#: worker thread while the numpy passes of the other entities run: the (user, item)
#: pass is the largest (millions of groups; a hash factorisation either way)
POLARS_ENTITIES: tuple[str, ...] = ()  # measured: ("user_item",) cost more CPU, no overlap under load
#: below this many events everything stays on the numpy path (tests cover both via it)
POLARS_MIN_ROWS = 0


def _polars_expr(a: Accumulator, as_of: float) -> pl.Expr:
    """One accumulator as a polars aggregation over the columns ``code`` (event type
    code), ``t``, ``v`` (value, NaN where null) - the same weights, decay factors
    and window rows as :func:`_accumulate`, from the same :data:`SOURCES`."""
    s = SOURCES[a.source]
    code, t, v = pl.col("code"), pl.col("t"), pl.col("v")
    types = [_TYPE_CODES[e] for e in s.event_types]
    is_type = code >= 0 if len(types) == len(BEHAVIOURAL) else (  # a column, not a scalar literal
        code == types[0] if len(types) == 1 else code.is_in(types))
    if a.mode == "max":
        x = t if s.weight == "time" else v
        m = is_type if s.weight == "time" else is_type & ~v.is_nan()
        x = x if s.weight == "time" and len(types) == len(BEHAVIOURAL) else x.filter(m)
        return x.max().fill_null(float("nan")).cast(pl.Float64).alias(a.name)
    if s.weight == "one":
        w = is_type
    else:
        m = is_type & ~v.is_nan()
        w = {"value": v, "value_sq": v * v, "value_n": pl.lit(1.0)}[s.weight]
        w = pl.when(m).then(w).otherwise(0.0) if s.weight != "value_n" else m
    if a.mode == "window":
        first_bucket = float(np.floor(as_of / a.bucket) - (a.n_buckets - 1))
        w = w & ((t / a.bucket).floor() >= first_bucket) if s.weight in ("one", "value_n") else (
            pl.when((t / a.bucket).floor() >= first_bucket).then(w).otherwise(0.0))
    if a.mode == "decay":
        factor = pl.col(f"decay:{a.half_life:g}")  # a column of the frame (numpy, as _chunk_factor)
        w = w.cast(pl.Float64) * factor if s.weight in ("one", "value_n") else w * factor
    return w.sum().cast(pl.Float64).alias(a.name)


def _accumulate_polars(ev: _Events, entity: str, accs: list[Accumulator], as_of: float
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], None]:
    """:func:`_accumulate` as one polars group-by on the packed int64 entity key
    (multithreaded, GIL released). Groups come sorted by key codes."""
    cols = ENTITIES[entity]
    plain = [a for a in accs if not SOURCES[a.source].session]
    if len(cols) == 1:
        key, nb = ev.ids[cols[0]].astype(np.int64), 1
    else:
        nb = max(len(ev.dicts[cols[1]]), 1)
        key = ev.ids[cols[0]].astype(np.int64)
        key *= nb
        key += ev.ids[cols[1]]
    data = {"k": key, "code": ev.code, "t": ev.t, "v": ev.value}
    for h in sorted({a.half_life for a in plain if a.mode == "decay"}):
        data[f"decay:{h:g}"] = ev.cached(("decay", h), lambda h=h: _chunk_factor(ev.t, ("decay", h), as_of)[1])
    df = pl.DataFrame(data, nan_to_null=False)
    res = (df.lazy().group_by("k").agg([_polars_expr(a, as_of) for a in plain])
           .sort("k").collect())  # deterministic: by (key codes), cheaper than maintain_order
    packed = res["k"].to_numpy()
    keys = {cols[0]: packed} if len(cols) == 1 else {cols[0]: packed // nb, cols[1]: packed % nb}
    return {a.name: res[a.name].to_numpy() for a in plain}, keys, None


def _chunk_subset(cache: dict, g: np.ndarray, code: np.ndarray, t: np.ndarray, value: np.ndarray, s: Any,
                  rows: np.ndarray | None, var: tuple = ("total",)) -> tuple[np.ndarray, Any, np.ndarray]:
    """(group id, rows, value or time) of a chunk's events a value/time source ranges
    over (its event types, a non-null value; restricted to a window's ``rows``)."""
    key = (s.event_types, s.weight == "time", var if rows is not None else None)
    if key not in cache:
        types = [_TYPE_CODES[e] for e in s.event_types]
        if s.weight == "time" and len(types) == len(BEHAVIOURAL):
            idx: Any = slice(None)
        else:
            m = code == types[0] if len(types) == 1 else np.isin(code, types)
            if s.weight != "time":
                m &= ~np.isnan(value)
            idx = np.flatnonzero(m)
        if rows is not None:
            idx = np.intersect1d(np.arange(len(g))[idx], rows, assume_unique=True)
        cache[key] = (g[idx], idx, t[idx] if s.weight == "time" else value[idx])
    return cache[key]


def _session_counts(ev: _Events, user_codes: np.ndarray, accs: list[Accumulator]) -> dict[str, np.ndarray]:
    """Per user (``user_codes``): number of sessions that started / had a cart /
    converted (cart and purchase), over behavioural events before as_of."""
    u, s = ev.ids["user_id"], ev.ids["session_id"]
    has = s >= 0
    if not has.all():
        u, s, code = u[has], s[has], ev.code[has]
    else:
        code = ev.code
    n_users = len(ev.dicts["user_id"])
    n_sess = len(ev.dicts["session_id"])
    su = np.full(max(n_sess, 1), -1, dtype=np.int64)
    su[s] = u
    if len(s) and not np.array_equal(su[s], u):  # a session id shared by several users: (user, session) pairs
        sid, packed = _factorize(u.astype(np.int64) * n_sess + s, n_users * n_sess)
        s, su = sid, packed // max(n_sess, 1)
    ns = len(su)
    flags = {"start": np.zeros(ns, dtype=bool), "cart": np.zeros(ns, dtype=bool), "purchase": np.zeros(ns, dtype=bool)}
    flags["start"][s] = True
    flags["cart"][s[code == _TYPE_CODES["add_to_cart"]]] = True
    flags["purchase"][s[code == _TYPE_CODES["purchase"]]] = True
    flags["converted"] = flags["cart"] & flags["purchase"]
    out = {}
    for a in accs:
        f = flags[SOURCES[a.source].session]
        out[a.name] = np.bincount(su[f], minlength=n_users).astype(np.float64)[user_codes]
    return out


def snapshot_accumulators(events: Any, fs: FeatureSet, as_of: float, label: str = "<events>",
                          entities: list[str] | None = None) -> dict[str, pl.DataFrame]:
    """Accumulator values of every entity key seen before ``as_of`` (key columns
    with the raw ids, one float64 column per accumulator)."""
    from concurrent.futures import ThreadPoolExecutor

    entities = entities or fs.entities
    ev = encode_events(events, as_of, label)
    frames = {}
    # polars passes on a worker thread (GIL released inside collect) overlap the numpy
    # passes of the other entities on this thread
    with ThreadPoolExecutor(1) as pool:
        futures = {e: pool.submit(_accumulate_polars, ev, e, fs.entity_accumulators(e), as_of)
                   for e in entities if e in POLARS_ENTITIES and ev.n >= POLARS_MIN_ROWS}
        results = {e: (futures[e] if e in futures else None) for e in entities}
        for entity in entities:
            if results[entity] is None:
                results[entity] = _accumulate(ev, entity, fs.entity_accumulators(entity), as_of)
        results = {e: r.result() if e in futures else r for e, r in results.items()}
    for entity in entities:
        accs = fs.entity_accumulators(entity)
        vals, keys, _ = results[entity]
        sess = [a for a in accs if SOURCES[a.source].session]
        if sess:
            vals.update(_session_counts(ev, keys["user_id"], sess))
        cols = [pl.Series(k, ev.dicts[k].take(keys[k])).cast(pl.String) for k in ENTITIES[entity]]
        frames[entity] = pl.DataFrame([*cols, *[pl.Series(a.name, vals[a.name]) for a in accs]])
    return frames


def _as_numpy(df: pl.DataFrame, cols: list[str]) -> dict[str, np.ndarray]:
    return {c: df.get_column(c).cast(pl.Float64).to_numpy() for c in cols}


def features_frame(fs: FeatureSet, entity: str, keys: pl.DataFrame, values: Mapping[str, np.ndarray]) -> pl.DataFrame:
    """Key columns plus one column per feature, cast to each feature's dtype."""
    cols = {}
    for f in fs.entity_features(entity):
        if f.name not in values:
            continue
        v = values[f.name]
        cols[f.name] = pl.Series(f.name, np.round(v) if f.dtype.startswith("int") else v).cast(
            {"int64": pl.Int64, "float32": pl.Float32}.get(f.dtype, pl.Float64))
    return keys.with_columns(**cols) if cols else keys


def snapshot(events: Any, fs: FeatureSet, as_of: float, params: Mapping[str, Any] | None,
             entities: list[str] | None = None, label: str | None = None) -> dict[str, pl.DataFrame]:
    """Every entity's features as of ``as_of`` (events strictly before it)."""
    return snapshot_and_params(events, fs, as_of, params, entities, label)[0]


def snapshot_and_params(events: Any, fs: FeatureSet, as_of: float, params: Mapping[str, Any] | str | None,
                        entities: list[str] | None = None,
                        label: str | None = None) -> tuple[dict[str, pl.DataFrame], dict[str, Any] | None]:
    """:func:`snapshot` plus the params used. ``params``: fitted priors / cohort
    statistics, ``None`` (leave the fitted features out) or ``"fit"``: fit them on
    this very snapshot (events before ``as_of``), one pass for both."""
    if label is None and isinstance(events, (str, Path)):
        label = str(events)
    raw = snapshot_accumulators(events, fs, as_of, label or "<events>", entities)
    accs = {e: _as_numpy(df, [a.name for a in fs.entity_accumulators(e)]) for e, df in raw.items()}
    if isinstance(params, str):
        if params != "fit":
            raise ValueError(f"params={params!r}: expected a mapping, None or 'fit'")
        snaps = {e: {**a, **evaluate(fs, e, a, as_of, None)} for e, a in accs.items()}
        params = {**fit_params(fs, snaps), "_fit_time": float(as_of)}
    out = {}
    for entity, df in raw.items():
        keys = df.select(list(ENTITIES[entity]))
        out[entity] = features_frame(fs, entity, keys, evaluate(fs, entity, accs[entity], as_of, params))
    return out, (dict(params) if params is not None else None)


def fit(events: Any, fs: FeatureSet, fit_time: float, label: str | None = None) -> dict[str, Any]:
    """Fitted priors and cohort statistics from the events before ``fit_time``."""
    if label is None and isinstance(events, (str, Path)):
        label = str(events)
    snaps = {}
    for entity, df in snapshot_accumulators(events, fs, fit_time, label or "<events>").items():
        accs = _as_numpy(df, [a.name for a in fs.entity_accumulators(entity)])
        snaps[entity] = {**accs, **evaluate(fs, entity, accs, fit_time, None)}
    params = fit_params(fs, snaps)
    params["_fit_time"] = float(fit_time)
    return params


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


def write_features(frames: Mapping[str, pl.DataFrame], out_dir: str | Path) -> dict[str, str]:
    """One Parquet per entity, each written atomically."""
    from recsys.utils.io import atomic_path

    from concurrent.futures import ThreadPoolExecutor

    def write(entity: str, df: pl.DataFrame) -> str:
        path = Path(out_dir) / f"{entity}.parquet"
        with atomic_path(path) as tmp:
            df.write_parquet(tmp, compression="lz4", statistics=False)
        return str(path)

    # the files are independent and polars writes without the GIL: both cores
    with ThreadPoolExecutor(min(len(frames), 2) or 1) as pool:
        futures = {entity: pool.submit(write, entity, df) for entity, df in frames.items()}
        return {entity: f.result() for entity, f in futures.items()}
