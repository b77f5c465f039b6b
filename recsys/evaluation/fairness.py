"""Fairness on arrays: metrics disaggregated by user group with bootstrap
intervals, gaps between groups, and item-side exposure (pure numpy).

User side (inputs: one value per evaluated user for each metric, e.g.
``RankingResult.per_user``, and one group label per user):

* :func:`group_metrics`: per group the mean and a percentile bootstrap interval
  (users resampled within the group), and the **gap** ``mean(group) - mean(rest)``
  with an interval from the same stratified bootstrap (users resampled within
  every group independently, so the difference's interval accounts for both
  sides' sampling noise); ``ratio`` = ``mean(group) / mean(rest)``. Across the
  column: the worst and best groups, ``max_gap`` = best - worst (with the
  interval of that difference; the pair is chosen after looking, so read it as
  descriptive) and ``min_ratio`` = worst / best (the disparity ratio).
* :func:`activity_groups`: quantile groups of an activity count (e.g. the length
  of each user's training history), labelled by their ranges.
* :func:`paired_difference_ci`: the mean of ``a - b`` over the same users with a
  bootstrap interval (two models on one test set: the gates' test).

Item side (inputs: the recommended top-K lists ``(U, K)`` of item ids, 0 = empty
slot, and an item -> group code array):

* exposure of an item = sum over lists of the position weight ``1 / log2(2 + pos)``
  (the DCG discount; ``pos`` 0-based) of every slot that shows it;
* :func:`exposure_report`: item-level exposure Gini (over the whole catalogue,
  unrecommended items count as 0), per item group the exposure share, the
  relevance share (share of the held-out target interactions, or any other
  non-negative merit per item that is passed in), the catalogue share, and their
  ratio ``exposure share / relevance share`` (1 = exposed in proportion to
  merit); overall the min and max of that ratio over groups with merit, the total
  variation distance ``0.5 * sum |exposure share - relevance share|`` and the Gini
  of exposure over groups.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

DEFAULT_BOOTSTRAP = 1000
_BOOT_CHUNK = 1 << 22  # resampled values drawn at once (bounds memory at any size)


# ------------------------------------------------------------------ helpers
def position_weights(k: int) -> np.ndarray:
    """DCG position discount ``1 / log2(2 + pos)`` for positions ``0..k-1``: (k,)."""
    return 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0 = all equal, -> 1 = one holds all);
    NaN when they sum to 0 or there are none."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n, total = len(v), float(v.sum())
    if n == 0 or total <= 0:
        return float("nan")
    ranks = np.arange(1, n + 1)
    return float(np.sum((2 * ranks - n - 1) * v) / (n * total))


def _percentile_ci(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _stratified_sums(values: np.ndarray, codes: np.ndarray, n_groups: int, n_boot: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Bootstrap sums per group: users resampled with replacement within their
    group. ``values`` (U, M), ``codes`` (U,) in ``0..n_groups-1`` -> (n_boot, G, M)."""
    out = np.zeros((n_boot, n_groups, values.shape[1]))
    for g in range(n_groups):
        members = values[codes == g]
        n = len(members)
        if n == 0:
            continue
        step = max(1, _BOOT_CHUNK // n)
        for s in range(0, n_boot, step):
            b = min(step, n_boot - s)
            idx = rng.integers(0, n, (b, n))
            out[s : s + b, g] = members[idx].sum(axis=1)
    return out


def _safe_ratio(a: float, b: float) -> float:
    return float(a / b) if b != 0 else float("nan")


# ------------------------------------------------------------------ user side
def activity_groups(counts: np.ndarray, n_quantiles: int = 4) -> np.ndarray:
    """Label each user by the quantile of ``counts`` (e.g. training history length)
    it falls in: ``"Q1 [5, 9]"`` ... (bounds inclusive, from the data). Equal counts
    always share a group, so with heavy ties there can be fewer groups. (U,) str."""
    c = np.asarray(counts, dtype=np.float64)
    if len(c) == 0:
        return np.array([], dtype=str)
    edges = np.unique(np.quantile(c, np.linspace(0, 1, n_quantiles + 1)[1:-1]))
    code = np.searchsorted(edges, c, side="left")  # value == edge goes to the lower group
    labels = np.empty(len(c), dtype=object)
    for i, q in enumerate(np.unique(code)):
        m = code == q
        labels[m] = f"Q{i + 1} [{_num(c[m].min())}, {_num(c[m].max())}]"
    return labels.astype(str)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.3g}"


