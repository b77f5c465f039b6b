"""A/B-test statistics on arrays (numpy + scipy only).

Every test takes per-arm *summary statistics* (mean, variance with ``ddof=1``,
count) rather than raw rows, so the same function analyses one experiment or, with
broadcast arrays, thousands of simulated ones at once. Conventions: arm 1 is the
control ``c``, arm 2 the treatment ``t``; ``diff = mean_t - mean_c``; tests are
two-sided; ``alpha`` is the family-wise level of one comparison.

* :func:`srm_test` -- sample-ratio mismatch, chi-square against planned shares.
* :func:`welch_test` -- difference in means, Welch's t (unequal variances).
* :func:`two_proportion_ztest` -- binary metrics: pooled-variance z statistic,
  unpooled (Wald) interval for the difference.
* :func:`relative_lift` -- ``mean_t / mean_c - 1`` with a delta-method interval.
* :func:`cuped_theta`, :func:`cuped_adjust` -- CUPED (Deng et al. 2013) with one
  pre-period covariate, ``theta = cov(y, x) / var(x)`` pooled within arms.
* :func:`sample_size`, :func:`power`, :func:`mde` -- planning (normal approximation).
* :func:`msprt` -- always-valid inference for teams that peek: the mixture
  sequential probability ratio test with a normal mixture ``N(0, tau^2)`` on the
  difference (Johari, Koomen, Pekelis & Walsh 2017, "Always valid inference"),
  with plug-in variances, and its dual confidence sequence (the Gaussian-mixture
  boundary of Robbins 1970 / Howard et al. 2021).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy import optimize, stats

SRM_ALPHA = 0.001


def _arr(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def summarize(y: np.ndarray) -> tuple[float, float, int]:
    """``(mean, variance ddof=1, n)`` of a 1-d array (variance 0 when n < 2)."""
    y = _arr(y).ravel()
    n = len(y)
    if n == 0:
        return float("nan"), float("nan"), 0
    return float(y.mean()), float(y.var(ddof=1)) if n > 1 else 0.0, n


# -- sample-ratio mismatch -------------------------------------------------------------

def srm_test(counts: Sequence[int], shares: Sequence[float], alpha: float = SRM_ALPHA) -> dict[str, Any]:
    """Chi-square goodness of fit of observed arm counts against planned shares.

    A tiny p-value means assignment or logging is broken: the effect estimates
    cannot be trusted. Flags at ``p < alpha`` (default 0.001, a common industry
    threshold that keeps false alarms rare across many experiments).
    """
    obs = _arr(counts)
    p = _arr(shares)
    p = p / p.sum()
    expected = obs.sum() * p
    chi2, pval = stats.chisquare(obs, expected)
    return {"chi2": float(chi2), "p_value": float(pval), "df": len(obs) - 1, "alpha": alpha,
            "flagged": bool(pval < alpha), "observed": obs.astype(int).tolist(),
            "expected": expected.tolist(), "observed_share": (obs / max(obs.sum(), 1)).tolist()}


# -- difference in means ---------------------------------------------------------------

def welch_test(mean_c: Any, var_c: Any, n_c: Any, mean_t: Any, var_t: Any, n_t: Any,
               alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Welch's unequal-variance t-test for ``mean_t - mean_c`` (broadcasts).

    Returns ``diff, se, t, df, p_value, ci_low, ci_high`` (``1 - alpha`` interval).
    """
    mc, vc, nc, mt, vt, nt = map(_arr, (mean_c, var_c, n_c, mean_t, var_t, n_t))
    a, b = vc / nc, vt / nt
    se = np.sqrt(a + b)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (a + b) ** 2 / (a ** 2 / (nc - 1) + b ** 2 / (nt - 1))
        t = (mt - mc) / se
    p = 2.0 * stats.t.sf(np.abs(t), df)
    half = stats.t.ppf(1.0 - alpha / 2.0, df) * se
    diff = mt - mc
    return {"diff": diff, "se": se, "t": t, "df": df, "p_value": p,
            "ci_low": diff - half, "ci_high": diff + half}


