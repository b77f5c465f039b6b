"""Retention: a time-to-live for training data, and erasure of one user from
the event store, the derived features and the online state."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from recsys.features.definitions import seconds
from recsys.features.store import read_parquet_frame
from recsys.utils.errors import DataError
from recsys.utils.io import atomic_path


def apply_ttl(events: pl.LazyFrame, as_of: float, ttl: str | float | None) -> pl.LazyFrame:
    """Drop events older than ``ttl`` (e.g. ``"90d"``) before ``as_of``; ``None`` keeps all."""
    if ttl is None:
        return events
    return events.filter(pl.col("timestamp") >= as_of - seconds(ttl))


def erase_user_events(path: str | Path, user_id: str, id_columns: tuple[str, ...] = ("user_id", "raw_user_id")
                      ) -> dict[str, Any]:
    """Rewrite the Parquet event store at ``path`` without any row whose user
    columns name ``user_id`` (atomic replace). Returns counts."""
    path = Path(path)
    df = read_parquet_frame(path, allow_empty=True)
    cols = [c for c in id_columns if c in df.columns]
    if not cols:
        raise DataError(path, "no user id column", column="user_id")
    hit = pl.any_horizontal([pl.col(c) == user_id for c in cols]).fill_null(False)
    n = int(df.select(hit.sum()).item())
    if n == 0:
        raise DataError(path, f"unknown user id {user_id!r} (no events)", column="user_id")
    kept = df.filter(~hit)
    with atomic_path(path) as tmp:
        kept.write_parquet(tmp)
    return {"events_removed": n, "events_kept": kept.height}