def group_metrics(per_user: Mapping[str, np.ndarray], groups: np.ndarray, metrics: Sequence[str] | None = None,
                  *, n_boot: int = DEFAULT_BOOTSTRAP, alpha: float = 0.05, seed: int = 0,
                  min_group_size: int = 1) -> dict[str, Any]:
    """Metrics disaggregated by ``groups`` (one label per user, aligned with the
    ``per_user`` arrays) with percentile bootstrap intervals.

    Groups with fewer than ``min_group_size`` users are reported with ``n`` only
    (no means, gaps or intervals) and take no part in the across-group summary;
    their users still count in every other group's ``rest``.

    Returns ``{"n_users", "n_boot", "alpha", "groups": {label: {"n", "<metric>":
    {"mean", "ci", "gap", "gap_ci", "ratio"}}}, "summary": {"<metric>": {"worst",
    "best", "max_gap", "max_gap_ci", "min_ratio"}}}``; ``gap_ci`` excluding 0
    means the group differs from the rest at level ``alpha`` (one comparison).
    """
    labels = np.asarray(groups).astype(str)
    names = list(metrics) if metrics is not None else sorted(per_user)
    missing = [m for m in names if m not in per_user]
    if missing:
        raise KeyError(f"metrics {missing} not in the per-user values ({sorted(per_user)})")
    values = np.stack([np.asarray(per_user[m], dtype=np.float64) for m in names], axis=1) if names else \
        np.zeros((len(labels), 0))
    if len(values) != len(labels):
        raise ValueError(f"{len(labels)} group labels for {len(values)} users")
    levels, codes = np.unique(labels, return_inverse=True)
    n_g = np.bincount(codes, minlength=len(levels))
    rng = np.random.default_rng(seed)
    sums = _stratified_sums(values, codes, len(levels), n_boot, rng)  # (B, G, M)
    total_b = sums.sum(axis=1)  # (B, M)
    n_all = len(labels)
    point_sum = np.stack([values[codes == g].sum(axis=0) for g in range(len(levels))]) if len(levels) else \
        np.zeros((0, len(names)))
    out_groups: dict[str, Any] = {}
    big = [g for g in range(len(levels)) if n_g[g] >= min_group_size]
    for g, level in enumerate(levels):
        entry: dict[str, Any] = {"n": int(n_g[g])}
        if g in big:
            n_rest = n_all - n_g[g]
            for j, m in enumerate(names):
                mean = point_sum[g, j] / n_g[g]
                boot = sums[:, g, j] / n_g[g]
                e: dict[str, Any] = {"mean": float(mean), "ci": _percentile_ci(boot, alpha)}
                if n_rest > 0:
                    rest = (point_sum[:, j].sum() - point_sum[g, j]) / n_rest
                    boot_rest = (total_b[:, j] - sums[:, g, j]) / n_rest
                    e.update(gap=float(mean - rest), gap_ci=_percentile_ci(boot - boot_rest, alpha),
                             ratio=_safe_ratio(mean, rest))
                entry[m] = e
        out_groups[str(level)] = entry
    summary: dict[str, Any] = {}
    if len(big) >= 2:
        for j, m in enumerate(names):
            means = np.array([point_sum[g, j] / n_g[g] for g in big])
            w, b = big[int(np.argmin(means))], big[int(np.argmax(means))]
            diff = sums[:, b, j] / n_g[b] - sums[:, w, j] / n_g[w]
            summary[m] = {"worst": str(levels[w]), "best": str(levels[b]), "max_gap": float(means.max() - means.min()),
                          "max_gap_ci": _percentile_ci(diff, alpha), "min_ratio": _safe_ratio(means.min(), means.max())}
    return {"n_users": n_all, "n_boot": n_boot, "alpha": alpha, "groups": out_groups, "summary": summary}


def gap_excludes_zero(report: Mapping[str, Any], group: str, metric: str) -> bool:
    """Whether ``group``'s gap interval for ``metric`` (from :func:`group_metrics`) excludes 0."""
    lo, hi = report["groups"][group][metric]["gap_ci"]
    return bool(lo > 0 or hi < 0)