def two_proportion_ztest(x_c: Any, n_c: Any, x_t: Any, n_t: Any, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Two-proportion z-test for binary metrics (``x`` = successes, ``n`` = trials).

    The statistic uses the pooled proportion (the variance under H0, equivalent
    to the 2x2 chi-square test without continuity correction); the interval for
    ``p_t - p_c`` uses the unpooled (Wald) standard error.
    """
    xc, nc, xt, nt = map(_arr, (x_c, n_c, x_t, n_t))
    pc, pt = xc / nc, xt / nt
    pool = (xc + xt) / (nc + nt)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (pt - pc) / np.sqrt(pool * (1 - pool) * (1 / nc + 1 / nt))
    z = np.where(np.isfinite(z), z, 0.0)
    se = np.sqrt(pc * (1 - pc) / nc + pt * (1 - pt) / nt)
    half = stats.norm.ppf(1 - alpha / 2) * se
    diff = pt - pc
    return {"diff": diff, "se": se, "z": z, "p_value": 2.0 * stats.norm.sf(np.abs(z)),
            "ci_low": diff - half, "ci_high": diff + half}


def relative_lift(mean_c: Any, var_c: Any, n_c: Any, mean_t: Any, var_t: Any, n_t: Any,
                  alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Relative lift ``mean_t / mean_c - 1`` with a delta-method normal interval.

    ``Var(mt/mc) ~= var_t/(n_t mc^2) + mt^2 var_c/(n_c mc^4)`` (independent arms).
    """
    mc, vc, nc, mt, vt, nt = map(_arr, (mean_c, var_c, n_c, mean_t, var_t, n_t))
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = mt / mc - 1.0
        se = np.sqrt(vt / (nt * mc ** 2) + mt ** 2 * vc / (nc * mc ** 4))
    half = stats.norm.ppf(1 - alpha / 2) * se
    return {"lift": lift, "se": se, "ci_low": lift - half, "ci_high": lift + half}


# -- CUPED --------------------------------------------------------------------------------

def cuped_theta(y: np.ndarray, x: np.ndarray, groups: np.ndarray | None = None) -> float:
    """``theta = cov(y, x) / var(x)``, pooled within groups (arms).

    Centring within each arm keeps the treatment effect on ``y`` out of the
    covariance; ``x`` is measured before exposure, so its arm means differ only by
    chance and the adjusted difference stays unbiased.
    """
    y, x = _arr(y).ravel(), _arr(x).ravel()
    g = np.zeros(len(y), dtype=np.int64) if groups is None else np.unique(groups, return_inverse=True)[1]
    k = int(g.max()) + 1 if len(g) else 1
    cnt = np.bincount(g, minlength=k).astype(np.float64)
    xc = x - (np.bincount(g, x, k) / np.maximum(cnt, 1))[g]
    yc = y - (np.bincount(g, y, k) / np.maximum(cnt, 1))[g]
    sxx = float(xc @ xc)
    return float(xc @ yc) / sxx if sxx > 0 else 0.0


def cuped_adjust(y: np.ndarray, x: np.ndarray, theta: float, x_mean: float | None = None) -> np.ndarray:
    """``y - theta * (x - mean(x))``: same expectation, variance ``(1 - rho^2) var(y)``."""
    x = _arr(x)
    return _arr(y) - theta * (x - (x.mean() if x_mean is None else x_mean))


# -- planning -----------------------------------------------------------------------------

def _z(alpha: float, two_sided: bool) -> float:
    return float(stats.norm.ppf(1 - alpha / 2 if two_sided else 1 - alpha))


def _effect(baseline: float, mde_value: float, relative: bool) -> float:
    return abs(baseline * mde_value if relative else mde_value)


def sample_size(mde_value: float, *, baseline_rate: float | None = None, std: float | None = None,
                baseline_mean: float | None = None, relative: bool = False, alpha: float = 0.05,
                power_target: float = 0.8, two_sided: bool = True, variance_reduction: float = 0.0) -> int:
    """Units per arm to detect an effect of ``mde_value`` (equal allocation).

    Binary metric (``baseline_rate`` = p1, ``p2 = p1 + delta``):
    ``n = [z_a sqrt(2 pbar qbar) + z_b sqrt(p1 q1 + p2 q2)]^2 / delta^2``
    (the variance under H0 is pooled, as in :func:`two_proportion_ztest`).
    Continuous metric (``std``; ``baseline_mean`` for a relative MDE):
    ``n = (z_a + z_b)^2 * 2 std^2 (1 - variance_reduction) / delta^2``.
    ``relative=True`` reads ``mde_value`` as a fraction of the baseline.
    Example: ``sample_size(0.01, baseline_rate=0.1)`` -> 14749.
    """
    za, zb = _z(alpha, two_sided), float(stats.norm.ppf(power_target))
    keep = 1.0 - variance_reduction
    if baseline_rate is not None:
        p1 = float(baseline_rate)
        delta = _effect(p1, mde_value, relative)
        p2 = p1 + delta
        if not (0 < p1 < 1 and 0 < p2 < 1):
            raise ValueError(f"rates must lie in (0, 1): baseline {p1}, with effect {p2}")
        pbar = (p1 + p2) / 2
        n = (za * np.sqrt(2 * pbar * (1 - pbar) * keep) + zb * np.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) * keep)) ** 2
        return int(np.ceil(n / delta ** 2))
    if std is None:
        raise ValueError("give baseline_rate (binary metric) or std (continuous metric)")
    base = 1.0
    if relative:
        if baseline_mean is None:
            raise ValueError("a relative MDE on a continuous metric needs baseline_mean")
        base = baseline_mean
    delta = _effect(base, mde_value, relative)
    return int(np.ceil((za + zb) ** 2 * 2 * std ** 2 * keep / delta ** 2))


