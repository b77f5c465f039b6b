"""Training/serving skew: logged serving-time feature values against an offline
point-in-time recomputation from the event log."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import polars as pl

from recsys.features import asof
from recsys.features.definitions import ENTITIES, FeatureSet
from recsys.utils.errors import DataError


def skew_report(logged: pl.DataFrame, events: Any, fs: FeatureSet, params: Mapping[str, Any] | None,
                entity: str = "user", time_col: str = "timestamp", rtol: float = 1e-6, atol: float = 1e-6,
                label: str = "<logged>") -> dict[str, Any]:
    """Per feature present in ``logged`` (keys of ``entity`` + ``time_col`` + feature
    columns): rows compared, mismatches (beyond ``atol + rtol |offline|``, or NaN
    on one side only), max absolute difference and up to 5 example rows."""
    keys = list(ENTITIES[entity])
    for c in (*keys, time_col):
        if c not in logged.columns:
            raise DataError(label, "missing column", column=c)
    if logged.height == 0:
        raise DataError(label, "empty file (0 rows)")
    names = [f.name for f in fs.entity_features(entity) if f.name in logged.columns]
    if not names:
        raise DataError(label, f"no {entity} feature columns of feature set {fs.version}")
    offline = asof.asof_features(events, fs, entity, logged.select([*keys, time_col]), params, time_col)
    per: dict[str, Any] = {}
    for n in names:
        if n not in offline:
            continue
        a = logged[n].cast(pl.Float64).to_numpy()
        b = offline[n]
        nan_mis = np.isnan(a) != np.isnan(b)
        diff = np.abs(np.nan_to_num(a) - np.nan_to_num(b))
        bad = nan_mis | (diff > atol + rtol * np.abs(np.nan_to_num(b)))
        idx = np.flatnonzero(bad)[:5]
        per[n] = {"rows": int(len(a)), "mismatches": int(bad.sum()), "max_abs_diff": float(diff.max(initial=0.0)),
                  "examples": [{"row": int(i), "logged": float(a[i]), "offline": float(b[i])} for i in idx]}
    return {"entity": entity, "rows": logged.height, "n_features": len(per),
            "n_features_with_mismatches": sum(v["mismatches"] > 0 for v in per.values()),
            "total_mismatches": sum(v["mismatches"] for v in per.values()), "features": per}


def read_params(path: str | Path) -> dict[str, Any]:
    """Fitted params from a ``features build`` manifest (its ``params``) or a params file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "no such file")
    manifest = json.loads(p.read_text())
    return manifest.get("params", manifest)


def report_lines(res: Mapping[str, Any]) -> list[str]:
    """One line per feature: mismatched rows and the largest difference."""
    return [f"{'SKEW ' if r['mismatches'] else 'ok   '} {name:<32} {r['mismatches']}/{r['rows']} mismatched, "
            f"max |diff| {r['max_abs_diff']:.3g}" for name, r in res["features"].items()]
