"""The exposure/outcome Parquet format of an A/B test: read, validate, write.

One row per user in the experiment (see ``docs/ab_testing.md``):

=================  =========================  ==================================================
column (default)   type                       meaning
=================  =========================  ==================================================
``user_id``        string or integer          the randomisation unit; unique
``arm``            string                     the arm the user was exposed to
metric columns     bool / integer / float     outcome per user over the experiment, e.g.
                                              ``click`` (0/1) or ``revenue``; no nulls or NaN
covariates         bool / integer / float     optional pre-period value of a metric (CUPED),
                                              e.g. ``pre_revenue``; no nulls or NaN
``timestamp``      float seconds or Arrow     optional first-exposure time; enables the
                   timestamp                  sequential (peeking) curves
=================  =========================  ==================================================

Column names are mapped in the config (``columns.*`` and ``metrics.<name>.column``
/ ``.covariate``). Every problem raises :class:`~recsys.utils.errors.DataError`
with one line naming the file, the column and the first bad row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.utils.errors import DataError
from recsys.utils.io import atomic_path

METRIC_TYPES = ("auto", "binary", "continuous")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its column, optional pre-period covariate column and type."""

    name: str
    column: str
    covariate: str | None = None
    type: str = "auto"

    def __post_init__(self) -> None:
        if self.type not in METRIC_TYPES:
            raise ValueError(f"metric {self.name!r}: type must be one of {METRIC_TYPES}, got {self.type!r}")


@dataclass
class ExperimentData:
    """Validated columns as numpy arrays (``metrics``/``covariates`` keyed by metric name)."""

    path: str
    user_id: np.ndarray
    arm: np.ndarray
    metrics: dict[str, np.ndarray]
    metric_types: dict[str, str]
    covariates: dict[str, np.ndarray] = field(default_factory=dict)
    timestamp: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.user_id)


def metric_specs(cfg_metrics: Mapping[str, Any]) -> list[MetricSpec]:
    """``{name: {column, covariate, type}}`` (or ``{name: column}``) -> specs."""
    out = []
    for name, spec in cfg_metrics.items():
        if isinstance(spec, str):
            out.append(MetricSpec(str(name), spec))
        else:
            spec = dict(spec or {})
            out.append(MetricSpec(str(name), str(spec.get("column") or name), spec.get("covariate"),
                                  str(spec.get("type") or "auto")))
    return out


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _numeric(table: pa.Table, path: str, column: str) -> np.ndarray:
    col = table.column(column)
    t = col.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise DataError(path, f"expected a numeric or boolean column, got {t}", column=column)
    if col.null_count:
        raise DataError(path, f"null value in {col.null_count} rows (first row {_first(np.asarray(col.is_null()))})",
                        column=column)
    values = col.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(path, f"NaN or infinite value in {int(bad.sum())} rows (first row {_first(bad)})",
                        column=column)
    return values


def _timestamps(table: pa.Table, path: str, column: str) -> np.ndarray:
    col = table.column(column)
    if pa.types.is_timestamp(col.type):
        col = pc.divide(pc.cast(pc.cast(col, pa.timestamp("us")), pa.int64()).cast(pa.float64()), 1e6)
    return _numeric(pa.table({column: col}), path, column)


def read_experiment(path: str | Path, metrics: Sequence[MetricSpec], arms: Sequence[str], *,
                    user_col: str = "user_id", arm_col: str = "arm", timestamp_col: str | None = None,
                    ) -> ExperimentData:
    """Read and validate an experiment Parquet file.

    Raises:
        DataError: missing/unreadable file, missing column, null or duplicate user
            id, unknown arm, empty arm, non-numeric/NaN metric or covariate, a
            ``binary`` metric with values other than 0/1.
    """
    path = str(path)
    if not Path(path).is_file():
        raise DataError(path, "file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(path, f"not a readable Parquet file ({str(e).splitlines()[0]})") from e
    if table.num_rows == 0:
        raise DataError(path, "no rows")
    needed = [user_col, arm_col, *(m.column for m in metrics), *(m.covariate for m in metrics if m.covariate)]
    needed += [timestamp_col] if timestamp_col else []
    for c in needed:
        if c not in table.column_names:
            raise DataError(path, f"missing (columns are: {', '.join(table.column_names)})", column=c)
    users = table.column(user_col)
    if users.null_count:
        raise DataError(path, f"null user id (first row {_first(np.asarray(users.is_null()))})", column=user_col)
    uid = np.asarray(users.cast(pa.string()).to_pylist(), dtype=str)
    uniq, first_idx, counts = np.unique(uid, return_index=True, return_counts=True)
    if (counts > 1).any():
        j = int(np.argmax(counts > 1))
        raise DataError(path, f"user {str(uniq[j])!r} appears in {counts[j]} rows (first row {first_idx[j]}); "
                              "expected one row per user", column=user_col)
    arm_arr = table.column(arm_col)
    if arm_arr.null_count:
        raise DataError(path, f"null arm (first row {_first(np.asarray(arm_arr.is_null()))})", column=arm_col)
    arm = np.asarray(arm_arr.cast(pa.string()).to_pylist(), dtype=str)
    unknown = ~np.isin(arm, np.asarray(list(arms), dtype=str))
    if unknown.any():
        r = _first(unknown)
        raise DataError(path, f"unknown arm {str(arm[r])!r} in {int(unknown.sum())} rows (first row {r}); "
                              f"expected one of: {', '.join(arms)}", column=arm_col)
    for a in arms:
        if not (arm == a).any():
            raise DataError(path, f"arm {a!r} has no rows (arms in the file: {', '.join(map(str, np.unique(arm)))})",
                            column=arm_col)
    values, types, covs = {}, {}, {}
    for m in metrics:
        y = _numeric(table, path, m.column)
        is01 = bool(np.isin(y, (0.0, 1.0)).all())
        if m.type == "binary" and not is01:
            r = _first(~np.isin(y, (0.0, 1.0)))
            raise DataError(path, f"binary metric {m.name!r} has value {float(y[r]):g} at row {r}; expected 0 or 1",
                            column=m.column)
        values[m.name] = y
        types[m.name] = m.type if m.type != "auto" else ("binary" if is01 else "continuous")
        if m.covariate:
            covs[m.name] = _numeric(table, path, m.covariate)
    ts = _timestamps(table, path, timestamp_col) if timestamp_col else None
    return ExperimentData(path, uid, arm, values, types, covs, ts)


def write_experiment(table: pa.Table, path: str | Path) -> Path:
    """Write an experiment table atomically (temp file + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path
