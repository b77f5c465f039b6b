"""The estimator study behind ``recsys ope bench``: re-sample the synthetic world's
log ``n_seeds`` times and score every estimator against the exact population value
of the evaluation policy (bias, RMSE, interval coverage and width)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.bandit_logs import resample_impressions, synthetic_bandit_log
from recsys.ope.evaluate import EstimatorOptions, crossfit, estimate
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
        res = estimate(crossfit(log, opts, seed), policy.probs, support_fn(s, opts.support_eps), opts, seed,
                       log.reward_range, log.slate_size)
        ess.append(res.diagnostics.ess)
        for name, e in res.estimates.items():
            per_seed.setdefault(name, []).append(e.value)
            covered.setdefault(name, []).append(e.covers(truth))
            width.setdefault(name, []).append(e.ci_high - e.ci_low)
    rows = _score_rows(per_seed, covered, width, truth)
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


def _score_rows(per_seed: dict[str, list[float]], covered: dict[str, list[bool]], width: dict[str, list[float]],
                truth: float) -> dict[str, dict[str, float]]:
    """Per estimator over the seeds: mean, bias, RMSE, mean relative error, interval
    coverage of ``truth``, spread and mean interval width."""
    rows = {}
    for name, values in per_seed.items():
        v = np.asarray(values)
        rows[name] = {"mean": float(v.mean()), "bias": float(v.mean() - truth),
                      "rmse": float(np.sqrt(((v - truth) ** 2).mean())),
                      "rel_error": float((np.abs(v - truth) / truth).mean()),
                      "coverage": float(np.mean(covered[name])), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                      "ci_width": float(np.mean(width[name]))}
    return rows


def run_external_bench(config: Any, opts: EstimatorOptions, n_seeds: int, seed_offset: int = 0,
                       n_rows: int | None = None) -> dict[str, Any]:
    """The estimator study on external-shaped logs (:mod:`recsys.data.external_logs`):
    ``n_seeds`` logs from one :class:`ExternalLogWorld` (one impression per row, no
    request id, 1-based positions, hashed contexts, propensities ``1e-5 .. 0.95``) are
    read like a user's file (``READ_OPTIONS``, the world's item list as the catalogue),
    and the uniform policy over the catalogue is estimated and scored against its exact
    value (relative error, interval coverage and width per estimator).

    ``config`` is an :class:`~recsys.data.external_logs.ExternalLogConfig`.
    """
    from recsys.data.bandit_logs import LogOptions, from_table
    from recsys.data.external_logs import READ_OPTIONS, ExternalLogWorld
    from recsys.ope.policies import uniform
    from recsys.ope.setup import build_log_setup

    t0 = time.perf_counter()
    world = ExternalLogWorld(config)
    truth = world.uniform_value()
    read = LogOptions.from_mapping(READ_OPTIONS)
    known = np.array(["", *map(str, world.item_ids())], dtype=object)
    per_seed: dict[str, list[float]] = {}
    covered: dict[str, list[bool]] = {}
    width: dict[str, list[float]] = {}
    ess, min_p, max_p = [], [], []
    for seed in progress(range(n_seeds), "ope bench external (seeds)"):
        log = from_table(world.table(seed + seed_offset, n_rows), f"external log seed {seed + seed_offset}",
                         options=read, known_items=known)
        s = build_log_setup(log, "the world's item list")
        pol = uniform(s, seed)
        res = estimate(crossfit(log, opts, seed), pol.probs, support_fn(s, opts.support_eps), opts, seed,
                       log.reward_range, log.slate_size)
        ess.append(res.diagnostics.ess)
        min_p.append(float(log.propensities.min()))
        max_p.append(float(log.propensities.max()))
        for name, e in res.estimates.items():
            per_seed.setdefault(name, []).append(e.value)
            covered.setdefault(name, []).append(e.covers(truth))
            width.setdefault(name, []).append(e.ci_high - e.ci_low)
    rows = _score_rows(per_seed, covered, width, truth)
    return {"policy": "uniform", "true_value": truth, "logger_value": world.logger_value(),
            "logger_propensity_range": [float(world.logger.min()), float(world.logger.max())],
            "logged_propensity_range": [float(min(min_p)), float(max(max_p))],
            "n_seeds": n_seeds, "n_rows": n_rows or world.config.n_rows, "n_items": world.config.n_items,
            "relative_error": {k: r["rel_error"] for k, r in rows.items()},
            "coverage": {k: r["coverage"] for k, r in rows.items()}, "table": rows, "per_seed": per_seed,
            "mean_ess": float(np.mean(ess)), "refit_bootstrap": opts.refit_bootstrap,
            "n_bootstrap": opts.n_bootstrap, "timings": {"total_s": time.perf_counter() - t0}}
