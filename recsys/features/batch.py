"""Batch feature computation over event logs (numpy on integer ids).

Entry points (definitions shared with :mod:`recsys.features.definitions`):

* :func:`snapshot` - every entity's features as of one time ``T``: the id
  columns are dictionary-encoded once (Parquet dictionary pages reused) and every
  accumulator comes from one sort of the events by (user, item, type)
  (:mod:`recsys.features.sorted_pass`), on worker threads around numpy calls that
  release the GIL - the path ``recsys features build`` and the bench use;
* features of arbitrary (entity key, time) query rows, each seeing only events
  strictly before its own time, are in :mod:`recsys.features.asof` (the path the
  point-in-time training set and the skew check use).

Events need ``user_id``, ``item_id``, ``timestamp``, ``event_type``; ``value``
(dwell seconds of views), ``session_id`` and ``category`` are optional.
"""
from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import polars as pl

from recsys.features.definitions import (
    BEHAVIOURAL,
    ENTITIES,
    PARAM_TRANSFORMS,
    SOURCES,
    Accumulator,
    FeatureSet,
    evaluate,
    fit_params,
)
from recsys.utils.errors import DataError

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


# ---------------------------------------------------------------- snapshot (integer-coded, numpy)
#
# The snapshot dictionary-encodes the id columns once (user, item, category,
# session -> dense int codes; a Parquet file's own dictionary pages are reused -
# each distinct page is hashed once, not each row) and computes every accumulator
# of every entity from one sort of the events by a packed (user, item, type, row)
# key (:mod:`recsys.features.sorted_pass`); sessions map to their user through a
# dense array. Raw ids come back only on the output rows.

_ID_COLS = ("user_id", "item_id", "category", "session_id")
_TYPE_CODES = {t: i for i, t in enumerate(BEHAVIOURAL)}


class _Events:
    """Every event as numpy columns with integer ids; ``code`` is the behavioural
    event type (0..3), -1 for events that do not count (other types, at or after
    ``as_of``) - they are skipped, not copied out."""

    def __init__(self, t: np.ndarray, code: np.ndarray, value: np.ndarray, ids: dict[str, np.ndarray],
                 dicts: dict[str, Any]):
        self.t, self.code, self.value, self.ids, self.dicts = t, code, value, ids, dicts
        self.n = len(t)


def _read_arrow(events: Any, label: str) -> Any:
    """The checked events as a pyarrow table (the general path: a frame, a LazyFrame,
    or a Parquet file :func:`_parquet_columns` does not take)."""
    if isinstance(events, pl.LazyFrame):
        return events.collect().to_arrow()
    return scan_events(events, name=label).collect().to_arrow()


def _dictionary_identity(d: Any) -> tuple:
    """Chunks that share one dictionary (a Parquet row group's pages) share its buffers."""
    return (len(d), d.offset, *(b.address if b is not None else 0 for b in d.buffers()))


def _dict_codes(col: Any) -> tuple[np.ndarray, Any]:
    """(int32 codes with -1 for null, one dictionary) of a (chunked) column.

    Dictionary chunks are unified by hashing each *distinct* dictionary once (a
    Parquet row group's chunks share one), then remapping the codes with numpy."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_dictionary(col.type):
        if pa.types.is_string_view(col.type):
            col = col.cast(pa.string())
        col = pc.dictionary_encode(col)
    chunks = col.chunks if hasattr(col, "chunks") else [col]
    if not chunks:
        return np.zeros(0, dtype=np.int32), pa.array([], col.type.value_type)
    distinct: dict[tuple, Any] = {}
    for ch in chunks:
        distinct.setdefault(_dictionary_identity(ch.dictionary), ch.dictionary)
    dictionary, remaps = _unify(list(distinct.values()))
    remap_of = dict(zip(distinct, remaps))
    codes = np.empty(sum(len(ch) for ch in chunks), dtype=np.int32)
    pos = 0
    for ch in chunks:
        _remap_into(codes[pos:pos + len(ch)], _indices(ch.indices), remap_of[_dictionary_identity(ch.dictionary)])
        pos += len(ch)
    return codes, dictionary


def _unify(dictionaries: list[Any]) -> tuple[Any, list[np.ndarray | None]]:
    """One dictionary for several: (dictionary, per input the int32 code of each of
    its values plus a trailing -1 that a null local code (-1) reads; None: the
    codes stay as they are)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(dictionaries) == 1:
        return dictionaries[0], [None]
    enc = pc.dictionary_encode(pa.concat_arrays(dictionaries))
    glob, remaps, pos = _indices(enc.indices), [], 0
    for d in dictionaries:
        remaps.append(np.append(glob[pos:pos + len(d)], np.int32(-1)))
        pos += len(d)
    return enc.dictionary, remaps


