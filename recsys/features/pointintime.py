"""Point-in-time training sets: features joined *as of* each example's time.

``build_training_set(events, examples, feature_set)`` returns the examples with
one column per behavioural feature, each computed from events strictly before
the example's ``timestamp`` (strict backward as-of join per entity key, see
:func:`recsys.features.asof.asof_features`). Fitted parts (empirical-Bayes
priors, cohort statistics) come from ``params`` or are fitted on the events
before ``fit_time`` (default: the earliest example), so no value can see an
event at or after its example's time.
"""
from __future__ import annotations

from typing import Any, Mapping

import polars as pl

from recsys.features import asof, batch
from recsys.features.definitions import ENTITIES, FeatureSet, build_feature_set
from recsys.features.events import UNKNOWN_CATEGORY, scan_events
from recsys.utils.errors import DataError


def build_training_set(events: Any, examples: Any, feature_set: FeatureSet | Mapping[str, Any] | None = None,
                       *, params: Mapping[str, Any] | None = None, fit_time: float | None = None,
                       items: Any = None, entities: list[str] | None = None,
                       time_col: str = "timestamp") -> tuple[pl.DataFrame, dict[str, Any]]:
    """Examples (``user_id``, ``item_id``, ``time_col``, anything else) plus the
    features of their user, item, user x item and user x category as of
    ``time_col``. ``events``/``examples``/``items``: Parquet paths, polars frames
    or pyarrow tables. Returns ``(frame, info)`` with the feature-set version,
    params and the fit time in ``info``.
    """
    fs = feature_set if isinstance(feature_set, FeatureSet) else build_feature_set(feature_set)
    lf = scan_events(events, items=items)
    ex = _frame(examples)
    for col in ("user_id", "item_id", time_col):
        if col not in ex.columns:
            raise DataError("<examples>", "missing required column", column=col)
    if ex[time_col].cast(pl.Float64).is_nan().any() or ex[time_col].null_count():
        raise DataError("<examples>", "null or NaN example time", column=time_col)
    ex = ex.with_columns(pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String))
    if "category" not in ex.columns:
        cats = lf.select("item_id", "category").unique("item_id").collect()
        ex = ex.join(cats, on="item_id", how="left", maintain_order="left").with_columns(
            pl.col("category").fill_null(UNKNOWN_CATEGORY))
    if params is None and any(f.transform in ("eb_rate", "zscore", "rank") for f in fs.features):
        fit_time = float(ex[time_col].min()) if fit_time is None else float(fit_time)
        params = batch.fit(lf, fs, fit_time)
    out = ex
    for entity in entities or fs.entities:
        keys = list(ENTITIES[entity])
        vals = asof.asof_features(lf, fs, entity, ex.select([*keys, time_col]), params, time_col)
        out = batch.features_frame(fs, entity, out, vals)
    info = {"feature_set": fs.version, "params": params, "fit_time": fit_time,
            "n_features": sum(len(fs.entity_features(e)) for e in (entities or fs.entities))}
    return out, info


def _frame(x: Any) -> pl.DataFrame:
    if isinstance(x, pl.DataFrame):
        return x
    if isinstance(x, pl.LazyFrame):
        return x.collect()
    if isinstance(x, str) or hasattr(x, "__fspath__"):
        from pathlib import Path

        if not Path(x).exists():
            raise DataError(x, "no such file")
        return pl.read_parquet(x)
    return pl.from_arrow(x)
