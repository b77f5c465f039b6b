"""Integer encoding of an event log for the snapshot (numpy on dictionary codes).

:func:`encode_events` reads and checks the events once and maps user, item,
category and session ids to dense int32 codes: a Parquet file's own dictionary
pages are reused (each *distinct* dictionary - one per row group - hashed once;
row groups read on worker threads straight into the output arrays), any other
source takes one ``dictionary_encode`` per column. Events that do not count
(other types, at or after ``as_of``) get type code -1: they are skipped
downstream, not copied out. Raw ids stay in the dictionaries; the snapshot
attaches them to its output rows only.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl

from recsys.features.definitions import BEHAVIOURAL
from recsys.features.events import OPTIONAL, REQUIRED, check_counts, scan_events
from recsys.utils.errors import DataError

ID_COLS = ("user_id", "item_id", "category", "session_id")
#: behavioural event type -> code 0..3 (-1: the event does not count)
TYPE_CODES = {t: i for i, t in enumerate(BEHAVIOURAL)}


class EncodedEvents:
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


def dict_codes(col: Any) -> tuple[np.ndarray, Any]:
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


def encode_events(events: Any, as_of: float, label: str = "<events>", threads: int = 1) -> EncodedEvents:
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
    lut = np.array([TYPE_CODES.get(s, -1) for s in type_dict.to_pylist()] + [-1], dtype=np.int8)
    code = lut[type_codes]
    np.putmask(code, t >= as_of, np.int8(-1))
    ids, dicts = {}, {}
    for c in ID_COLS:
        codes, dictionary = cols[c]
        if c != "session_id":
            codes, dictionary = _null_as_code(codes, dictionary)
        ids[c], dicts[c] = codes, dictionary
    return EncodedEvents(t, code, cols["value"], ids, dicts)


def _table_columns(tab: Any, label: str, threads: int) -> dict[str, Any]:
    """Checked numpy columns of a pyarrow table: float64 ``timestamp`` / ``value``,
    ``(codes, dictionary)`` for the ids and ``event_type`` (columns on ``threads``
    threads, the session ids - most distinct strings - first)."""
    _check_rows(tab, label)
    jobs = {c: (dict_codes, c) for c in ("session_id", "item_id", "user_id")}
    jobs.update({c: (_float_column, c) for c in ("timestamp", "value")})
    jobs.update({c: (dict_codes, c) for c in ("category", "event_type")})

    def run(name: str) -> Any:
        fn, col = jobs[name]
        return fn(tab.column(col))

    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            return dict(zip(jobs, pool.map(run, jobs)))
    return {name: run(name) for name in jobs}


_DICT_COLS = (*ID_COLS, "event_type")


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
    check_counts({"n": n, "bad_t": nulls["timestamp"], "null_user": nulls["user_id"], "null_item": nulls["item_id"],
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
            self.codes[c][sl], self.dicts[c][i] = dict_codes(tab.column(c))

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
    check_counts({"n": tab.num_rows, "bad_t": tab.column("timestamp").null_count,
                "null_user": tab.column("user_id").null_count, "null_item": tab.column("item_id").null_count,
                "null_type": tab.column("event_type").null_count}, label)