def _remap_into(out: np.ndarray, local: np.ndarray, remap: np.ndarray | None) -> None:
    if remap is None:
        out[...] = local
    else:
        np.take(remap, local, out=out)


def _indices(idx: Any) -> np.ndarray:
    """Dictionary indices as numpy int32 (-1 where null)."""
    import pyarrow.compute as pc

    if idx.null_count:
        idx = pc.fill_null(idx, -1)
    return idx.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)


def _null_as_code(codes: np.ndarray, dictionary: Any) -> tuple[np.ndarray, Any]:
    """A null key (e.g. a null category) becomes one more code whose value is null."""
    import pyarrow as pa

    if len(codes) and codes.min() < 0:
        codes = np.where(codes < 0, len(dictionary), codes).astype(np.int32)
        dictionary = pa.concat_arrays([dictionary, pa.nulls(1, dictionary.type)])
    return codes, dictionary


@contextlib.contextmanager
def _arrow_pool() -> Iterator[None]:
    """pyarrow allocations in jemalloc (else the system allocator) meanwhile.

    pyarrow's default mimalloc pool faults its fresh arenas in at a high system-time
    cost on the 2-core VM the bench runs on (1.9-2.5 s of system time for reading
    and encoding 10M events, against 0.3-0.5 s with jemalloc or malloc;
    docs/features.md). Arrays keep the pool they were allocated from, so restoring
    the default afterwards is safe."""
    import pyarrow as pa

    before = pa.default_memory_pool()
    try:
        pool = pa.jemalloc_memory_pool()
    except (NotImplementedError, AttributeError):  # pragma: no cover - pyarrow built without jemalloc
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(before)


def encode_events(events: Any, as_of: float, label: str = "<events>", threads: int = 1) -> _Events:
    """Read, check and integer-encode the events; ``code`` -1 marks the events that
    do not count (not behavioural, or at / after ``as_of``). ``threads``: row
    groups (or columns) are read and converted on this many threads (pyarrow and
    numpy release the GIL)."""
    with _arrow_pool():
        cols = _parquet_columns(events, label, threads) if isinstance(events, (str, Path)) else None
        if cols is None:
            cols = _table_columns(_read_arrow(events, label), label, threads)
    t = cols["timestamp"]
    if np.isnan(t).any():
        raise DataError(label, f"{int(np.isnan(t).sum())} rows with a null or NaN timestamp", column="timestamp")
    type_codes, type_dict = cols["event_type"]
    lut = np.array([_TYPE_CODES.get(s, -1) for s in type_dict.to_pylist()] + [-1], dtype=np.int8)
    code = lut[type_codes]
    np.putmask(code, t >= as_of, np.int8(-1))
    ids, dicts = {}, {}
    for c in _ID_COLS:
        codes, dictionary = cols[c]
        if c != "session_id":
            codes, dictionary = _null_as_code(codes, dictionary)
        ids[c], dicts[c] = codes, dictionary
    return _Events(t, code, cols["value"], ids, dicts)


