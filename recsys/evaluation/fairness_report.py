"""The fairness section of an evaluation: user groups from a prepared dataset,
:mod:`recsys.evaluation.fairness` on the per-user metrics and top-K lists of a
test set, and the printed table.

User groups, always: quantiles of each user's training-history length
(``activity``). Then every user side column (or the ones named): string columns
with at most ``max_levels`` distinct values are used as they are (levels with
fewer than ``min_group_size`` evaluated users are pooled into ``(other)``);
numeric columns (or strings that all parse as numbers, e.g. MovieLens ages) with
more distinct values are cut into quartiles; other columns (ids, zip codes) are
listed under ``skipped_columns``. Item side: exposure of the test top-K lists by
``item_column`` (a list column counts by its first value) against the share of
the test targets (relevance share) and of the catalogue.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from recsys import schema as S
from recsys.data.prepare import PreparedData
from recsys.data.splits import Split
from recsys.evaluation.fairness import activity_groups, exposure_report, group_metrics
from recsys.utils.errors import RecsysError
from recsys.utils.sparse import CSR

OTHER = "(other)"
MISSING = "(missing)"


@dataclass
class FairnessOptions:
    """``evaluation.fairness`` in the configs (``enabled: true`` in ``recsys evaluate``)."""

    enabled: bool = False
    metrics: Sequence[str] = ("ndcg@10", "recall@10")
    n_bootstrap: int = 1000
    alpha: float = 0.05
    seed: int = 0
    activity_quantiles: int = 4
    user_columns: Sequence[str] | None = None  # None: every usable user side column
    max_levels: int = 50
    min_group_size: int = 20
    item_column: str | None = "category"
    table_metric: str | None = None  # printed; default: the first of ``metrics``


def user_groupings(data: PreparedData, users: np.ndarray, train_counts: np.ndarray, opts: FairnessOptions
                   ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``({attribute: labels (U,)}, {skipped column: why})`` for the evaluated ``users``."""
    out = {"activity": activity_groups(train_counts[users], opts.activity_quantiles)}
    skipped: dict[str, str] = {}
    table = data.users
    idx = table.column(S.USER_IDX).to_numpy().astype(np.int64)
    names = [c for c in table.column_names if c not in (S.USER_IDX, S.USER_ID)]
    if opts.user_columns is not None:
        unknown = [c for c in opts.user_columns if c not in names]
        if unknown:
            raise RecsysError(f"evaluation.fairness.user_columns: {unknown} not in the users table "
                              f"(columns: {names or 'none'})")
        names = list(opts.user_columns)
    for name in names:
        col = table.column(name)
        full = np.full(data.n_users + 1, None, dtype=object)
        full[idx] = _as_values(col)
        labels, why = _labels(full[users], opts)
        if labels is None:
            skipped[name] = why
        else:
            out[name] = labels
    return out, skipped


def _as_values(col: pa.ChunkedArray) -> list[Any]:
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return [v[0] if v else None for v in col.to_pylist()]
    return col.to_pylist()


def _labels(values: np.ndarray, opts: FairnessOptions) -> tuple[np.ndarray | None, str]:
    present = np.array([v is not None for v in values])
    if not present.any():
        return None, "no values"
    numeric = _numeric(values[present])
    distinct = len(set(values[present].tolist()))
    if numeric is not None and distinct > min(opts.max_levels, 8):
        labels = np.full(len(values), MISSING, dtype=object)
        labels[present] = activity_groups(numeric, 4)
        return labels.astype(str), ""
    if distinct > opts.max_levels:
        return None, f"{distinct} distinct values (> max_levels={opts.max_levels})"
    labels = np.array([MISSING if v is None else str(v) for v in values], dtype=object)
    levels, counts = np.unique(labels, return_counts=True)
    small = levels[counts < opts.min_group_size]
    labels[np.isin(labels, small)] = OTHER
    if len(np.unique(labels)) < 2:
        return None, "fewer than 2 groups"
    return labels.astype(str), ""


def _numeric(values: np.ndarray) -> np.ndarray | None:
    try:
        return np.array([float(v) for v in values])
    except (TypeError, ValueError):
        return None


def item_groups(data: PreparedData, column: str | None) -> tuple[np.ndarray, list[str]] | None:
    """``(codes (n_items + 1,), names)`` of an item column (first value of a list), or None."""
    if column is None or column not in data.items.column_names:
        return None
    col = data.items.column(column)
    values = [("" if v is None else str(v)) for v in _as_values(col)]
    names, inv = np.unique(np.array(values, dtype=object).astype(str), return_inverse=True)
    codes = np.zeros(data.n_items + 1, dtype=np.int64)
    codes[data.items.column(S.ITEM_IDX).to_numpy().astype(np.int64)] = inv
    return codes, [str(n) if n else MISSING for n in names]


