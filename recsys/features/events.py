"""Event logs as the feature code reads them: the columns it needs, checked.

:func:`scan_events` opens a Parquet file, a polars frame or a pyarrow table as a
LazyFrame with ``user_id``, ``item_id``, ``timestamp``, ``event_type`` (required),
``value`` (dwell seconds of views), ``session_id`` and ``category`` (optional;
joined from an items table when the events lack it); :func:`check_events` runs the
row-level checks. Bad input raises :class:`DataError` naming the file and column.
The integer encoding the snapshot reads is :mod:`recsys.features.encode`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import polars as pl

from recsys.utils.errors import DataError

REQUIRED = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Float64, "event_type": pl.String}
OPTIONAL = {"value": pl.Float64, "session_id": pl.String, "category": pl.String}
UNKNOWN_CATEGORY = "unknown"


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
    return check_counts(s, label)


def check_counts(s: Mapping[str, Any], label: str) -> dict[str, Any]:
    """Refuse an empty log, null or NaN timestamps (``bad_t``) and null keys (``null_user``,
    ``null_item``, ``null_type``) from their counts ``s`` (one :class:`DataError` naming the file)."""
    if s["n"] == 0:
        raise DataError(label, "empty event log (0 rows)")
    if s["bad_t"]:
        raise DataError(label, f"{s['bad_t']} rows with a null or NaN timestamp", column="timestamp")
    for col in ("user", "item", "type"):
        if s[f"null_{col}"]:
            name = {"user": "user_id", "item": "item_id", "type": "event_type"}[col]
            raise DataError(label, f"{s[f'null_{col}']} null values", column=name)
    return dict(s)