def _table_columns(tab: Any, label: str, threads: int) -> dict[str, Any]:
    """Checked numpy columns of a pyarrow table: float64 ``timestamp`` / ``value``,
    ``(codes, dictionary)`` for the ids and ``event_type`` (columns on ``threads``
    threads, the session ids - most distinct strings - first)."""
    _check_rows(tab, label)
    jobs = {c: (_dict_codes, c) for c in ("session_id", "item_id", "user_id")}
    jobs.update({c: (_float_column, c) for c in ("timestamp", "value")})
    jobs.update({c: (_dict_codes, c) for c in ("category", "event_type")})

    def run(name: str) -> Any:
        fn, col = jobs[name]
        return fn(tab.column(col))

    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            return dict(zip(jobs, pool.map(run, jobs)))
    return {name: run(name) for name in jobs}


_DICT_COLS = (*_ID_COLS, "event_type")


def _parquet_columns(path: str | Path, label: str, threads: int) -> dict[str, Any] | None:
    """:func:`_table_columns` of a Parquet file, read row group by row group on
    ``threads`` threads straight into the output arrays (each row group's
    dictionary pages become its codes; the row groups' dictionaries are unified
    at the end). Arrow memory stays one row group per thread. None when the file
    is not a plain event log (no ``category``, or non-string id columns): the
    general path reads it."""
    import pyarrow.parquet as pq

    scan_events(path, name=label)  # schema checks, DataError naming the file
    schema = pl.scan_parquet(path).collect_schema()
    if "category" not in schema or any(c in schema and schema[c] != pl.String for c in _DICT_COLS):
        return None
    cols = [c for c in (*REQUIRED, *OPTIONAL) if c in schema]
    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as e:  # pragma: no cover - scan_events already opened it
        raise DataError(label, f"not a readable Parquet file ({type(e).__name__})") from None
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(starts[-1])
    _check_rows_empty(n, label)
    out = _RowGroupColumns(n, [c for c in _DICT_COLS if c in cols], len(sizes))

    def read(groups: list[int]) -> dict[str, int]:
        pf = pq.ParquetFile(path, read_dictionary=out.dict_cols)  # one reader per thread
        nulls: dict[str, int] = {}
        for i in groups:
            tab = pf.read_row_group(i, columns=cols, use_threads=threads <= 1)
            out.put(i, int(starts[i]), tab)
            for c in ("timestamp", "user_id", "item_id", "event_type"):
                nulls[c] = nulls.get(c, 0) + tab.column(c).null_count
        return nulls

    parts = [list(range(j, len(sizes), max(threads, 1))) for j in range(max(threads, 1))]
    try:
        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                counts = list(pool.map(read, parts))
        else:
            counts = [read(p) for p in parts]
    except OSError as e:  # pragma: no cover - the file changed under us
        raise DataError(label, f"not a readable Parquet file ({type(e).__name__})") from None
    nulls = {c: sum(x.get(c, 0) for x in counts) for c in ("timestamp", "user_id", "item_id", "event_type")}
    _raise_bad({"n": n, "bad_t": nulls["timestamp"], "null_user": nulls["user_id"], "null_item": nulls["item_id"],
                "null_type": nulls["event_type"]}, label)
    return out.finish(starts, threads)


