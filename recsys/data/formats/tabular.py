"""Event tables with named columns: CSV (or any delimiter) and Parquet."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.base import LoadedData, TimestampKind
from recsys.data.formats._common import (
    NUMERIC_COLUMNS,
    Locate,
    build_events,
    check_event_type,
    check_unit,
    numeric_to_float,
    ordinal_timestamps,
    require_columns,
    resolve_mapping,
    row_locate,
    text_locate,
    timestamps_to_seconds,
    to_string,
    validate_events,
)
from recsys.data.formats._text import DelimitedText, read_file_bytes
from recsys.schema import ITEM_ID, TIMESTAMP, USER_ID
from recsys.utils.errors import DataError

DEFAULT_COLUMNS = {USER_ID: "user_id", ITEM_ID: "item_id", TIMESTAMP: "timestamp"}


def canonical_columns(
    path: Path, table: pa.Table, mapping: dict[str, str], unit: str, locate: Locate
) -> dict[str, pa.ChunkedArray]:
    """Convert mapped source columns to canonical types and validate them."""
    cols = {}
    for canon, src in mapping.items():
        col = table.column(src)
        if canon == TIMESTAMP:
            cols[canon] = timestamps_to_seconds(path, col, src, unit, locate)
        elif canon in NUMERIC_COLUMNS:
            cols[canon] = numeric_to_float(path, col, src)
        else:
            cols[canon] = to_string(path, col, src)
    validate_events(path, cols, mapping, locate)
    return cols


def _finish(cols: dict[str, Any], n_rows: int, event_type: str) -> LoadedData:
    kind: TimestampKind = "unix"
    if TIMESTAMP not in cols:
        cols[TIMESTAMP], kind = ordinal_timestamps(cols[USER_ID]), "ordinal"
    return LoadedData(events=build_events(cols, n_rows, event_type), timestamp_kind=kind)


def _csv_types(mapping: dict[str, str]) -> dict[str, pa.DataType]:
    """Explicit Arrow types per source column: numbers as float64, the rest as
    strings (ids keep leading zeros); the timestamp type is inferred."""
    return {
        src: pa.float64() if canon in NUMERIC_COLUMNS else pa.string()
        for canon, src in mapping.items()
        if canon != TIMESTAMP
    }


class _TableLoader:
    """Shared constructor and fingerprint of the named-column formats."""

    format = ""

    def __init__(
        self,
        path: str | Path,
        columns: dict | None = None,
        event_type: str = "click",
        timestamp_unit: str = "s",
    ) -> None:
        self.path = Path(path)
        self.columns = dict(columns.items()) if columns is not None else None
        self.event_type = event_type
        self.timestamp_unit = timestamp_unit

    def _check_params(self) -> None:
        check_event_type(self.path, self.event_type)
        check_unit(self.path, self.timestamp_unit)

    def fingerprint_config(self) -> dict[str, Any]:
        """Parameters that change the output."""
        return {
            "format": self.format,
            "columns": self.columns,
            "event_type": self.event_type,
            "timestamp_unit": self.timestamp_unit,
        }


class CsvLoader(_TableLoader):
    """A delimited text file with a header line.

    Args:
        path: the file.
        columns: canonical name -> source column, merged over
            ``{user_id: user_id, item_id: item_id, timestamp: timestamp}`` where
            the defaulted ``timestamp`` may be absent (then ordinal per user).
            A ``None`` value drops a default.
        delimiter: field separator.
        event_type: event type of every row unless ``columns`` maps ``event_type``.
        timestamp_unit: unit of numeric timestamps (``s``, ``ms``, ``us``, ``ns``);
            ISO-8601 datetimes are read as such.
    """

    format = "csv"

    def __init__(
        self,
        path: str | Path,
        columns: dict | None = None,
        delimiter: str = ",",
        event_type: str = "click",
        timestamp_unit: str = "s",
    ) -> None:
        super().__init__(path, columns, event_type, timestamp_unit)
        self.delimiter = delimiter

    def load(self) -> LoadedData:
        """Read and validate the file."""
        self._check_params()
        text = DelimitedText(self.path, read_file_bytes(self.path), self.delimiter, quoting=True)
        names = text.header
        text.check_unique_names(names)
        text.check_rows()
        mapping, soft = resolve_mapping(self.path, self.columns, DEFAULT_COLUMNS)
        mapping = require_columns(self.path, mapping, soft, names, line=1)
        types = _csv_types(mapping)
        kinds = {src: "float" for src, typ in types.items() if typ == pa.float64()}
        table = text.read(names, list(dict.fromkeys(mapping.values())), types, kinds)
        text.check_no_repeated_header(table, names, mapping[USER_ID])
        cols = canonical_columns(self.path, table, mapping, self.timestamp_unit, text_locate())
        return _finish(cols, table.num_rows, self.event_type)

    def source_files(self) -> list[Path]:
        """The one input file."""
        return [self.path]

    def fingerprint_config(self) -> dict[str, Any]:
        """Parameters that change the output."""
        return {**super().fingerprint_config(), "delimiter": self.delimiter}


def parquet_files(path: Path) -> list[Path]:
    """``path`` itself, or the ``*.parquet`` files under it in sorted order
    (names starting with ``.`` or ``_`` are skipped, as Arrow datasets do)."""
    if not path.exists():
        raise DataError(path, "file not found")
    if not path.is_dir():
        return [path]
    files = sorted(
        p for p in path.rglob("*.parquet")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataError(path, "no .parquet files in directory")
    return files


def _read_parquet(path: Path, mapping: dict[str, str], soft: set[str]) -> tuple[pa.Table, dict[str, str]]:
    """The mapped columns of one file, after checking its schema."""
    if path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(path, f"not a readable parquet file ({exc})") from None
    with pf:
        names = pf.schema_arrow.names
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise DataError(path, "duplicate field name in schema", column=dups[0])
        mapping = require_columns(path, mapping, soft, names)
        if pf.metadata.num_rows == 0:
            raise DataError(path, "no data rows")
        return pf.read(columns=list(dict.fromkeys(mapping.values()))), mapping


class ParquetLoader(_TableLoader):
    """A Parquet file, or a directory of them read as one table in sorted order.

    Args:
        path: a ``.parquet`` file or a directory.
        columns: as for :class:`CsvLoader`.
        event_type: event type of every row unless ``columns`` maps ``event_type``.
        timestamp_unit: unit of numeric timestamps; Arrow timestamp and date
            columns carry their own unit.
    """

    format = "parquet"

    def load(self) -> LoadedData:
        """Read and validate every file; errors name the file and row index."""
        self._check_params()
        mapping, soft = resolve_mapping(self.path, self.columns, DEFAULT_COLUMNS)
        parts: dict[str, list[pa.ChunkedArray]] = {}
        n_rows = 0
        for file in parquet_files(self.path):
            table, mapping = _read_parquet(file, mapping, soft)
            soft = set()  # later files must have what the first one had
            cols = canonical_columns(file, table, mapping, self.timestamp_unit, row_locate)
            for canon, col in cols.items():
                parts.setdefault(canon, []).extend(col.chunks)
            n_rows += table.num_rows
        cols = {c: pa.chunked_array(chunks, type=chunks[0].type) for c, chunks in parts.items()}
        return _finish(cols, n_rows, self.event_type)

    def source_files(self) -> list[Path]:
        """The file, or the parquet files of the directory (as given if missing)."""
        try:
            return parquet_files(self.path)
        except DataError:
            return [self.path]
