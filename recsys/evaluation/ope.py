"""Off-policy estimators for slate policies, on numpy arrays.

Setting: ``R`` logged requests, each a slate of ``K`` positions. At request ``i``
position ``k`` the logger showed action ``a[i, k]`` with propensity
``p[i, k] = mu_k(a[i, k] | x_i)`` and observed reward ``r[i, k]``. An evaluation
policy ``pi`` gives per-position distributions ``pi_k(. | x)``.

**Independent-position assumption** (item-position model): the reward at a
position depends only on the context, the action at that position and the
position; then the value of a slate policy is the sum over positions of
per-position values, ``V(pi) = sum_k E_x sum_a pi_k(a|x) q(x, a, k)``, and every
estimator below is applied per position and summed. (The synthetic world's
examination model satisfies it exactly.)

Inputs are an :class:`OPEData` of ``(R, K)`` arrays, built from full policy
distributions block by block with :func:`policy_terms`. With
``w = pi_k(a|x) / p`` (clipped at ``clip`` when given) and a reward model ``q``::

    DM     mean_i sum_k qhat_pi[i, k]                      (qhat_pi = sum_a pi_k(a|x_i) q(x_i, a, k))
    IPS    mean_i sum_k w r
    SNIPS  sum_k  sum_i w r / sum_i w
    DR     mean_i sum_k [qhat_pi + w (r - q_logged)]
    SNDR   sum_k [mean_i qhat_pi + sum_i w (r - q_logged) / sum_i w]
    SwitchDR(tau)  mean_i sum_k [qhat_pi + 1{w_raw <= tau} w (r - q_logged)]
                   (DR where the weight is at most tau, DM elsewhere: tau=inf -> DR, tau<min w -> DM)

Confidence intervals: percentile bootstrap over requests (whole slates are
resampled, never single rows). :func:`bootstrap` keeps the reward model fixed
(its intervals for DM/DR leave out the model's own estimation error);
:meth:`recsys.evaluation.ope_reward.CrossFit.refit_bootstrap` refits it on every
resample (what ``recsys ope`` uses). :func:`clip_to_range` clips estimates of a
bounded reward to ``[K low, K high]`` and flags the ones it changed.
Diagnostics: effective sample size ``(sum w)^2 / sum w^2`` per position, max and
mean weight, and the share of evaluation-policy mass on actions without logging
support (a warning is raised in :attr:`Diagnostics.warnings` when it is poor).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ESTIMATORS = ("DM", "IPS", "SNIPS", "DR", "SNDR", "SwitchDR")


@dataclass
class OPEData:
    """Per-request, per-position terms; every array is ``(R, K)`` float64.

    Attributes:
        rewards: observed reward of the logged action.
        propensities: logging probability of the logged action at that position (in (0, 1]).
        target_probs: evaluation-policy probability of the logged action at that position.
        q_logged: reward-model prediction for the logged action (zeros: no model).
        q_target: ``sum_a pi_k(a|x) q(x, a, k)``, the reward model's value of the policy.
        unsupported: evaluation-policy mass on actions without logging support.
    """

    rewards: np.ndarray
    propensities: np.ndarray
    target_probs: np.ndarray
    q_logged: np.ndarray | None = None
    q_target: np.ndarray | None = None
    unsupported: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = np.shape(self.rewards)
        if len(shape) != 2:
            raise ValueError(f"rewards must be (R, K), got {shape}")
        for name in ("rewards", "propensities", "target_probs", "q_logged", "q_target", "unsupported"):
            v = getattr(self, name)
            if v is None:
                v = np.zeros(shape)
            v = np.asarray(v, dtype=np.float64)
            if v.shape != shape:
                raise ValueError(f"{name} has shape {v.shape}, expected {shape}")
            setattr(self, name, v)
        if not (self.propensities > 0).all():
            raise ValueError("propensities must be > 0")

    @property
    def n_requests(self) -> int:
        return self.rewards.shape[0]

    def take(self, rows: np.ndarray) -> "OPEData":
        return OPEData(*(getattr(self, n)[rows] for n in
                         ("rewards", "propensities", "target_probs", "q_logged", "q_target", "unsupported")))


@dataclass
class Estimate:
    """One estimator's value (expected reward per slate) with a bootstrap interval."""

    name: str
    value: float
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    per_position: np.ndarray = field(default_factory=lambda: np.zeros(0))
    clipped: bool = False  # value or interval clipped to the reward range

    def covers(self, truth: float) -> bool:
        return bool(self.ci_low <= truth <= self.ci_high)


