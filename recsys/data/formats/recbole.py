"""RecBole atomic files: tab-separated, header fields ``name:type``.

``.inter`` holds the interactions; optional ``.item`` / ``.user`` side tables
have the id in their first column. Types: ``token`` (string), ``float``
(float64), ``token_seq`` (list<string>, split on spaces) and ``float_seq``
(list<float64>).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.base import LoadedData, TimestampKind
from recsys.data.formats._common import (
    NUMERIC_COLUMNS,
    build_events,
    check_event_type,
    check_ids,
    first_duplicate,
    ordinal_timestamps,
    require_columns,
    resolve_mapping,
    text_locate,
    validate_events,
)
from recsys.data.formats._text import DelimitedText, read_file_bytes
from recsys.schema import ITEM_ID, TIMESTAMP, USER_ID, VALUE
from recsys.utils.errors import DataError

RECBOLE_TYPES = ("token", "float", "token_seq", "float_seq")
_ARROW_TYPES = {
    "token": pa.string(),
    "float": pa.float64(),
    "token_seq": pa.string(),  # split after reading
    "float_seq": pa.string(),
}
_SCAN_KINDS = {"float": "float", "float_seq": "float_seq"}
DEFAULT_COLUMNS = {USER_ID: "user_id", ITEM_ID: "item_id", TIMESTAMP: "timestamp", VALUE: "rating"}


@dataclass
class AtomicFile:
    """A checked header plus the file text."""

    text: DelimitedText
    names: list[str]
    types: list[str]

    @property
    def path(self) -> Path:
        return self.text.path

    def type_of(self, name: str) -> str:
        return self.types[self.names.index(name)]

    def read(self, include: list[str]) -> pa.Table:
        """Arrow table of the ``include`` fields, typed as declared (seqs as strings)."""
        types = {n: _ARROW_TYPES[t] for n, t in zip(self.names, self.types)}
        return self.text.read(self.names, include, types, self.scan_kinds())

    def scan_kinds(self) -> dict[str, str]:
        return {n: _SCAN_KINDS[t] for n, t in zip(self.names, self.types) if t in _SCAN_KINDS}


def _parse_header(path: Path, fields: list[str]) -> tuple[list[str], list[str]]:
    names, types = [], []
    for field in fields:
        name, sep, typ = field.rpartition(":")
        if not sep or not name.strip():
            raise DataError(
                path, f"header field {field!r} has no ':type' (expected name:type)", line=1, column=field
            )
        if typ not in RECBOLE_TYPES:
            what = f"unknown type {typ!r} in header field {field!r} (valid: {', '.join(RECBOLE_TYPES)})"
            raise DataError(path, what, line=1, column=name)
        names.append(name)
        types.append(typ)
    return names, types


def open_atomic(path: Path) -> AtomicFile:
    """Read the file and check its header and overall shape (not the rows yet)."""
    text = DelimitedText(path, read_file_bytes(path), "\t", quoting=False)
    names, types = _parse_header(path, text.header)
    text.check_unique_names(names)
    text.check_rows()
    return AtomicFile(text, names, types)


def split_tokens(col: pa.ChunkedArray) -> pa.Array:
    """Space-separated strings -> list<string>, dropping empty tokens."""
    arr = col.combine_chunks()
    parts = pc.split_pattern(arr, " ")
    flat, parents = pc.list_flatten(parts), pc.list_parent_indices(parts)
    keep = pc.not_equal(flat, "")
    flat, parents = flat.filter(keep), parents.filter(keep)
    counts = np.bincount(parents.to_numpy(zero_copy_only=False), minlength=len(arr))
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat)


def _convert_side_column(atomic: AtomicFile, col: pa.ChunkedArray, typ: str) -> Any:
    if typ == "token_seq":
        return split_tokens(col)
    if typ == "float_seq":
        try:
            return split_tokens(col).cast(pa.list_(pa.float64()))
        except pa.ArrowInvalid as exc:
            atomic.text.scan(atomic.scan_kinds(), atomic.names)
            raise DataError(atomic.path, f"bad float_seq value: {exc}") from None
    return col


def read_side_table(path: Path, id_name: str) -> pa.Table:
    """An ``.item`` / ``.user`` file; its first column becomes ``id_name``."""
    atomic = open_atomic(path)
    first = atomic.names[0]
    if atomic.types[0] != "token":
        what = f"id column declared as '{atomic.types[0]}', expected 'token'"
        raise DataError(path, what, line=1, column=first)
    table = atomic.read(atomic.names)
    atomic.text.check_no_repeated_header(table, atomic.names, first)
    locate = text_locate()
    check_ids(path, table.column(first), first, id_name.replace("_", " "), locate)
    dup = first_duplicate(table.column(first))
    if dup is not None:
        row, first_row = dup
        line, _ = locate(row)
        what = f"duplicate id {table.column(first)[row].as_py()!r} (first at line {locate(first_row)[0]})"
        raise DataError(path, what, line=line, column=first)
    cols = [_convert_side_column(atomic, table.column(n), t) for n, t in zip(atomic.names, atomic.types)]
    return pa.table(cols, names=[id_name, *atomic.names[1:]])


class RecBoleLoader:
    """RecBole atomic files (``.inter`` plus optional ``.item`` / ``.user``).

    Args:
        inter_path: the interactions file.
        item_path: optional item side table.
        user_path: optional user side table.
        columns: canonical name -> field name; merged over
            ``{user_id: user_id, item_id: item_id, timestamp: timestamp, value: rating}``
            where the defaulted ``timestamp`` / ``value`` may be absent from the
            file (no timestamp: ordinal per user, in row order). A ``None`` value
            drops a default.
        event_type: event type of every row unless ``columns`` maps ``event_type``.
    """

    def __init__(
        self,
        inter_path: str | Path,
        item_path: str | Path | None = None,
        user_path: str | Path | None = None,
        columns: dict | None = None,
        event_type: str = "rating",
    ) -> None:
        self.inter_path = Path(inter_path)
        self.item_path = Path(item_path) if item_path is not None else None
        self.user_path = Path(user_path) if user_path is not None else None
        self.columns = dict(columns.items()) if columns is not None else None
        self.event_type = event_type

    def load(self) -> LoadedData:
        """Read and validate the interactions and side tables."""
        check_event_type(self.inter_path, self.event_type)
        events, kind = self._events()
        items = read_side_table(self.item_path, ITEM_ID) if self.item_path else None
        users = read_side_table(self.user_path, USER_ID) if self.user_path else None
        return LoadedData(events=events, items=items, users=users, timestamp_kind=kind)

    def _events(self) -> tuple[pa.Table, TimestampKind]:
        path = self.inter_path
        atomic = open_atomic(path)
        mapping, soft = resolve_mapping(path, self.columns, DEFAULT_COLUMNS)
        mapping = require_columns(path, mapping, soft, atomic.names, line=1)
        for canon, src in mapping.items():
            expected = "float" if canon in (TIMESTAMP, *NUMERIC_COLUMNS) else "token"
            if atomic.type_of(src) != expected:
                what = f"declared as '{atomic.type_of(src)}', expected '{expected}' (for '{canon}')"
                raise DataError(path, what, line=1, column=src)
        table = atomic.read(list(dict.fromkeys(mapping.values())))
        atomic.text.check_no_repeated_header(table, atomic.names, mapping[USER_ID])
        cols: dict[str, Any] = {canon: table.column(src) for canon, src in mapping.items()}
        validate_events(path, cols, mapping, text_locate())
        kind: TimestampKind = "unix"
        if TIMESTAMP not in cols:
            cols[TIMESTAMP], kind = ordinal_timestamps(cols[USER_ID]), "ordinal"
        return build_events(cols, table.num_rows, self.event_type), kind

    def source_files(self) -> list[Path]:
        """The interactions file and the side tables given."""
        return [p for p in (self.inter_path, self.item_path, self.user_path) if p is not None]

    def fingerprint_config(self) -> dict[str, Any]:
        """Parameters that change the output."""
        return {
            "format": "recbole",
            "columns": self.columns,
            "event_type": self.event_type,
            "item_table": self.item_path is not None,
            "user_table": self.user_path is not None,
        }