class _RowGroupColumns:
    """Output arrays filled row group by row group: float64 timestamp / value,
    int32 codes local to each row group's dictionary (remapped by :meth:`finish`)."""

    def __init__(self, n: int, dict_cols: list[str], n_groups: int):
        self.dict_cols = dict_cols
        self.floats = {"timestamp": np.empty(n), "value": np.full(n, np.nan)}
        self.codes = {c: np.empty(n, dtype=np.int32) if c in dict_cols else np.full(n, -1, dtype=np.int32)
                      for c in _DICT_COLS}
        self.dicts: dict[str, list[Any]] = {c: [None] * n_groups for c in dict_cols}

    def put(self, i: int, start: int, tab: Any) -> None:
        sl = slice(start, start + tab.num_rows)
        for c, arr in self.floats.items():
            if c in tab.column_names:
                arr[sl] = _float_column(tab.column(c))
        for c in self.dict_cols:
            self.codes[c][sl], self.dicts[c][i] = _dict_codes(tab.column(c))

    def finish(self, starts: np.ndarray, threads: int) -> dict[str, Any]:
        """Codes of each column into one dictionary (columns side by side)."""
        import pyarrow as pa

        def unify(c: str) -> tuple[np.ndarray, Any]:
            if c not in self.dict_cols:  # an absent optional column: all null
                return self.codes[c], pa.array([], pa.string())
            dictionary, remaps = _unify(self.dicts[c])
            codes = self.codes[c]
            for i, remap in enumerate(remaps):
                if remap is not None:
                    part = codes[starts[i]:starts[i + 1]]
                    _remap_into(part, part.copy(), remap)
            return codes, dictionary

        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                done = dict(zip(_DICT_COLS, pool.map(unify, _DICT_COLS)))
        else:
            done = {c: unify(c) for c in _DICT_COLS}
        return {**self.floats, **done}


def _float_column(col: Any) -> np.ndarray:
    """A (chunked) column as float64 numpy (NaN where null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = pc.cast(col, pa.float64())
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64) if len(col) else np.zeros(0)


def _check_rows_empty(n: int, label: str) -> None:
    if n == 0:
        raise DataError(label, "empty event log (0 rows)")


def _check_rows(tab: Any, label: str) -> None:
    """Not empty, no null keys, no null timestamps (:class:`DataError` naming the
    file; NaN timestamps are caught once converted)."""
    _raise_bad({"n": tab.num_rows, "bad_t": tab.column("timestamp").null_count,
                "null_user": tab.column("user_id").null_count, "null_item": tab.column("item_id").null_count,
                "null_type": tab.column("event_type").null_count}, label)


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


def _session_counts(ev: _Events, accs: list[Accumulator], chunk: int = 1 << 20) -> dict[str, np.ndarray]:
    """Per user code: number of sessions that started / had a cart / converted (cart
    and purchase), over the events that count. Visited in chunks (small
    temporaries, no copies of the columns)."""
    n_users, n_sess = len(ev.dicts["user_id"]), len(ev.dicts["session_id"])
    su = np.full(max(n_sess, 1), -1, dtype=np.int64)
    flags = {k: np.zeros(max(n_sess, 1), dtype=bool) for k in ("start", "cart", "purchase")}
    for lo in range(0, ev.n, chunk):
        u, s, code = (x[lo:lo + chunk] for x in (ev.ids["user_id"], ev.ids["session_id"], ev.code))
        has = (s >= 0) & (code >= 0)
        su[s[has]] = u[has]
        flags["start"][s[has]] = True
        flags["cart"][s[has & (code == _TYPE_CODES["add_to_cart"])]] = True
        flags["purchase"][s[has & (code == _TYPE_CODES["purchase"])]] = True
    if not all(np.array_equal(su[s[has]], u[has]) for u, s, has in _session_rows(ev, chunk)):
        return _shared_session_counts(ev, accs)
    flags["converted"] = flags["cart"] & flags["purchase"]
    return {a.name: np.bincount(su[flags[SOURCES[a.source].session]], minlength=n_users).astype(np.float64)
            for a in accs}


def _session_rows(ev: _Events, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    for lo in range(0, ev.n, chunk):
        u, s, code = (x[lo:lo + chunk] for x in (ev.ids["user_id"], ev.ids["session_id"], ev.code))
        yield u, s, (s >= 0) & (code >= 0)


def _shared_session_counts(ev: _Events, accs: list[Accumulator]) -> dict[str, np.ndarray]:
    """:func:`_session_counts` when a session id is shared by several users: the
    sessions are (user, session) pairs."""
    has = (ev.ids["session_id"] >= 0) & (ev.code >= 0)
    u, s, code = ev.ids["user_id"][has], ev.ids["session_id"][has], ev.code[has]
    n_users, n_sess = len(ev.dicts["user_id"]), len(ev.dicts["session_id"])
    sid, packed = _factorize(u.astype(np.int64) * n_sess + s, n_users * n_sess)
    su = packed // max(n_sess, 1)
    flags = {"start": np.ones(len(su), dtype=bool), "cart": np.zeros(len(su), dtype=bool),
             "purchase": np.zeros(len(su), dtype=bool)}
    flags["cart"][sid[code == _TYPE_CODES["add_to_cart"]]] = True
    flags["purchase"][sid[code == _TYPE_CODES["purchase"]]] = True
    flags["converted"] = flags["cart"] & flags["purchase"]
    return {a.name: np.bincount(su[flags[SOURCES[a.source].session]], minlength=n_users).astype(np.float64)
            for a in accs}


class StageTimer:
    """Wall-clock and process-CPU seconds (every thread) per named stage:
    ``with timer("read"): ...``; ``timer.stages`` -> {name: {"wall_s", "cpu_s"}}."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            st = self.stages.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            st["wall_s"] += time.perf_counter() - t0
            st["cpu_s"] += time.process_time() - c0