@dataclass
class Diagnostics:
    """Weight and support diagnostics (weights after clipping)."""

    n_requests: int
    slate_size: int
    ess: float  # effective sample size, mean over positions, in requests
    ess_per_position: list[float]
    max_weight: float
    mean_weight: float  # should be close to 1 when the policy is supported
    unsupported_mass: float  # mean share of pi's mass on actions without logging support
    clipped_share: float  # share of (request, position) weights that were clipped
    warnings: list[str] = field(default_factory=list)


@dataclass
class OPEResult:
    estimates: dict[str, Estimate]
    diagnostics: Diagnostics


# ----------------------------------------------------------------------------- terms


def policy_terms(policy_probs: np.ndarray, actions: np.ndarray, q_all: np.ndarray | None = None,
                 unsupported_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduce full distributions to the per-(request, position) OPE terms.

    Args:
        policy_probs: ``(n, K, M)`` per-position evaluation distributions (or ``(n, M)``,
            the same at every position).
        actions: ``(n, K)`` logged action indices in ``[0, M)``.
        q_all: ``(n, K, M)`` (or ``(n, M)``) reward-model predictions for every action.
        unsupported_mask: ``(n, K, M)`` or ``(n, M)`` bool, True where the logger gives
            the action no support in that context.

    Returns:
        ``target_probs (n, K)``, ``q_target (n, K)``, ``unsupported (n, K)``.
    """
    a = np.asarray(actions, dtype=np.int64)
    n, k = a.shape
    p = np.asarray(policy_probs)
    p3 = p[:, None, :] if p.ndim == 2 else p  # (n, K or 1, M)
    assert p3.shape[0] == n and p3.shape[1] in (1, k), (p.shape, a.shape)
    rows = np.arange(n)[:, None]
    cols = np.arange(k)[None, :] if p3.shape[1] == k else np.zeros((1, k), dtype=np.int64)
    target = p3[rows, cols, a].astype(np.float64)
    q_target = np.zeros((n, k))
    if q_all is not None:
        q = np.asarray(q_all)
        q3 = q[:, None, :] if q.ndim == 2 else q
        q_target = np.einsum("nkm,nkm->nk", np.broadcast_to(p3, (n, k, p3.shape[2])),
                             np.broadcast_to(q3, (n, k, q3.shape[2])))
    unsupported = np.zeros((n, k))
    if unsupported_mask is not None:
        m = np.asarray(unsupported_mask)
        m3 = m[:, None, :] if m.ndim == 2 else m
        unsupported = np.einsum("nkm,nkm->nk", np.broadcast_to(p3, (n, k, p3.shape[2])),
                                np.broadcast_to(m3, (n, k, m3.shape[2])).astype(p3.dtype))
    return target, q_target, unsupported


def weights(data: OPEData, clip: float | None = None) -> np.ndarray:
    """Importance weights ``pi / mu`` of the logged actions, clipped at ``clip``: (R, K)."""
    w = data.target_probs / data.propensities
    return np.minimum(w, clip) if clip is not None else w


# ------------------------------------------------------------------------ estimators
# Every estimator is a function of column sums of per-request statistics, so the
# bootstrap only has to re-weight rows (see _stats / _from_sums).


def _stats(data: OPEData, clip: float | None, tau: float) -> np.ndarray:
    """Per-request statistics ``(R, 6K)``: w, w r, w (r - q), q_target, switch correction, ones."""
    w = weights(data, clip)
    raw = data.target_probs / data.propensities
    resid = w * (data.rewards - data.q_logged)
    switch = np.where(raw <= tau, resid, 0.0)
    return np.concatenate([w, w * data.rewards, resid, data.q_target, switch, np.ones_like(w)], axis=1)


def _from_sums(s: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Estimates from column sums ``s`` (..., 6K) -> name -> (..., K) per-position values."""
    w, wr, resid, qt, sw, n = (s[..., j * k:(j + 1) * k] for j in range(6))
    with np.errstate(invalid="ignore", divide="ignore"):
        sn_w = np.where(w > 0, 1.0 / np.where(w > 0, w, 1.0), 0.0)
        return {
            "DM": qt / n,
            "IPS": wr / n,
            "SNIPS": wr * sn_w,
            "DR": (qt + resid) / n,
            "SNDR": qt / n + resid * sn_w,
            "SwitchDR": (qt + sw) / n,
        }


def point_estimates(data: OPEData, clip: float | None = None, switch_tau: float = np.inf) -> dict[str, Estimate]:
    """Every estimator's value (no interval); ``per_position`` holds the K terms."""
    k = data.rewards.shape[1]
    per = _from_sums(_stats(data, clip, switch_tau).sum(axis=0), k)
    return {name: Estimate(name, float(v.sum()), per_position=v) for name, v in per.items()}


def dm(data: OPEData) -> float:
    return point_estimates(data)["DM"].value


def ips(data: OPEData, clip: float | None = None) -> float:
    return point_estimates(data, clip)["IPS"].value


def snips(data: OPEData, clip: float | None = None) -> float:
    return point_estimates(data, clip)["SNIPS"].value


def dr(data: OPEData, clip: float | None = None) -> float:
    return point_estimates(data, clip)["DR"].value


def sndr(data: OPEData, clip: float | None = None) -> float:
    return point_estimates(data, clip)["SNDR"].value


def switch_dr(data: OPEData, tau: float, clip: float | None = None) -> float:
    return point_estimates(data, clip, tau)["SwitchDR"].value


def bootstrap(data: OPEData, clip: float | None = None, switch_tau: float = np.inf, n_bootstrap: int = 500,
              alpha: float = 0.05, seed: int = 0, chunk: int = 50) -> dict[str, tuple[float, float]]:
    """Percentile intervals ``(low, high)`` per estimator, resampling requests.

    Each resample draws ``R`` requests with replacement (multinomial counts), so
    a slate's positions always stay together.
    """
    stats = _stats(data, clip, switch_tau)  # (R, 6K)
    r, k = data.rewards.shape
    rng = np.random.default_rng(seed)
    values: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        counts = rng.multinomial(r, np.full(r, 1.0 / r), size=b).astype(np.float64)  # (b, R)
        for name, v in _from_sums(counts @ stats, k).items():
            values.setdefault(name, []).append(v.sum(axis=1))
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    out: dict[str, tuple[float, float]] = {}
    for name, samples in values.items():
        lo, hi = np.nanpercentile(np.concatenate(samples), q)
        out[name] = (float(lo), float(hi))
    return out


def clip_to_range(estimates: dict[str, Estimate], low: float, high: float) -> list[str]:
    """Clip every value and interval end to ``[low, high]`` (the range of a slate's
    total reward, e.g. ``[0, K]`` for clicks) in place; returns the names clipped."""
    changed = []
    for name, e in estimates.items():
        vals = (e.value, e.ci_low, e.ci_high)
        new = tuple(v if np.isnan(v) else float(min(max(v, low), high)) for v in vals)
        if new != vals:
            e.value, e.ci_low, e.ci_high = new
            e.clipped = True
            changed.append(name)
    return changed


def diagnose(data: OPEData, clip: float | None = None, min_support: float = 0.99,
             min_ess_share: float = 0.01) -> Diagnostics:
    """Weight diagnostics; warns when more than ``1 - min_support`` of the policy's
    mass sits on unsupported actions, or when the ESS of a position falls below
    ``min_ess_share`` of the requests."""
    w = weights(data, clip)
    r, k = w.shape
    ess = (w.sum(axis=0) ** 2 / np.maximum((w ** 2).sum(axis=0), 1e-300))
    assert data.unsupported is not None  # __post_init__ fills every optional array
    unsupported = float(data.unsupported.sum(axis=1).mean() / k)
    raw = data.target_probs / data.propensities
    clipped = float((raw > clip).mean()) if clip is not None else 0.0
    warn = []
    if unsupported > 1 - min_support:
        warn.append(f"poor support: {unsupported:.1%} of the evaluation policy's mass is on actions the "
                    f"logger never shows in that context; IPS/DR are biased (downwards) for that part")
    if ess.min() < min_ess_share * r:
        warn.append(f"low effective sample size: {ess.min():.0f} of {r} requests at the worst position")
    return Diagnostics(r, k, float(ess.mean()), [float(x) for x in ess], float(w.max()), float(w.mean()),
                       unsupported, clipped, warn)


def estimate_all(data: OPEData, clip: float | None = None, switch_tau: float = np.inf, n_bootstrap: int = 500,
                 alpha: float = 0.05, seed: int = 0) -> OPEResult:
    """All estimators with bootstrap intervals, plus :func:`diagnose`."""
    est = point_estimates(data, clip, switch_tau)
    if n_bootstrap > 0:
        for name, (lo, hi) in bootstrap(data, clip, switch_tau, n_bootstrap, alpha, seed).items():
            est[name].ci_low, est[name].ci_high = lo, hi
    return OPEResult(est, diagnose(data, clip))


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Mean total-variation distance between per-row distributions (last axis): a float."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum(axis=-1).mean())


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> float:
    """Mean ``KL(p || q)`` over rows (last axis), with ``q`` floored at ``eps``: a float."""
    p = np.asarray(p, dtype=np.float64)
    q = np.maximum(np.asarray(q, dtype=np.float64), eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    return float(terms.sum(axis=-1).mean())
