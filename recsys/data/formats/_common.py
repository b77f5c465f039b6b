"""Helpers shared by every format: column maps, id/timestamp conversion, event checks.

Checks run vectorised on Arrow arrays; only once a bad row is known is it turned
into a location (a 1-based line for text files, a row index for Parquet) for the
:class:`~recsys.utils.errors.DataError` message.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.schema import (
    EVENT_SCHEMA,
    EVENT_TYPE,
    EVENT_TYPES,
    ITEM_ID,
    POSITION,
    PROPENSITY,
    TIMESTAMP,
    USER_ID,
    VALUE,
    conform_events,
)
from recsys.utils.errors import DataError

#: Canonical event columns a source column may be mapped to.
CANONICAL_COLUMNS = tuple(f.name for f in EVENT_SCHEMA)
ID_COLUMNS = (USER_ID, ITEM_ID)
#: Canonical columns read as numbers (``position`` is checked to be integral).
NUMERIC_COLUMNS = (VALUE, PROPENSITY, POSITION)
TIMESTAMP_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}

#: ``locate(row) -> (line, prefix)``: where row ``row`` of a table sits in its file.
Locate = Callable[[int], tuple[int | None, str]]


def text_locate(first_data_line: int = 2) -> Locate:
    """Rows of a headered text file: row 0 is on line ``first_data_line``."""
    return lambda row: (row + first_data_line, "")


def row_locate(row: int) -> tuple[int | None, str]:
    """Rows of a binary file (Parquet): no line; the 0-based row index goes in the message."""
    return None, f"row {row}: "


def fail(path: str | Path, locate: Locate, row: int, message: str, column: str | None) -> DataError:
    """Build the error for ``row`` (caller raises it)."""
    line, prefix = locate(row)
    return DataError(path, prefix + message, line=line, column=column)


# --------------------------------------------------------------------------- columns


def resolve_mapping(
    path: str | Path, columns: Mapping[str, Any] | None, defaults: Mapping[str, str]
) -> tuple[dict[str, str], set[str]]:
    """Merge ``columns`` over ``defaults`` (a ``None`` value drops a default).

    Returns ``(mapping canonical -> source, soft)``: ``soft`` are the defaulted
    optional columns that may be absent from the file.
    """
    given = dict(columns.items()) if columns is not None else {}
    unknown = sorted(set(given) - set(CANONICAL_COLUMNS))
    if unknown:
        raise DataError(
            path, f"unknown canonical column(s) {', '.join(map(repr, unknown))} in `columns` "
            f"(valid: {', '.join(CANONICAL_COLUMNS)})"
        )
    mapping = {k: v for k, v in {**defaults, **given}.items() if v is not None}
    for canon, src in mapping.items():
        if not isinstance(src, str) or not src:
            raise DataError(path, f"`columns.{canon}` must be a column name, got {src!r}")
    for canon in ID_COLUMNS:
        if canon not in mapping:
            raise DataError(path, f"`columns` must map '{canon}' to a source column")
    soft = {k for k in defaults if k not in given and k not in ID_COLUMNS}
    return mapping, soft


def require_columns(
    path: str | Path,
    mapping: dict[str, str],
    soft: set[str],
    found: list[str],
    line: int | None = None,
) -> dict[str, str]:
    """Drop soft columns the file lacks; raise for any other missing column."""
    present = set(found)
    out = {}
    for canon, src in mapping.items():
        if src in present:
            out[canon] = src
        elif canon not in soft:
            what = f"column not found (needed for '{canon}'); columns found: {', '.join(found)}"
            raise DataError(path, what, line=line, column=src)
    return out


# ----------------------------------------------------------------------- conversion


def _first(mask: pa.Array | pa.ChunkedArray) -> int | None:
    """Index of the first true entry of a boolean array (nulls count as false)."""
    mask = pc.fill_null(mask, False)
    if not pc.any(mask).as_py():
        return None
    return pc.index(mask, True).as_py()


def to_string(path: str | Path, col: pa.ChunkedArray, src: str) -> pa.ChunkedArray:
    """Integer or string column (ids, categories) -> string; other types are an error."""
    typ = col.type
    if pa.types.is_dictionary(typ):
        col, typ = col.cast(typ.value_type), typ.value_type
    if pa.types.is_integer(typ) or pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return col.cast(pa.string())
    raise DataError(path, f"expected an integer or string column, got {typ}", column=src)


def numeric_to_float(path: str | Path, col: pa.ChunkedArray, src: str) -> pa.ChunkedArray:
    """Integer, float or decimal column -> float64; any other type is an error."""
    typ = col.type
    if pa.types.is_null(typ):
        return col.cast(pa.float64())
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return col.cast(pa.float64())
    raise DataError(path, f"expected a numeric column, got {typ}", column=src)


def _first_non_number(col: pa.ChunkedArray) -> tuple[int, str]:
    """Error path only: the first value of a string column that is not a number."""
    for i, v in enumerate(col.to_pylist()):
        if v is None:
            continue
        try:
            float(v)
        except ValueError:
            return i, v
    return 0, str(col[0].as_py())


def timestamps_to_seconds(
    path: str | Path, col: pa.ChunkedArray, src: str, unit: str, locate: Locate
) -> pa.ChunkedArray:
    """Numeric (in ``unit``), date or timestamp column -> float64 seconds."""
    typ = col.type
    if pa.types.is_date(typ):
        col, typ = col.cast(pa.timestamp("s")), pa.timestamp("s")
    if pa.types.is_timestamp(typ):
        scale = TIMESTAMP_UNITS[typ.unit]
        return pc.divide(col.cast(pa.int64()).cast(pa.float64()), scale)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        row, bad = _first_non_number(col)
        raise fail(path, locate, row, f"expected a numeric timestamp, got {bad!r}", src)
    col = numeric_to_float(path, col, src)
    return col if unit == "s" else pc.divide(col, TIMESTAMP_UNITS[unit])


def ordinal_timestamps(users: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Position of each row within its user's rows, in row order (0, 1, 2, ...)."""
    if isinstance(users, pa.ChunkedArray):
        users = users.combine_chunks()
    codes = users.dictionary_encode().indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    ranks = np.empty(len(codes), dtype=np.float64)
    ranks[order] = np.arange(len(codes)) - group_start
    return pa.array(ranks, type=pa.float64())


