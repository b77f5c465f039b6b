"""Retention: a time-to-live for training data. Erasure of one user (events
linked through identity resolution, derived features, online state, run and
index artifacts, the data cache) lives in :mod:`recsys.features.erasure`."""
from __future__ import annotations

import polars as pl

from recsys.features.definitions import seconds


def apply_ttl(events: pl.LazyFrame, as_of: float, ttl: str | float | None) -> pl.LazyFrame:
    """Drop events older than ``ttl`` (e.g. ``"90d"``) before ``as_of``; ``None`` keeps all."""
    if ttl is None:
        return events
    return events.filter(pl.col("timestamp") >= as_of - seconds(ttl))
