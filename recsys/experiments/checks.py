"""Simulation checks of the A/B statistics (calibration, power, CUPED, peeking).

Each check simulates many experiments at once (arrays of shape ``(sims, n)``, or
binomial counts for binary metrics) and runs them through the functions of
:mod:`recsys.evaluation.ab`. :func:`run_checks` with the defaults takes ~10-20 s
on one core.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
from scipy import stats

from recsys.evaluation import ab
from recsys.experiments.simulate import lognormal_metric


def _revenue(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 0.8) -> np.ndarray:
    return lognormal_metric(rng, rng.standard_normal(shape), 2.0, sigma, 0.0)


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - s) for s in range(0, total, size)]


def aa_check(n_sims: int = 2000, n_per_arm: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """False-positive rate of Welch's test (skewed revenue) and of the two-proportion
    z-test (CTR 5%) over ``n_sims`` A/A tests, with the binomial 99% interval."""
    rng = np.random.default_rng(seed)
    p_welch = []
    for k in _chunks(n_sims, 250):
        yc, yt = _revenue(rng, (k, n_per_arm)), _revenue(rng, (k, n_per_arm))
        p_welch.append(ab.welch_test(yc.mean(1), yc.var(1, ddof=1), n_per_arm, yt.mean(1), yt.var(1, ddof=1),
                                     n_per_arm, alpha)["p_value"])
    p_w = np.concatenate(p_welch)
    xc, xt = rng.binomial(n_per_arm * 10, 0.05, n_sims), rng.binomial(n_per_arm * 10, 0.05, n_sims)
    p_z = ab.two_proportion_ztest(xc, n_per_arm * 10, xt, n_per_arm * 10, alpha)["p_value"]
    lo, hi = stats.binom.interval(0.99, n_sims, alpha)
    interval = [lo / n_sims, hi / n_sims]
    fpr, fpr_z = float((p_w < alpha).mean()), float((p_z < alpha).mean())
    return {"aa_false_positive_rate": fpr, "aa_false_positive_rate_ztest": fpr_z, "aa_interval": interval,
            "aa_n_sims": n_sims, "aa_n_per_arm": n_per_arm,
            "aa_within_interval": bool(interval[0] <= fpr <= interval[1]),
            "aa_ztest_within_interval": bool(interval[0] <= fpr_z <= interval[1])}


def power_check(baseline_rate: float = 0.1, mde_relative: float = 0.1, alpha: float = 0.05,
                target_power: float = 0.8, n_sims: int = 1000, seed: int = 1) -> dict[str, Any]:
    """Plan n for a binary metric, then measure power over ``n_sims`` A/B tests with
    exactly that true lift (z-test on binomial counts: a user-level Bernoulli
    metric has exactly binomial arm totals). Repeats it for a continuous metric
    (Welch, unit-variance normal, effect 0.1 sd) with raw rows."""
    rng = np.random.default_rng(seed)
    n = ab.sample_size(mde_relative, baseline_rate=baseline_rate, relative=True, alpha=alpha,
                       power_target=target_power)
    p2 = baseline_rate * (1 + mde_relative)
    planned = float(ab.power(n, p2 - baseline_rate, baseline_rate=baseline_rate, alpha=alpha))
    xc, xt = rng.binomial(n, baseline_rate, n_sims), rng.binomial(n, p2, n_sims)
    measured = float((ab.two_proportion_ztest(xc, n, xt, n, alpha)["p_value"] < alpha).mean())
    n_cont = ab.sample_size(0.1, std=1.0, alpha=alpha, power_target=target_power)
    hits = []
    for k in _chunks(min(n_sims, 500), 100):
        yc, yt = rng.standard_normal((k, n_cont)), rng.standard_normal((k, n_cont)) + 0.1
        hits.append(ab.welch_test(yc.mean(1), yc.var(1, ddof=1), n_cont, yt.mean(1), yt.var(1, ddof=1),
                                  n_cont, alpha)["p_value"] < alpha)
    measured_c = float(np.concatenate(hits).mean())
    return {"planned_n_per_arm": n, "planned_power": planned, "measured_power": measured,
            "power_n_sims": n_sims, "power_baseline_rate": baseline_rate, "power_mde_relative": mde_relative,
            "planned_n_per_arm_continuous": n_cont, "measured_power_continuous": measured_c,
            "power_within_5_points": bool(abs(measured - planned) <= 0.05 and abs(measured_c - planned) <= 0.05)}


def cuped_check(n_sims: int = 500, n_per_arm: int = 2000, correlation: float = 0.7, lift: float = 0.05,
                seed: int = 2) -> dict[str, Any]:
    """Bias and variance of the raw and CUPED difference in means (lognormal revenue
    with a pre-period copy, latent correlation ``correlation``)."""
    rng = np.random.default_rng(seed)
    raw, adj, reduction = np.empty(n_sims), np.empty(n_sims), np.empty(n_sims)
    arm = np.repeat([0, 1], n_per_arm)
    for s in range(n_sims):
        latent = rng.standard_normal(2 * n_per_arm)
        x = lognormal_metric(rng, latent, 2.0, 0.8, correlation)
        y = lognormal_metric(rng, latent, 2.0, 0.8, correlation) * np.where(arm == 1, 1 + lift, 1.0)
        y_adj = ab.cuped_adjust(y, x, ab.cuped_theta(y, x, arm))
        raw[s] = y[arm == 1].mean() - y[arm == 0].mean()
        adj[s] = y_adj[arm == 1].mean() - y_adj[arm == 0].mean()
        within = (y[arm == 0].var(ddof=1) + y[arm == 1].var(ddof=1))
        reduction[s] = 1 - (y_adj[arm == 0].var(ddof=1) + y_adj[arm == 1].var(ddof=1)) / within
    true = 2.0 * lift
    return {"cuped_variance_reduction": float(reduction.mean()),
            "cuped_variance_reduction_across_sims": float(1 - adj.var(ddof=1) / raw.var(ddof=1)),
            "cuped_bias": float(adj.mean() - true), "raw_bias": float(raw.mean() - true),
            "cuped_bias_se": float(adj.std(ddof=1) / np.sqrt(n_sims)), "cuped_true_diff": true,
            "cuped_n_sims": n_sims, "cuped_correlation": correlation}


def sequential_check(n_sims: int = 1000, n_max: int = 5000, look_every: int = 100, alpha: float = 0.05,
                     tau: float = 0.1, seed: int = 3) -> dict[str, Any]:
    """A/A tests peeked at every ``look_every`` users per arm up to ``n_max``: the
    share ever rejected by the mSPRT vs by a naive Welch test at each look."""
    rng = np.random.default_rng(seed)
    looks = np.arange(look_every, n_max + 1, look_every)
    seq_hits, naive_hits = [], []
    for k in _chunks(n_sims, 100):
        yc, yt = _revenue(rng, (k, n_max)), _revenue(rng, (k, n_max))
        mc, vc = ab.cumulative_stats(yc, looks)
        mt, vt = ab.cumulative_stats(yt, looks)
        sd = np.sqrt((vc[:, -1:] + vt[:, -1:]) / 2)  # scale of tau: the metric's sd
        seq = ab.msprt((mt - mc) / sd, (vc + vt) / looks / sd ** 2, tau, alpha)
        naive = ab.welch_test(mc, vc, looks, mt, vt, looks, alpha)["p_value"]
        seq_hits.append(seq["reject"].any(axis=1))
        naive_hits.append((naive < alpha).any(axis=1))
    return {"sequential_fpr": float(np.concatenate(seq_hits).mean()),
            "naive_peeking_fpr": float(np.concatenate(naive_hits).mean()),
            "sequential_method": "mSPRT, normal mixture N(0, tau^2) on the standardised difference",
            "sequential_tau_sd": tau, "sequential_n_looks": len(looks), "sequential_n_sims": n_sims,
            "sequential_n_max_per_arm": n_max}


def run_checks(scale: float = 1.0, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """All four checks; ``scale`` < 1 shrinks the simulation counts (tests)."""
    def k(n: int) -> int:
        return max(int(n * scale), 20)

    out: dict[str, Any] = {}
    timings = {}
    for name, fn in (("aa", lambda: aa_check(k(2000), alpha=alpha, seed=seed)),
                     ("power", lambda: power_check(alpha=alpha, n_sims=k(1000), seed=seed + 1)),
                     ("cuped", lambda: cuped_check(k(500), seed=seed + 2)),
                     ("sequential", lambda: sequential_check(k(1000), alpha=alpha, seed=seed + 3))):
        t0 = time.perf_counter()
        out.update(fn())
        timings[f"{name}_s"] = time.perf_counter() - t0
    out["sequential_fpr_below_alpha"] = bool(out["sequential_fpr"] <= alpha)
    out["naive_peeking_fpr_above_alpha"] = bool(out["naive_peeking_fpr"] > alpha)
    out["timings"] = timings
    return out