def power(n_per_arm: Any, effect: float, *, baseline_rate: float | None = None, std: float | None = None,
          alpha: float = 0.05, two_sided: bool = True, variance_reduction: float = 0.0) -> np.ndarray:
    """Power of the two-sided test for an absolute ``effect`` at ``n_per_arm`` (broadcasts)."""
    n = _arr(n_per_arm)
    za = _z(alpha, two_sided)
    keep = 1.0 - variance_reduction
    d = abs(effect)
    if baseline_rate is not None:
        p1, p2 = baseline_rate, baseline_rate + effect
        pbar = (p1 + p2) / 2
        s0 = np.sqrt(2 * pbar * (1 - pbar) * keep / n)
        s1 = np.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) * keep / n)
    elif std is not None:
        s0 = s1 = np.sqrt(2 * std ** 2 * keep / n)
    else:
        raise ValueError("give baseline_rate (binary metric) or std (continuous metric)")
    out = stats.norm.cdf((d - za * s0) / s1)
    return out + (stats.norm.cdf((-d - za * s0) / s1) if two_sided else 0.0)


def mde(n_per_arm: float, *, baseline_rate: float | None = None, std: float | None = None,
        alpha: float = 0.05, power_target: float = 0.8, two_sided: bool = True,
        variance_reduction: float = 0.0) -> float:
    """Smallest absolute (positive) effect detectable with ``power_target`` at ``n_per_arm``."""
    def gap(d: float) -> float:
        return float(power(n_per_arm, d, baseline_rate=baseline_rate, std=std, alpha=alpha,
                           two_sided=two_sided, variance_reduction=variance_reduction)) - power_target
    if baseline_rate is not None:
        hi = (1 - baseline_rate) * (1 - 1e-9)
    elif std is not None:
        hi = 100.0 * float(std)
    else:
        raise ValueError("give baseline_rate (binary metric) or std (continuous metric)")
    if gap(hi) < 0:
        return float("nan")
    return float(optimize.brentq(gap, 1e-12, hi, xtol=1e-12))


# -- sequential (always valid) ------------------------------------------------------------

