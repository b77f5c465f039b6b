"""Estimate one policy's value on the setup's log: every estimator of
:mod:`recsys.evaluation.ope` with bootstrap intervals and diagnostics, beside the
exact truth when the log is the synthetic world's."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.bandit_logs import BanditLog
from recsys.evaluation import ope as O
from recsys.evaluation.ope_reward import CrossFit
from recsys.ope.setup import Setup, support_fn, true_value


@dataclass(frozen=True)
class EstimatorOptions:
    """The estimators' settings (``ope:`` in configs/ope.yaml).

    Args:
        n_folds: cross-fitting folds of the DM/DR reward model (< 2: no reward model).
        prior_strength: pseudo-shows of the smoothed-CTR features.
        clip: clip importance weights at this value (None: no clipping).
        switch_tau: switch-DR threshold on the importance weight.
        n_bootstrap: bootstrap resamples of the requests.
        alpha: 1 - interval level.
        support_eps: a logging probability <= eps counts as no support.
        refit_bootstrap: refit the DM/DR reward model on every bootstrap resample (honest
            intervals for DM/DR; slower); False: the model stays fixed (narrow DM intervals).
    """

    n_folds: int = 5
    prior_strength: float = 20.0
    clip: float | None = None
    switch_tau: float = 50.0
    n_bootstrap: int = 500
    alpha: float = 0.05
    support_eps: float = 0.0
    refit_bootstrap: bool = True

    @property
    def clip_value(self) -> float | None:
        return None if self.clip is None else float(self.clip)


def _codes(values: dict[str, np.ndarray]) -> np.ndarray | None:
    """Categorical columns (name -> values) as an int code matrix, or None when there are none."""
    if not values:
        return None
    return np.stack([np.unique(v.astype(str), return_inverse=True)[1].ravel() for v in values.values()], axis=1)


def crossfit(log: BanditLog, opts: EstimatorOptions, seed: int) -> CrossFit:
    """The cross-fitted reward model on ``log``, over the log's contexts: the item
    ``category`` (when logged) is the action group; the log's declared context
    columns (and the user and position of a one-impression-per-row log) and action
    feature columns are categorical features of the model."""
    group = None
    if "category" in log.action_features:
        _, group = np.unique(log.action_features["category"].astype(str), return_inverse=True)
    ctx = None if log.contexts_are_users else _codes(log.context_table)
    assert log.contexts is not None
    return CrossFit(log.contexts, log.actions, log.rewards, log.propensities, log.n_contexts + 1, log.n_items + 1,
                    n_folds=opts.n_folds, seed=seed, action_group=group, prior_strength=opts.prior_strength,
                    context_codes=ctx, action_codes=_codes(log.action_features))


def _tail(log: BanditLog, start: int) -> BanditLog:
    """The requests from ``start`` on (a policy trained on the first ones is evaluated on these)."""
    return log.take(np.arange(start, log.n_requests))


def estimate(cf: CrossFit, policy_fn: Any, support: Any, opts: EstimatorOptions, seed: int,
             reward_range: tuple[float, float] | None, slate_size: int) -> O.OPEResult:
    """Every estimator with intervals (refitting bootstrap when ``opts.refit_bootstrap``) and
    diagnostics; estimates of a bounded reward clipped to ``[K low, K high]`` (flagged)."""
    d = cf.ope_data(policy_fn, support)
    res = O.estimate_all(d, opts.clip_value, float(opts.switch_tau), 0 if opts.refit_bootstrap else opts.n_bootstrap,
                         opts.alpha, seed)
    if opts.refit_bootstrap and opts.n_bootstrap > 0:
        samples = cf.refit_bootstrap(policy_fn, opts.n_bootstrap, opts.clip_value, float(opts.switch_tau), seed)
        q = [100 * opts.alpha / 2, 100 * (1 - opts.alpha / 2)]
        for name, v in samples.items():
            lo, hi = np.nanpercentile(v, q)
            res.estimates[name].ci_low, res.estimates[name].ci_high = float(lo), float(hi)
    if reward_range is not None:
        changed = O.clip_to_range(res.estimates, reward_range[0] * slate_size, reward_range[1] * slate_size)
        if changed:
            res.diagnostics.warnings.append(
                f"{', '.join(changed)} clipped to the reward range [{reward_range[0] * slate_size:g}, "
                f"{reward_range[1] * slate_size:g}] per round (the raw estimate or interval fell outside)")
    return res


def evaluate_policy(s: Setup, policy: Any, info: dict[str, Any], opts: EstimatorOptions, seed: int,
                    plot_path: str | Path | None = None) -> dict[str, Any]:
    """Estimate ``policy`` (from :func:`recsys.ope.policies.build_policy`, with its ``info``)
    on the setup's log.

    Returns a JSON-ready dict: ``estimates`` (name -> estimate, ci_low, ci_high and,
    with a world, truth and rel_error), ``true_value``, ``logged_value``,
    ``total_variation``, ``kl_divergence``, ``diagnostics``, ``plot`` (when
    ``plot_path`` is given), ``timings``; plus ``info``.
    """
    t0 = time.perf_counter()
    log = s.log
    if "trained_on_requests" in info:  # bandit learned from the first half of the log
        log = _tail(log, info["trained_on_requests"])
    cf = crossfit(log, opts, seed)
    res = estimate(cf, policy.probs, support_fn(s, opts.support_eps), opts, seed, log.reward_range, log.slate_size)
    truth = tv = kl = None
    if s.world is not None:
        truth, tv, kl = true_value(s.world, policy.probs, log.users)
    rows = {}
    for name, e in res.estimates.items():
        r: dict[str, Any] = {"estimate": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "clipped": e.clipped}
        if truth is not None:
            r.update(truth=truth, rel_error=abs(e.value - truth) / truth)
        rows[name] = r
    out = {**info, "n_requests": log.n_requests, "slate_size": log.slate_size, "source": log.source,
           "catalogue": s.catalogue, "n_actions": log.n_items, "reward_range": log.reward_range, "alpha": opts.alpha,
           "interval": "percentile bootstrap, reward model refitted per resample" if opts.refit_bootstrap
           else "percentile bootstrap, reward model fixed",
           "estimates": rows, "true_value": truth, "logged_value": float(log.rewards.sum(axis=1).mean()),
           "total_variation": tv, "kl_divergence": kl, "diagnostics": res.diagnostics.__dict__}
    if plot_path is not None:
        from recsys.evaluation.ope_report import plot_estimates

        out["plot"] = str(plot_estimates(plot_path, {n: (r["estimate"], r["ci_low"], r["ci_high"])
                                                     for n, r in rows.items()},
                                         truth, f"OPE of {info.get('policy', 'policy')}"))
    out["timings"] = {"total_s": time.perf_counter() - t0}
    return out