def check_unit(path: str | Path, unit: str) -> None:
    """``timestamp_unit`` must be one of :data:`TIMESTAMP_UNITS`."""
    if unit not in TIMESTAMP_UNITS:
        raise DataError(path, f"unknown timestamp_unit {unit!r} (valid: {', '.join(TIMESTAMP_UNITS)})")


def check_event_type(path: str | Path, event_type: str) -> None:
    """The constant event type of a loader must be a known one."""
    if event_type not in EVENT_TYPES:
        raise DataError(
            path, f"unknown event_type {event_type!r} (valid: {', '.join(EVENT_TYPES)})",
            column=EVENT_TYPE,
        )


# ------------------------------------------------------------------------ validation


def check_ids(path: str | Path, col: pa.ChunkedArray, src: str, what: str, locate: Locate) -> None:
    """Ids must be present and non-blank."""
    row = _first(col.is_null())
    if row is not None:
        raise fail(path, locate, row, f"missing {what} (null)", src)
    row = _first(pc.equal(pc.utf8_trim_whitespace(col), ""))
    if row is not None:
        raise fail(path, locate, row, f"empty {what}", src)


def _check_finite(
    path: str | Path,
    col: pa.ChunkedArray,
    src: str,
    what: str,
    locate: Locate,
    required: bool,
    low: float | None,
) -> None:
    """Numbers must be finite (and present if ``required``, and >= ``low``)."""
    if required:
        row = _first(col.is_null())
        if row is not None:
            raise fail(path, locate, row, f"missing {what}", src)
    row = _first(pc.invert(pc.is_finite(col)))
    if row is not None:
        raise fail(path, locate, row, f"non-finite {what} {col[row].as_py()}", src)
    if low is not None:
        row = _first(pc.less(col, low))
        if row is not None:
            raise fail(path, locate, row, f"negative {what} {col[row].as_py()}", src)


def validate_events(
    path: str | Path, cols: dict[str, pa.ChunkedArray], src: dict[str, str], locate: Locate
) -> None:
    """Check canonical columns (ids, timestamp, numbers, event types) row by row."""
    for canon in ID_COLUMNS:
        check_ids(path, cols[canon], src[canon], canon.replace("_", " "), locate)
    if TIMESTAMP in src:
        _check_finite(path, cols[TIMESTAMP], src[TIMESTAMP], "timestamp", locate, True, 0.0)
    if VALUE in cols:
        _check_finite(path, cols[VALUE], src[VALUE], "value", locate, False, None)
    if PROPENSITY in cols:
        col = cols[PROPENSITY]
        _check_finite(path, col, src[PROPENSITY], "propensity", locate, False, 0.0)
        row = _first(pc.greater(col, 1.0))
        if row is not None:
            raise fail(path, locate, row, f"propensity {col[row].as_py()} above 1", src[PROPENSITY])
    if POSITION in cols:
        col = cols[POSITION]
        _check_finite(path, col, src[POSITION], "position", locate, False, 0.0)
        row = _first(pc.not_equal(pc.floor(col), col))
        if row is not None:
            raise fail(path, locate, row, f"non-integer position {col[row].as_py()}", src[POSITION])
    if EVENT_TYPE in cols:
        col = cols[EVENT_TYPE]
        row = _first(pc.invert(pc.fill_null(pc.is_in(col, pa.array(EVENT_TYPES)), False)))
        if row is not None:
            raise fail(
                path, locate, row,
                f"unknown event type {col[row].as_py()!r} (valid: {', '.join(EVENT_TYPES)})",
                src[EVENT_TYPE],
            )