def msprt(diff: Any, var_diff: Any, tau: float, alpha: float = 0.05, axis: int = -1) -> dict[str, np.ndarray]:
    """Normal-mixture mSPRT and confidence sequence along ``axis`` (the looks).

    At look ``n`` with estimate ``diff`` and its variance ``V`` (plug-in
    ``s_c^2/n_c + s_t^2/n_t``), the mixture likelihood ratio against H0: diff = 0
    with mixing prior ``N(0, tau^2)`` is
    ``L = sqrt(V / (V + tau^2)) exp(tau^2 diff^2 / (2 V (V + tau^2)))``.
    The always-valid p-value is the running minimum of ``min(1, 1/L)``; rejecting
    when it falls below ``alpha`` keeps the type-I error <= alpha however often one
    looks. The dual confidence sequence ``diff +- sqrt(V (V + tau^2) / tau^2 *
    (log((V + tau^2) / V) + 2 log(1 / alpha)))`` is intersected over time.
    ``tau`` should be on the scale of plausible effects (e.g. the MDE).

    Returns ``p_value``, ``log_lr``, ``ci_low``, ``ci_high`` (running), ``reject``.
    """
    d, v = np.broadcast_arrays(_arr(diff), _arr(var_diff))
    if d.ndim == 0:  # a single look
        return {k: val[0] for k, val in msprt(d[None], v[None], tau, alpha).items()}
    t2 = float(tau) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = 0.5 * np.log(v / (v + t2)) + t2 * d ** 2 / (2 * v * (v + t2))
        half = np.sqrt(v * (v + t2) / t2 * (np.log((v + t2) / v) + 2 * np.log(1 / alpha)))
    log_lr = np.where(np.isfinite(log_lr), log_lr, 0.0)
    half = np.where(np.isfinite(half), half, np.inf)
    p = np.minimum.accumulate(np.minimum(1.0, np.exp(-log_lr)), axis=axis)
    lo = np.maximum.accumulate(d - half, axis=axis)
    hi = np.minimum.accumulate(d + half, axis=axis)
    return {"p_value": p, "log_lr": log_lr, "ci_low": lo, "ci_high": hi, "reject": p <= alpha}


def cumulative_stats(y: np.ndarray, looks: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (ddof=1) of ``y[..., :k]`` for every ``k`` in ``looks``."""
    y = np.moveaxis(_arr(y), axis, -1)
    k = np.asarray(looks, dtype=np.int64)
    s1 = np.cumsum(y, axis=-1)[..., k - 1]
    s2 = np.cumsum(y * y, axis=-1)[..., k - 1]
    mean = s1 / k
    var = np.maximum(s2 - k * mean ** 2, 0.0) / np.maximum(k - 1, 1)
    return mean, var


def bonferroni(alpha: float, n_comparisons: int) -> float:
    """Per-comparison level that keeps the family-wise error at ``alpha``."""
    return alpha / max(int(n_comparisons), 1)


def as_floats(d: Mapping[str, Any]) -> dict[str, Any]:
    """0-d arrays -> Python floats (for JSON)."""
    return {k: (float(v) if np.ndim(v) == 0 and not isinstance(v, (bool, np.bool_)) else v)
            for k, v in d.items()}


def plan_sample_size(*, baseline_rate: float | None, std: float | None, baseline_mean: float | None, mde: float,
                     relative: bool, alpha: float, power: float, two_sided: bool, arms: int, correction: str | None,
                     variance_reduction: float, daily_users: float | None, traffic: float) -> dict:
    """Sample size per arm of a planned A/B test (binary metric with ``baseline_rate``,
    continuous with ``std``), with Bonferroni over ``arms - 1`` comparisons when asked,
    and the days it takes at ``daily_users * traffic``. ValueError on bad input."""
    binary = baseline_rate is not None
    if not binary and std is None:
        raise ValueError("give baseline_rate=<p> (binary metric) or std=<sd> [baseline_mean=<m>] (continuous)")
    if arms < 2:
        raise ValueError(f"arms must be >= 2, got {arms}")
    alpha_c = bonferroni(alpha, arms - 1) if correction == "bonferroni" else alpha
    kw = {"baseline_rate": baseline_rate} if binary else {"std": std, "baseline_mean": baseline_mean}
    n = sample_size(mde, relative=relative, alpha=alpha_c, power_target=power, two_sided=two_sided,
                    variance_reduction=variance_reduction, **kw)
    base = baseline_rate if binary else baseline_mean
    mde_absolute = mde
    if relative:
        assert base is not None  # sample_size refuses a relative MDE without a baseline
        mde_absolute = mde * base
    out = {"metric": "binary" if binary else "continuous", "baseline": base, "mde": mde,
           "mde_kind": "relative" if relative else "absolute", "mde_absolute": mde_absolute,
           "alpha": alpha, "alpha_per_comparison": alpha_c, "power": power, "two_sided": two_sided,
           "arms": arms, "variance_reduction": variance_reduction, "n_per_arm": n, "n_total": n * arms}
    if daily_users:
        out["days"] = float(n * arms / (daily_users * traffic))
    return out