def fairness_report(data: PreparedData, users: np.ndarray, targets: CSR, per_user: dict[str, np.ndarray],
                    top_items: np.ndarray | None, train_counts: np.ndarray, opts: FairnessOptions) -> dict[str, Any]:
    """The ``fairness`` section of ``summary.json`` for one test set.

    ``users`` / ``targets``: the evaluated users and their held-out items (rows
    aligned with ``per_user`` and ``top_items``); ``train_counts``: training
    interactions per user index, (n_users + 1,).
    """
    keep = targets.lengths() > 0  # the evaluator keeps per-user values for users with targets only
    if not keep.all():
        users, targets = users[keep], targets.take(np.flatnonzero(keep))
        top_items = top_items[keep] if top_items is not None else None
    n_rows = {len(v) for v in per_user.values()} | ({len(top_items)} if top_items is not None else set())
    if n_rows != {len(users)}:
        raise ValueError(f"fairness: per-user values / top-k lists have {sorted(n_rows)} rows for {len(users)} users")
    missing = [m for m in opts.metrics if m not in per_user]
    if missing:
        raise RecsysError(f"evaluation.fairness.metrics: {missing} not computed (have: {sorted(per_user)}); "
                          f"check evaluation.ks")
    groupings, skipped = user_groupings(data, users, train_counts, opts)
    by_user = {
        name: group_metrics(per_user, labels, list(opts.metrics), n_boot=opts.n_bootstrap, alpha=opts.alpha,
                            seed=opts.seed, min_group_size=opts.min_group_size)
        for name, labels in groupings.items()
    }
    out: dict[str, Any] = {"metrics": list(opts.metrics), "n_users": int(len(users)), "n_bootstrap": opts.n_bootstrap,
                           "alpha": opts.alpha, "interval": "percentile bootstrap over users (stratified by group)",
                           "users": by_user, "skipped_user_columns": skipped}
    if top_items is not None:
        merit = np.bincount(targets.indices, minlength=data.n_items + 1).astype(np.float64)
        groups = item_groups(data, opts.item_column)
        if groups is None:
            codes, names = np.zeros(data.n_items + 1, dtype=np.int64), ["all"]
        else:
            codes, names = groups
        out["items"] = {"column": opts.item_column if groups is not None else None,
                        "relevance": "share of held-out test targets",
                        **exposure_report(top_items, codes, merit, names)}
    return out


def split_fairness(data: PreparedData, split: Split, per_user: dict[str, np.ndarray], top_items: np.ndarray | None,
                   opts: FairnessOptions) -> dict[str, Any]:
    """:func:`fairness_report` for the test set of ``split`` (activity = training
    interactions per user in ``split.train``)."""
    users = split.train.column(S.USER_IDX).to_numpy().astype(np.int64)
    train_counts = np.bincount(users, minlength=data.n_users + 1)
    return fairness_report(data, split.test.users, split.test.targets, per_user, top_items, train_counts, opts)


def format_fairness(report: dict[str, Any], metric: str | None = None) -> str:
    """A plain-text table: per attribute and group, n, the metric with its
    interval and the gap to the rest (``*`` where the gap's interval excludes 0);
    then the item exposure summary."""
    metric = metric or report["metrics"][0]
    lines = [f"fairness: {metric} by user group ({100 * (1 - report['alpha']):.0f}% bootstrap intervals, "
             f"{report['n_bootstrap']} resamples; * = gap to the rest excludes 0)"]
    head = f"{'attribute':<12} {'group':<22} {'n':>6}  {metric:>26}  {'gap to rest':>28}"
    lines += [head, "-" * len(head)]
    for attr, rep in report["users"].items():
        for group, e in rep["groups"].items():
            m = e.get(metric)
            if m is None:
                lines.append(f"{attr:<12} {group[:22]:<22} {e['n']:>6}  {'(too few users)':>26}")
                continue
            cell = f"{m['mean']:.4f} [{m['ci'][0]:.4f}, {m['ci'][1]:.4f}]"
            gap = ""
            if "gap" in m:
                lo, hi = m["gap_ci"]
                gap = f"{m['gap']:+.4f} [{lo:+.4f}, {hi:+.4f}]{'*' if lo > 0 or hi < 0 else ' '}"
            lines.append(f"{attr:<12} {group[:22]:<22} {e['n']:>6}  {cell:>26}  {gap:>28}")
        s = rep["summary"].get(metric)
        if s:
            lines.append(f"{'':<12} worst/best ratio {s['min_ratio']:.3f} ({s['worst']} vs {s['best']})")
    items = report.get("items")
    if items:
        line = (f"exposure (top-{items['k']}, {items['discount']}): item Gini {items['item_gini']:.3f}, "
                f"coverage {items['item_coverage']:.3f}")
        if items.get("column"):
            line += (f"; by {items['column']}: Gini {items['group_gini']:.3f}, exposure/relevance share "
                     f"min {items['exposure_to_relevance_min']:.2f} max {items['exposure_to_relevance_max']:.2f}, "
                     f"TV distance {items['exposure_relevance_tv']:.3f}")
        lines.append(line)
    return "\n".join(lines)