def first_duplicate(col: pa.ChunkedArray) -> tuple[int, int] | None:
    """``(row, first_row)`` of the first value seen before, or ``None``."""
    codes = col.combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
    # dictionary codes are 0..k-1, so first_rows[code] is where ``code`` first appears
    first_rows = np.unique(codes, return_index=True)[1]
    if len(first_rows) == len(codes):
        return None
    seen = np.zeros(len(codes), dtype=bool)
    seen[first_rows] = True
    row = int(np.flatnonzero(~seen)[0])
    return row, int(first_rows[codes[row]])


def _row_hashes(table: pa.Table) -> np.ndarray:
    """A uint64 hash of every row over all columns (equal rows, equal hashes; nulls
    hash alike). Strings are hashed through their dictionary codes, floats by bits."""
    h = np.zeros(table.num_rows, dtype=np.uint64)
    for col in table.columns:
        col = col.combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_binary(col.type):
            col = col.dictionary_encode().indices
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        if pa.types.is_floating(col.type):
            x = pc.fill_null(col.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False) + 0.0  # -0.0 -> 0.0
            x = x.view(np.uint64)
        else:
            x = pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False).view(np.uint64)
        h = (h ^ x ^ valid.astype(np.uint64) << np.uint64(63)) * np.uint64(0x100000001B3)
        h ^= h >> np.uint64(29)
    return h


def exact_duplicate_rows(table: pa.Table, keys: tuple[str, str] = (USER_ID, TIMESTAMP),
                         presorted: bool = False) -> np.ndarray:
    """Sorted row indices of the rows equal in every column to an earlier row.

    On a table sorted by ``keys`` (user, timestamp; ``presorted``), only rows that
    share both with a neighbour can be duplicates: one numpy pass. Candidates are then
    narrowed to rows whose hash over every column repeats (one sort), and only those
    are compared exactly (Arrow group-by). Nulls compare equal.
    """
    n = table.num_rows
    none = np.empty(0, dtype=np.int64)
    if n < 2:
        return none
    table = table.select([c for c in table.column_names if table.column(c).null_count < n])  # all-null: all equal
    rows = np.arange(n)
    if presorted:
        a = table.column(keys[0]).to_numpy()
        t = table.column(keys[1]).to_numpy()
        same = (a[1:] == a[:-1]) & (t[1:] == t[:-1])
        if not same.any():
            return none
        cand = np.zeros(n, dtype=bool)
        cand[1:] |= same
        cand[:-1] |= same
        rows = np.flatnonzero(cand)
        table = table.take(pa.array(rows))
    h = _row_hashes(table)
    s = np.sort(h)
    repeated = np.unique(s[1:][s[1:] == s[:-1]])  # few: the hashes of (likely) duplicates
    if not len(repeated):
        return none
    maybe = repeated[np.minimum(np.searchsorted(repeated, h), len(repeated) - 1)] == h
    rows = rows[maybe]
    sub = table.filter(pa.array(maybe)).append_column("_row", pa.array(rows, pa.int64()))
    cols = [c for c in sub.column_names if c != "_row"]
    firsts = sub.group_by(cols).aggregate([("_row", "min")]).column("_row_min").to_numpy()
    return np.setdiff1d(rows, firsts)


def build_events(cols: dict[str, Any], n_rows: int, event_type: str) -> pa.Table:
    """Assemble canonical columns into a table conforming to EVENT_SCHEMA."""
    cols = dict(cols)
    if EVENT_TYPE not in cols:
        cols[EVENT_TYPE] = pa.repeat(event_type, n_rows).cast(pa.string())
    names = list(cols)
    return conform_events(pa.table([cols[n] for n in names], names=names))


def side_table_types(table: pa.Table | None) -> dict[str, str] | None:
    """``{column: arrow type}`` of a side table, for summaries."""
    if table is None:
        return None
    return {f.name: str(f.type) for f in table.schema}
