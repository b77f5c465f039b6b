"""Loaders that validate as they read, one per input format.

Each class is built by Hydra (``_target_``) with keyword arguments and follows
the :class:`recsys.data.base.Loader` protocol: :meth:`load` returns
:class:`~recsys.data.base.LoadedData` whose ``events`` conform to
:data:`recsys.schema.EVENT_SCHEMA`, or raises
:class:`~recsys.utils.errors.DataError` with a one-line message naming the file,
the line (1-based, header included) or column, and what was expected.

==========  ==========================  =====================================
format      class                       input
==========  ==========================  =====================================
seqtxt      :class:`SeqTxtLoader`       ``user item item ...`` per line
recbole     :class:`RecBoleLoader`      ``.inter`` (+ ``.item`` / ``.user``)
csv         :class:`CsvLoader`          delimited text with a header line
parquet     :class:`ParquetLoader`      a Parquet file or a directory of them
==========  ==========================  =====================================

:func:`validate_file` loads one file and returns a summary dict; nothing is written.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.base import LoadedData, Loader
from recsys.data.formats import CsvLoader, ParquetLoader, RecBoleLoader, SeqTxtLoader
from recsys.data.formats._common import exact_duplicate_rows
from recsys.schema import EVENT_TYPE, ITEM_ID, TIMESTAMP, USER_ID
from recsys.utils.errors import DataError

FORMATS = ("csv", "parquet", "recbole", "seqtxt")

__all__ = [
    "FORMATS",
    "CsvLoader",
    "ParquetLoader",
    "RecBoleLoader",
    "SeqTxtLoader",
    "make_loader",
    "summarize",
    "validate_file",
]


def _recbole(path: Path, kwargs: dict[str, Any]) -> RecBoleLoader:
    """The ``.inter`` file plus sibling ``.item`` / ``.user`` files with its stem."""
    for key, suffix in (("item_path", ".item"), ("user_path", ".user")):
        sibling = path.with_suffix(suffix)
        if key not in kwargs and sibling.is_file():
            kwargs[key] = sibling
    return RecBoleLoader(inter_path=path, **kwargs)


def make_loader(path: str | Path, format: str, **loader_kwargs: Any) -> Loader:
    """The loader for ``format`` over ``path``.

    For ``recbole``, ``path`` is the ``.inter`` file and sibling ``.item`` /
    ``.user`` files are used when present (unless given in ``loader_kwargs``).
    For ``csv`` / ``parquet`` without ``columns``, the columns are
    ``user_id``, ``item_id`` and (if present) ``timestamp``.
    """
    path = Path(path)
    builders: dict[str, Callable[[dict[str, Any]], Loader]] = {
        "seqtxt": lambda kw: SeqTxtLoader(path, **kw),
        "recbole": lambda kw: _recbole(path, kw),
        "csv": lambda kw: CsvLoader(path, **kw),
        "parquet": lambda kw: ParquetLoader(path, **kw),
    }
    if format not in builders:
        raise DataError(path, f"unknown format {format!r} (valid: {', '.join(FORMATS)})")
    try:
        return builders[format](dict(loader_kwargs))
    except TypeError as exc:
        raise DataError(path, f"bad option for format {format!r}: {exc}") from None


def _table_summary(table: pa.Table | None) -> dict[str, Any] | None:
    if table is None:
        return None
    return {"n_rows": table.num_rows, "columns": {f.name: str(f.type) for f in table.schema}}


def summarize(data: LoadedData) -> dict[str, Any]:
    """Counts, the event columns that carry data, timestamp range, side tables, and
    ``n_exact_duplicates``: events equal in every column to an earlier one (kept by
    the loaders; :func:`recsys.data.prepare.prepare` warns about them)."""
    events = data.events
    present = [n for n in events.column_names if events.column(n).null_count < events.num_rows]
    ts = events.column(TIMESTAMP)
    types = pc.value_counts(events.column(EVENT_TYPE)).to_pylist()
    return {
        "n_rows": events.num_rows,
        "n_exact_duplicates": int(len(exact_duplicate_rows(events))),
        "n_users": pc.count_distinct(events.column(USER_ID)).as_py(),
        "n_items": pc.count_distinct(events.column(ITEM_ID)).as_py(),
        "columns": present,
        "timestamp_kind": data.timestamp_kind,
        "timestamp_min": pc.min(ts).as_py(),
        "timestamp_max": pc.max(ts).as_py(),
        "event_types": {d["values"]: d["counts"] for d in types},
        "items": _table_summary(data.items),
        "users": _table_summary(data.users),
    }


def validate_file(path: str, format: str, **loader_kwargs: Any) -> dict[str, Any]:
    """Load ``path`` as ``format`` (``seqtxt | recbole | csv | parquet``), validating
    every row, and return a summary::

        {path, format, n_rows, n_exact_duplicates, n_users, n_items, columns, timestamp_kind,
         timestamp_min, timestamp_max, event_types, items, users,
         source_files, load_seconds}

    Raises:
        DataError: unknown format, bad option, or the first problem in the data.
    """
    loader = make_loader(path, format, **loader_kwargs)
    start = time.perf_counter()
    data = loader.load()
    seconds = time.perf_counter() - start
    return {
        "path": str(path),
        "format": format,
        **summarize(data),
        "source_files": [str(p) for p in loader.source_files()],
        "load_seconds": round(seconds, 4),
    }
