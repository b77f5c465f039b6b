"""Analyse one experiment: SRM, per-metric tests, CUPED, power, sequential curves.

:func:`analyze` turns validated :class:`~recsys.experiments.exposures.ExperimentData`
into a JSON-ready dict; the statistics themselves live in
:mod:`recsys.evaluation.ab`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from recsys.evaluation import ab
from recsys.experiments.assignment import ExperimentDesign, assign
from recsys.experiments.exposures import ExperimentData


@dataclass(frozen=True)
class AnalysisOptions:
    """Args:
        alpha: family-wise level; split over treatment arms by Bonferroni when
            ``correction == "bonferroni"``.
        power: target power for the reported minimum detectable effect.
        srm_alpha: SRM flag threshold.
        tau: mSPRT mixing scale in units of the metric's pooled standard deviation.
        n_looks: number of sequential looks (equal steps in exposure time).
        check_assignment: recompute every user's arm from the salt and count
            mismatches with the logged arm.
    """

    alpha: float = 0.05
    power: float = 0.8
    correction: str = "bonferroni"
    srm_alpha: float = ab.SRM_ALPHA
    tau: float = 0.1
    n_looks: int = 20
    check_assignment: bool = True


def _arm_stats(y: np.ndarray, alpha: float) -> dict[str, float]:
    mean, var, n = ab.summarize(y)
    half = float(stats.norm.ppf(1 - alpha / 2) * np.sqrt(var / n))
    return {"n": n, "mean": mean, "std": float(np.sqrt(var)), "ci_low": mean - half, "ci_high": mean + half}


def _compare(yc: np.ndarray, yt: np.ndarray, binary: bool, alpha: float) -> dict[str, Any]:
    (mc, vc, nc), (mt, vt, nt) = ab.summarize(yc), ab.summarize(yt)
    out: dict[str, Any] = {"welch": ab.as_floats(ab.welch_test(mc, vc, nc, mt, vt, nt, alpha)),
                           "lift": ab.as_floats(ab.relative_lift(mc, vc, nc, mt, vt, nt, alpha))}
    if binary:
        out["ztest"] = ab.as_floats(ab.two_proportion_ztest(yc.sum(), nc, yt.sum(), nt, alpha))
    out["test"] = "ztest" if binary else "welch"
    out["p_value"] = out[out["test"]]["p_value"]
    return out


def _sequential(y: np.ndarray, is_t: np.ndarray, is_c: np.ndarray, ts: np.ndarray, tau: float, alpha: float,
                n_looks: int) -> dict[str, list[float]]:
    """mSPRT p-value and confidence sequence at ``n_looks`` exposure times."""
    order = np.argsort(ts, kind="stable")
    y, is_t, is_c, ts = y[order], is_t[order], is_c[order], ts[order]
    times = np.quantile(ts, np.linspace(0, 1, n_looks + 1)[1:])
    cut = np.searchsorted(ts, times, side="right")
    n_t, n_c = np.cumsum(is_t)[cut - 1], np.cumsum(is_c)[cut - 1]
    ok = (n_t >= 2) & (n_c >= 2)
    times, n_t, n_c, cut = times[ok], n_t[ok], n_c[ok], cut[ok]
    mt, vt = ab.cumulative_stats(y[is_t], n_t)
    mc, vc = ab.cumulative_stats(y[is_c], n_c)
    seq = ab.msprt(mt - mc, vt / n_t + vc / n_c, tau, alpha)
    naive = ab.welch_test(mc, vc, n_c, mt, vt, n_t, alpha)
    return {"time": times.tolist(), "n_control": n_c.tolist(), "n_treatment": n_t.tolist(),
            "diff": (mt - mc).tolist(), "p_value": seq["p_value"].tolist(),
            "ci_low": seq["ci_low"].tolist(), "ci_high": seq["ci_high"].tolist(),
            "naive_p_value": naive["p_value"].tolist()}


def analyze(data: ExperimentData, design: ExperimentDesign, opts: AnalysisOptions = AnalysisOptions()) -> dict:
    """Full analysis of every metric and every treatment arm against the control.

    Returns ``{"n_users", "arms", "srm", "assignment", "alpha_per_comparison",
    "metrics": {metric: {"type", "covariate", "arms": {arm: stats},
    "comparisons": {arm: {...}}}}, "results": {flat "metric/arm/key": float}}``.
    """
    arms = list(design.arms)
    control = design.control_arm
    treatments = [a for a in arms if a != control]
    alpha = ab.bonferroni(opts.alpha, len(treatments)) if opts.correction == "bonferroni" else opts.alpha
    counts = [int((data.arm == a).sum()) for a in arms]
    srm = ab.srm_test(counts, list(design.shares.values()), opts.srm_alpha)
    out: dict[str, Any] = {"n_users": data.n, "arms": dict(zip(arms, counts)), "control": control, "srm": srm,
                           "alpha": opts.alpha, "alpha_per_comparison": alpha, "correction": opts.correction,
                           "power": opts.power}
    flat: dict[str, float] = {"srm/p_value": srm["p_value"], "srm/flagged": float(srm["flagged"])}
    if opts.check_assignment:
        expected = assign(data.user_id, design)
        mism = expected != data.arm
        out["assignment"] = {"checked": True, "mismatches": int(mism.sum()), "mismatch_rate": float(mism.mean())}
        flat["assignment/mismatch_rate"] = float(mism.mean())
    metrics: dict[str, Any] = {}
    is_c = data.arm == control
    for name, y in data.metrics.items():
        binary = data.metric_types[name] == "binary"
        x = data.covariates.get(name)
        entry: dict[str, Any] = {"type": data.metric_types[name], "covariate": x is not None,
                                 "arms": {a: _arm_stats(y[data.arm == a], alpha) for a in arms}, "comparisons": {}}
        if x is not None:
            theta = ab.cuped_theta(y, x, data.arm)
            y_adj = ab.cuped_adjust(y, x, theta)
            within = float(np.mean([y[data.arm == a].var(ddof=1) for a in arms]))
            within_adj = float(np.mean([y_adj[data.arm == a].var(ddof=1) for a in arms]))
            entry["cuped"] = {"theta": theta, "variance_reduction": 1.0 - within_adj / within if within > 0 else 0.0}
            flat[f"{name}/cuped_variance_reduction"] = entry["cuped"]["variance_reduction"]
        for t in treatments:
            is_t = data.arm == t
            comp = _compare(y[is_c], y[is_t], binary, alpha)
            if x is not None:
                adj = _compare(y_adj[is_c], y_adj[is_t], False, alpha)
                comp["cuped"] = {"welch": adj["welch"], "lift": adj["lift"], "p_value": adj["p_value"]}
            _, var_c, n_c = ab.summarize(y[is_c])
            pooled_sd = float(np.sqrt((var_c + y[is_t].var(ddof=1)) / 2))
            base = float(y[is_c].mean())
            vr = entry["cuped"]["variance_reduction"] if x is not None else 0.0
            n_min = min(n_c, int(is_t.sum()))
            mde_abs = (ab.mde(n_min, baseline_rate=base, alpha=alpha, power_target=opts.power)
                       if binary and 0 < base < 1 else
                       ab.mde(n_min, std=max(pooled_sd, 1e-12), alpha=alpha, power_target=opts.power,
                              variance_reduction=max(vr, 0.0)))
            comp["mde"] = {"absolute": mde_abs, "relative": mde_abs / abs(base) if base else float("nan"),
                           "power": opts.power, "n_per_arm": n_min}
            final = ab.msprt(comp["welch"]["diff"], comp["welch"]["se"] ** 2, opts.tau * pooled_sd, alpha)
            comp["sequential"] = {"method": "mSPRT, normal mixture", "tau": opts.tau * pooled_sd,
                                  "p_value_final_look": float(final["p_value"]),
                                  "ci_low": float(final["ci_low"]), "ci_high": float(final["ci_high"])}
            if data.timestamp is not None:
                comp["sequential"]["curve"] = _sequential(y, is_t, is_c, data.timestamp, opts.tau * pooled_sd,
                                                          alpha, opts.n_looks)
                comp["sequential"]["p_value"] = comp["sequential"]["curve"]["p_value"][-1]
            decide = comp["cuped"]["p_value"] if x is not None else comp["p_value"]
            comp["significant"] = bool(decide < alpha)
            entry["comparisons"][t] = comp
            key = f"{name}/{t}"
            flat.update({f"{key}/diff": comp["welch"]["diff"], f"{key}/lift": comp["lift"]["lift"],
                         f"{key}/lift_ci_low": comp["lift"]["ci_low"], f"{key}/lift_ci_high": comp["lift"]["ci_high"],
                         f"{key}/p_value": comp["p_value"], f"{key}/mde_relative": comp["mde"]["relative"],
                         f"{key}/sequential_p_value": comp["sequential"].get(
                             "p_value", comp["sequential"]["p_value_final_look"]),
                         f"{key}/significant": float(comp["significant"])})
            if x is not None:
                flat.update({f"{key}/cuped_lift": comp["cuped"]["lift"]["lift"],
                             f"{key}/cuped_p_value": comp["cuped"]["p_value"]})
        metrics[name] = entry
    out["metrics"] = metrics
    out["results"] = flat
    return out
