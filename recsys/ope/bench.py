"""The estimator study behind ``recsys ope bench``: re-sample the synthetic world's
log ``n_seeds`` times and score every estimator against the exact population value
of the evaluation policy (bias, RMSE, interval coverage and width)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.bandit_logs import resample_impressions, synthetic_bandit_log
from recsys.evaluation import ope as O
from recsys.ope.evaluate import EstimatorOptions, crossfit
from recsys.ope.setup import Setup, support_fn, true_value
from recsys.utils.errors import RecsysError
from recsys.utils.progress import progress


def run_bench(s: Setup, policy: Any, info: dict[str, Any], opts: EstimatorOptions, n_seeds: int,
              n_requests: int, seed_offset: int = 1000, plot_path: str | Path | None = None) -> dict[str, Any]:
    """Log seed ``seed_offset + i`` draws ``n_requests`` fresh requests from the world
    (users in proportion to activity); estimator seed ``i`` cross-fits and bootstraps.

    Returns a JSON-ready dict: ``table`` (estimator -> mean, bias, rmse, rel_error,
    coverage, sd, ci_width), ``per_seed`` estimates, ``true_value``, ``logger_value``,
    ``total_variation``, ``kl_divergence``, ``mean_ess``, ``plot``, ``timings``; plus ``info``.
    """
    t0 = time.perf_counter()
    world = s.world
    if world is None:
        raise RecsysError("`recsys ope bench` needs data=synthetic")
    users = np.arange(1, world.config.n_users + 1)
    activity = world.truth["seq_len"][1:]  # requests go to users in proportion to activity
    truth, tv, kl = true_value(world, policy.probs, users, activity)
    logger_value, _, _ = true_value(world, world.logging_distribution, users, activity)
    per_seed: dict[str, list[float]] = {}
    covered: dict[str, list[bool]] = {}
    width: dict[str, list[float]] = {}
    ess = []
    for seed in progress(range(n_seeds), "ope bench (seeds)"):
        log = synthetic_bandit_log(resample_impressions(world, n_requests, seed + seed_offset))
        d = crossfit(log, opts, seed).ope_data(policy.probs, support_fn(s, opts.support_eps))
        res = O.estimate_all(d, opts.clip_value, float(opts.switch_tau), opts.n_bootstrap, opts.alpha, seed)
        ess.append(res.diagnostics.ess)
        for name, e in res.estimates.items():
            per_seed.setdefault(name, []).append(e.value)
            covered.setdefault(name, []).append(e.covers(truth))
            width.setdefault(name, []).append(e.ci_high - e.ci_low)
    rows = {}
    for name, values in per_seed.items():
        v = np.asarray(values)
        rows[name] = {"mean": float(v.mean()), "bias": float(v.mean() - truth),
                      "rmse": float(np.sqrt(((v - truth) ** 2).mean())),
                      "rel_error": float((np.abs(v - truth) / truth).mean()),
                      "coverage": float(np.mean(covered[name])), "sd": float(v.std(ddof=1)),
                      "ci_width": float(np.mean(width[name]))}
    out = {**info, "true_value": truth, "logger_value": logger_value, "total_variation": tv,
           "kl_divergence": kl, "n_seeds": n_seeds, "n_requests": n_requests,
           "slate_size": world.config.slate_size,
           "relative_error": {k: r["rel_error"] for k, r in rows.items()},
           "coverage": {k: r["coverage"] for k, r in rows.items()}, "table": rows, "per_seed": per_seed,
           "mean_ess": float(np.mean(ess))}
    if plot_path is not None:
        from recsys.evaluation.ope_report import plot_bench

        out["plot"] = str(plot_bench(plot_path, per_seed, truth,
                                     f"{n_seeds} seeds, policy {info.get('policy', 'policy')}"))
    out["timings"] = {"total_s": time.perf_counter() - t0}
    return out