def _stage(timer: StageTimer | None, name: str) -> Any:
    return timer(name) if timer is not None else contextlib.nullcontext()


#: worker threads of the snapshot (numpy and pyarrow release the GIL inside their
#: calls): id columns encoded, the sorted pass's two chunk parts, sessions beside it
SNAPSHOT_THREADS = min(os.cpu_count() or 1, 2)


def snapshot_accumulators(events: Any, fs: FeatureSet, as_of: float, label: str = "<events>",
                          entities: list[str] | None = None, threads: int | None = None) -> dict[str, pl.DataFrame]:
    """Accumulator values of every entity key seen before ``as_of`` (key columns
    with the raw ids, one float64 column per accumulator). ``threads``: default
    :data:`SNAPSHOT_THREADS`; the result is the same whatever the number."""
    return {e: keys.with_columns(pl.Series(name, v) for name, v in vals.items())
            for e, (keys, vals) in _snapshot_arrays(events, fs, as_of, label, entities, threads).items()}


def _snapshot_arrays(events: Any, fs: FeatureSet, as_of: float, label: str = "<events>",
                     entities: list[str] | None = None, threads: int | None = None,
                     timer: StageTimer | None = None) -> dict[str, tuple[pl.DataFrame, dict[str, np.ndarray]]]:
    """entity -> (key columns with the raw ids, accumulator name -> float64 values)."""
    from recsys.features.sorted_pass import sorted_accumulators

    threads = threads or SNAPSHOT_THREADS
    entities = entities or fs.entities
    with _stage(timer, "read_encode"):
        ev = encode_events(events, as_of, label, threads)
    accs = {e: fs.entity_accumulators(e) for e in entities}
    sess = [a for e in entities for a in accs[e] if SOURCES[a.source].session]
    with _stage(timer, "accumulate"), ThreadPoolExecutor(1) as side:  # sessions beside the sorted pass
        sessions = side.submit(_session_counts, ev, sess) if sess else None
        results = sorted_accumulators(ev, accs, as_of, threads=threads)
        per_user = sessions.result() if sessions is not None else {}
    with _stage(timer, "keys"):
        return _with_keys(ev, accs, results, per_user, threads)