def paired_difference_ci(a: np.ndarray, b: np.ndarray, *, n_boot: int = DEFAULT_BOOTSTRAP, alpha: float = 0.05,
                         seed: int = 0) -> dict[str, Any]:
    """Mean of ``a - b`` over the same users (e.g. challenger vs champion per-user
    ndcg) with a percentile bootstrap interval over users."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) == 0:
        return {"n": 0, "mean": float("nan"), "ci": (float("nan"), float("nan"))}
    sums = _stratified_sums(d[:, None], np.zeros(len(d), dtype=np.int64), 1, n_boot, np.random.default_rng(seed))
    return {"n": int(len(d)), "mean": float(d.mean()), "ci": _percentile_ci(sums[:, 0, 0] / len(d), alpha)}


# ------------------------------------------------------------------ item side
def item_exposure(top: np.ndarray, n_items: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Position-discounted exposure per item id: (n_items + 1,), entry 0 = 0."""
    top = np.asarray(top, dtype=np.int64)
    w = position_weights(top.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    valid = top > 0
    exp = np.bincount(top[valid], weights=np.broadcast_to(w, top.shape)[valid], minlength=n_items + 1)
    exp[0] = 0.0
    return exp


def exposure_report(top: np.ndarray, item_group: np.ndarray, item_merit: np.ndarray | None = None,
                    group_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Exposure of the recommended lists ``top`` (U, K) by item and by item group.

    ``item_group``: (n_items + 1,) int codes ``>= 0`` (entry 0 is ignored);
    ``item_merit``: (n_items + 1,) non-negative relevance per item (e.g. how many
    held-out targets each item is; ``None``: no relevance comparison);
    ``group_names``: labels of the codes (default ``str(code)``).
    """
    item_group = np.asarray(item_group, dtype=np.int64)
    n_items = len(item_group) - 1
    exp = item_exposure(top, n_items)
    codes = item_group[1:]
    n_groups = int(codes.max()) + 1 if n_items else 0
    names = list(group_names) if group_names is not None else [str(g) for g in range(n_groups)]
    g_exp = np.bincount(codes, weights=exp[1:], minlength=n_groups)
    g_items = np.bincount(codes, minlength=n_groups).astype(np.float64)
    exp_share = g_exp / g_exp.sum() if g_exp.sum() > 0 else np.full(n_groups, np.nan)
    cat_share = g_items / max(n_items, 1)
    out: dict[str, Any] = {
        "n_lists": int(len(top)), "k": int(np.asarray(top).shape[1]) if np.ndim(top) == 2 else 0,
        "discount": "1/log2(2+pos)",
        "item_gini": gini(exp[1:]),
        "item_coverage": float((exp[1:] > 0).mean()) if n_items else float("nan"),
        "group_gini": gini(g_exp),
    }
    rel_share = None
    if item_merit is not None:
        merit = np.asarray(item_merit, dtype=np.float64)
        g_rel = np.bincount(codes, weights=merit[1:], minlength=n_groups)
        rel_share = g_rel / g_rel.sum() if g_rel.sum() > 0 else np.full(n_groups, np.nan)
    groups: dict[str, Any] = {}
    for g in range(n_groups):
        e: dict[str, Any] = {"n_items": int(g_items[g]), "exposure_share": float(exp_share[g]),
                             "catalogue_share": float(cat_share[g])}
        if rel_share is not None:
            e["relevance_share"] = float(rel_share[g])
            e["exposure_to_relevance"] = _safe_ratio(exp_share[g], rel_share[g])
        groups[names[g]] = e
    out["groups"] = groups
    if rel_share is not None:
        ratios = exp_share[rel_share > 0] / rel_share[rel_share > 0]
        out["exposure_to_relevance_min"] = float(ratios.min()) if len(ratios) else float("nan")
        out["exposure_to_relevance_max"] = float(ratios.max()) if len(ratios) else float("nan")
        out["exposure_relevance_tv"] = float(0.5 * np.abs(exp_share - rel_share).sum())
    return out


def list_ndcg(top: np.ndarray, target_rows: np.ndarray, target_items: np.ndarray) -> np.ndarray:
    """Per-list NDCG@K of recommended lists ``top`` (U, K) against held-out targets
    given as parallel arrays (row, item); same definition as the ranking evaluator
    (IDCG over ``min(K, |T|)``). Lists without targets get NaN. (U,)."""
    top = np.asarray(top, dtype=np.int64)
    U, K = top.shape
    rows = np.asarray(target_rows, dtype=np.int64)
    items = np.asarray(target_items, dtype=np.int64)
    n_t = np.bincount(rows, minlength=U)
    mult = max(int(top.max(initial=0)), int(items.max(initial=0))) + 1
    hit = np.isin(np.arange(U)[:, None] * mult + top, rows * mult + items) & (top > 0)
    w = position_weights(K)
    dcg = (hit * w).sum(axis=1)
    idcg_cum = np.cumsum(w)
    denom = np.where(n_t > 0, idcg_cum[np.clip(np.minimum(n_t, K) - 1, 0, K - 1)], np.nan)
    return dcg / denom


def nan_mean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return math.fsum(x.tolist()) / len(x) if len(x) else float("nan")
