"""The ``fairness_gaps`` promotion gate: the candidate's user-group gaps, with their
bootstrap intervals, against the limits in the gate's spec.

Evidence: the ``fairness`` section of the candidate's evaluation (``summary.json`` of
its training run, written by ``recsys train`` / ``recsys evaluate`` with
``fairness.enabled=true``; :func:`recsys.evaluation.fairness_report.fairness_report`),
whose ``users`` part holds, per attribute, :func:`recsys.evaluation.fairness.group_metrics`
of the test users: per group the mean of each metric, its ``gap`` to the rest of the
users (``mean(group) - mean(rest)``), the gap's percentile-bootstrap interval
``gap_ci`` (users resampled within every group) and ``ratio = mean(group) /
mean(rest)``. A candidate whose lineage carries a ``fairness`` report uses that one
first. :func:`user_report` builds the same section from per-user values and labels.

Spec (``gates: {fairness_gaps: {kind: fairness_gaps, ...}}``):

``metric``
    per-user metric to check (default ``ndcg@10``; must be in the report).
``attributes``
    attributes to check (default: every attribute of the report, e.g. ``activity``,
    ``group``, ``region``).
``max_gap``
    largest allowed shortfall of a group behind the rest, absolute (default 0.02):
    a group breaches it when ``gap < -max_gap``.
``min_ratio``
    smallest allowed ``mean(group) / mean(rest)`` (default ``null``: not checked;
    0.8 is the four-fifths rule).
``require_significant``
    (default ``true``) a breach only refuses when the gap's interval excludes 0 (the
    group really differs from the rest at the report's level ``alpha``); ``false``:
    the point estimate alone refuses.

Groups the report lists with ``n`` only (fewer users than its ``min_group_size``)
cannot be checked and are listed as such in the evidence. Status: ``fail`` naming
every refusing group with its gap, interval and ratio; ``pass`` with the worst
group's numbers; ``not_available`` when there is no report or it lacks the metric.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from recsys.evaluation.fairness import DEFAULT_BOOTSTRAP, group_metrics
from recsys.utils.errors import RecsysError

# the statuses of recsys.lifecycle.gates (not imported: gates.py imports this module to register the gate)
PASS, FAIL, NOT_AVAILABLE = "pass", "fail", "not_available"

_HOW = "train or evaluate the candidate with fairness.enabled=true"


def user_report(per_user: Mapping[str, np.ndarray], groupings: Mapping[str, np.ndarray], metrics: list[str], *,
                n_boot: int = DEFAULT_BOOTSTRAP, alpha: float = 0.05, seed: int = 0,
                min_group_size: int = 20) -> dict[str, Any]:
    """The user side of a fairness report: ``{"metrics", "alpha", "users": {attribute:
    group_metrics(...)}}`` from per-user values and one label array per attribute."""
    return {"metrics": list(metrics), "alpha": alpha, "n_bootstrap": n_boot,
            "interval": "percentile bootstrap over users (stratified by group)",
            "users": {name: group_metrics(per_user, labels, metrics, n_boot=n_boot, alpha=alpha, seed=seed,
                                          min_group_size=min_group_size)
                      for name, labels in groupings.items()}}


def candidate_report(cand: Any) -> tuple[dict[str, Any] | None, str]:
    """``(fairness report, where it came from)`` of a :class:`~recsys.lifecycle.gates.Candidate`,
    or ``(None, why not)``."""
    rep = cand.lineage.get("fairness")
    if isinstance(rep, dict):
        return rep, "the candidate's lineage"
    run_dir = cand.path if cand.kind == "run" else cand.lineage.get("run_dir")
    if not run_dir:
        return None, f"a {cand.kind} without a training run: no fairness report ({_HOW})"
    path = Path(str(run_dir)) / "summary.json"
    if not path.is_file():
        return None, f"{path} not found: no fairness report"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RecsysError(f"{path}: not readable JSON ({e})") from e
    rep = summary.get("fairness") if isinstance(summary, dict) else None
    if not isinstance(rep, dict):
        return None, f"{path} has no fairness section ({_HOW})"
    return rep, str(path)


def _limits(spec: Mapping[str, Any]) -> tuple[str, float, float | None, bool]:
    metric = str(spec.get("metric", "ndcg@10"))
    max_gap = float(spec.get("max_gap", 0.02))
    raw_ratio = spec.get("min_ratio")
    min_ratio = None if raw_ratio is None else float(raw_ratio)
    if not max_gap >= 0 or (min_ratio is not None and not 0 <= min_ratio <= 1):
        raise RecsysError(f"gate fairness_gaps: need max_gap >= 0 and 0 <= min_ratio <= 1, got {max_gap}, {min_ratio}")
    return metric, max_gap, min_ratio, bool(spec.get("require_significant", True))


def fairness_gaps(spec: Mapping[str, Any], cand: Any, ctx: Any) -> tuple[str, str, dict[str, Any]]:
    """Gate body (``cand``: a :class:`~recsys.lifecycle.gates.Candidate`, ``ctx``: its
    ``GateContext``, unused): see the module docstring."""
    metric, max_gap, min_ratio, significant = _limits(spec)
    report, source = candidate_report(cand)
    if report is None:
        return NOT_AVAILABLE, source, {"metric": metric}
    users = report.get("users") or {}
    wanted = spec.get("attributes")
    attrs = [str(a) for a in wanted] if wanted else sorted(users)
    missing = [a for a in attrs if a not in users]
    if missing or not attrs:
        return NOT_AVAILABLE, (f"fairness report ({source}) has no attribute {', '.join(missing) or '(none)'} "
                               f"(has: {', '.join(sorted(users)) or 'none'})"), {"metric": metric}
    rows: list[dict[str, Any]] = []
    unchecked: list[str] = []
    for attr in attrs:
        for group, entry in sorted(users[attr].get("groups", {}).items()):
            if metric not in entry:
                unchecked.append(f"{attr}={group} (n={entry.get('n')})")
                continue
            e = entry[metric]
            if "gap" not in e:
                unchecked.append(f"{attr}={group} (no rest to compare with)")
                continue
            lo, hi = (float(x) for x in e["gap_ci"])
            ratio = float(e.get("ratio", math.nan))
            breach_gap = e["gap"] < -max_gap
            breach_ratio = min_ratio is not None and math.isfinite(ratio) and ratio < min_ratio
            real = hi < 0  # the interval lies below 0: the group is worse than the rest
            rows.append({"attribute": attr, "group": str(group), "n": int(entry["n"]), "mean": float(e["mean"]),
                         "gap": float(e["gap"]), "gap_ci": [lo, hi], "ratio": ratio,
                         "breach_gap": bool(breach_gap), "breach_ratio": bool(breach_ratio),
                         "significant": bool(real),
                         "refuses": bool((breach_gap or breach_ratio) and (real or not significant))})
    if not rows:
        return NOT_AVAILABLE, (f"fairness report ({source}) has no group with {metric} to check "
                               f"(unchecked: {', '.join(unchecked) or 'none'})"), {"metric": metric}
    ev: dict[str, Any] = {"metric": metric, "source": source, "max_gap": max_gap, "min_ratio": min_ratio,
                          "require_significant": significant, "alpha": report.get("alpha"),
                          "interval": report.get("interval"), "groups": rows, "unchecked": unchecked}

    level = f"{100 * (1 - float(report.get('alpha') or 0.05)):g}%"

    def describe(r: dict[str, Any]) -> str:
        return (f"{r['attribute']}={r['group']} (n={r['n']}): {metric} gap {r['gap']:+.4g} to the rest, "
                f"{level} CI [{r['gap_ci'][0]:+.4g}, {r['gap_ci'][1]:+.4g}], ratio {r['ratio']:.3g}")

    limits = f"limits: gap >= {-max_gap:+g}" + (f", ratio >= {min_ratio:g}" if min_ratio is not None else "")
    bad = [r for r in rows if r["refuses"]]
    if bad:
        return FAIL, "; ".join(describe(r) for r in bad) + f" ({limits}" + \
            (", interval excluding 0)" if significant else ")"), ev
    worst = min(rows, key=lambda r: r["gap"])
    note = [r for r in rows if (r["breach_gap"] or r["breach_ratio"]) and not r["refuses"]]
    extra = f"; {len(note)} group(s) past a limit but not significant" if note else ""
    return PASS, f"{len(rows)} groups within limits; worst {describe(worst)} ({limits}{extra})", ev