def _with_keys(ev: _Events, accs: dict[str, list[Accumulator]], results: dict, per_user: dict[str, np.ndarray],
               threads: int) -> dict[str, tuple[pl.DataFrame, dict[str, np.ndarray]]]:
    """Raw ids of the output keys and the session counts of their users (entities
    side by side: pyarrow ``take`` and the polars casts release the GIL)."""

    def one(entity: str) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
        vals, keys = results[entity]
        for a in accs[entity]:
            if a.name in per_user:
                vals[a.name] = per_user[a.name][keys["user_id"]]
        cols = [pl.Series(k, ev.dicts[k].take(keys[k])).cast(pl.String) for k in ENTITIES[entity]]
        return pl.DataFrame(cols), {a.name: vals[a.name] for a in accs[entity]}

    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(accs, pool.map(one, accs)))


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
                        entities: list[str] | None = None, label: str | None = None,
                        timer: StageTimer | None = None) -> tuple[dict[str, pl.DataFrame], dict[str, Any] | None]:
    """:func:`snapshot` plus the params used. ``params``: fitted priors / cohort
    statistics, ``None`` (leave the fitted features out) or ``"fit"``: fit them on
    this very snapshot (events before ``as_of``), one pass for both. ``timer``:
    records the stages (read_encode, accumulate, keys, fit_evaluate)."""
    if label is None and isinstance(events, (str, Path)):
        label = str(events)
    raw = _snapshot_arrays(events, fs, as_of, label or "<events>", entities, timer=timer)
    accs = {e: vals for e, (_, vals) in raw.items()}
    if isinstance(params, str) and params != "fit":
        raise ValueError(f"params={params!r}: expected a mapping, None or 'fit'")
    with _stage(timer, "fit_evaluate"), ThreadPoolExecutor(SNAPSHOT_THREADS) as pool:  # entities side by side

        def per_entity(fn: Any) -> dict[str, Any]:
            return dict(zip(raw, pool.map(fn, raw)))

        if params == "fit":
            need = _fit_needs_features(fs)  # entities whose fit reads feature values, not only accumulators
            snaps = per_entity(lambda e: {**accs[e], **(evaluate(fs, e, accs[e], as_of, None) if e in need else {})})
            params = {**fit_params(fs, snaps), "_fit_time": float(as_of)}
        out = per_entity(lambda e: features_frame(fs, e, raw[e][0], evaluate(fs, e, accs[e], as_of, params)))
    return out, (dict(params) if params is not None else None)


def _fit_needs_features(fs: FeatureSet) -> set[str]:
    """Entities whose fitted parts read feature values (the source of a z-score or
    rank); the priors read accumulators only, so the other entities skip
    :func:`evaluate` when fitting."""
    return {f.entity for f in fs.features if f.transform in PARAM_TRANSFORMS
            and any(name not in fs.accumulators for name in (*f.inputs, f.segment) if name)}


def fit(events: Any, fs: FeatureSet, fit_time: float, label: str | None = None) -> dict[str, Any]:
    """Fitted priors and cohort statistics from the events before ``fit_time``."""
    if label is None and isinstance(events, (str, Path)):
        label = str(events)
    snaps, need = {}, _fit_needs_features(fs)
    for entity, (_, accs) in _snapshot_arrays(events, fs, fit_time, label or "<events>").items():
        snaps[entity] = {**accs, **(evaluate(fs, entity, accs, fit_time, None) if entity in need else {})}
    params = fit_params(fs, snaps)
    params["_fit_time"] = float(fit_time)
    return params


def write_features(frames: Mapping[str, pl.DataFrame], out_dir: str | Path) -> dict[str, str]:
    """One Parquet per entity, each written atomically."""
    from recsys.utils.io import atomic_path

    def write(entity: str, df: pl.DataFrame) -> str:
        path = Path(out_dir) / f"{entity}.parquet"
        with atomic_path(path) as tmp:
            df.write_parquet(tmp, compression="lz4", statistics=False)
        return str(path)

    # the files are independent and polars writes without the GIL: both cores
    with ThreadPoolExecutor(min(len(frames), 2) or 1) as pool:
        futures = {entity: pool.submit(write, entity, df) for entity, df in frames.items()}
        return {entity: f.result() for entity, f in futures.items()}
