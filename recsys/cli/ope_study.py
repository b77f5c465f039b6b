"""The two OPE studies behind ``recsys ope bench`` and ``recsys ope align``."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from recsys.cli.common import data_lineage, write_summary
from recsys.cli.ope_cmd import (_clip, _crossfit, _table, build_policy, build_setup, support_fn, true_value,
                                model_scores)
from recsys.data.bandit_logs import resample_impressions, synthetic_bandit_log
from recsys.evaluation import ope as O
from recsys.policies import ScorePolicy, oracle_value, simulate
from recsys.utils.errors import RecsysError


def run_bench(cfg: DictConfig) -> dict:
    """Re-sample the log ``n_seeds`` times from one world; score every estimator
    against the exact population value of the evaluation policy."""
    from recsys.evaluation.ope_report import plot_bench

    t0 = time.perf_counter()
    s = build_setup(cfg)
    if s.world is None:
        raise RecsysError("`recsys ope bench` needs data=synthetic")
    b, o = cfg.bench, cfg.ope
    pol, info = build_policy(cfg, s, cfg.seed)
    world = s.world
    n = world.config.n_users
    users = np.arange(1, n + 1)
    activity = world.truth["seq_len"][1:]  # requests go to users in proportion to activity
    truth, tv, kl = true_value(world, pol.probs, users, activity)
    logger_value, _, _ = true_value(world, world.logging_distribution, users, activity)
    print(f"policy {info['policy']}: true value {truth:.4f} (logger {logger_value:.4f}); "
          f"TV(pi, logger) {tv:.3f}, KL {kl:.3f}; {b.n_seeds} seeds x {b.n_requests} requests "
          f"x {world.config.slate_size} positions")
    per_seed: dict[str, list[float]] = {}
    covered: dict[str, list[bool]] = {}
    width: dict[str, list[float]] = {}
    ess = []
    for seed in range(b.n_seeds):
        log = synthetic_bandit_log(resample_impressions(world, b.n_requests, seed + b.seed_offset))
        d = _crossfit(s, log, o, seed).ope_data(pol.probs, support_fn(s, o.support_eps))
        res = O.estimate_all(d, _clip(o), float(o.switch_tau), o.n_bootstrap, o.alpha, seed)
        ess.append(res.diagnostics.ess)
        for name, e in res.estimates.items():
            per_seed.setdefault(name, []).append(e.value)
            covered.setdefault(name, []).append(e.covers(truth))
            width.setdefault(name, []).append(e.ci_high - e.ci_low)
    rows = {}
    for name, v in per_seed.items():
        v = np.asarray(v)
        rows[name] = {"mean": float(v.mean()), "bias": float(v.mean() - truth),
                      "rmse": float(np.sqrt(((v - truth) ** 2).mean())),
                      "rel_error": float((np.abs(v - truth) / truth).mean()),
                      "coverage": float(np.mean(covered[name])), "sd": float(v.std(ddof=1)),
                      "ci_width": float(np.mean(width[name]))}
    print(_table(rows, ["mean", "bias", "rmse", "rel_error", "coverage", "sd", "ci_width"]))
    print("calibrated 95% intervals have ci_width ~ 3.92 sd; with 20 seeds, 20/20 covering has "
          "probability 0.36 even then")
    print(f"true value {truth:.4f}; mean ESS {np.mean(ess):.0f} of {b.n_requests} requests")
    elapsed = time.perf_counter() - t0
    plot = plot_bench(Path(cfg.paths.output_dir) / "ope_bench.png", per_seed, truth,
                      f"{b.n_seeds} seeds, policy {info['policy']}")
    out = {"command": "ope bench", **info, "true_value": truth, "logger_value": logger_value,
           "total_variation": tv, "kl_divergence": kl, "n_seeds": b.n_seeds, "n_requests": b.n_requests,
           "relative_error": {k: r["rel_error"] for k, r in rows.items()},
           "coverage": {k: r["coverage"] for k, r in rows.items()}, "table": rows, "per_seed": per_seed,
           "mean_ess": float(np.mean(ess)), "plot": str(plot), "data": data_lineage(s.data),
           "timings": {"total_s": elapsed}}
    path = write_summary(cfg, out)
    print(f"time {elapsed:.1f}s\nsummary: {path}")
    return out


def run_align(cfg: DictConfig) -> dict:
    """For each model variant: offline NDCG@10, the true online value of its top-k
    slate policy over the logged requests' users, and its DR / SNIPS estimates."""
    from scipy import stats

    from recsys.evaluation.ope_report import plot_alignment
    from recsys.training.baselines import evaluate_split

    t0 = time.perf_counter()
    s = build_setup(cfg)
    if s.world is None:
        raise RecsysError("`recsys ope align` needs data=synthetic")
    o = cfg.ope
    log = s.log
    cf = _crossfit(s, log, o, cfg.seed)
    m, k = log.n_items + 1, log.slate_size
    metric = f"test/ndcg@{cfg.align.k}"
    rows: dict[str, dict[str, float]] = {}
    for name, vcfg in cfg.align.variants.items():
        model = instantiate(vcfg)
        res = evaluate_split(model, s.data, s.split, instantiate(cfg.evaluation))  # fits on the train split
        pol = ScorePolicy(model_scores(model, s), m, k, "topk")
        truth, tv, _ = true_value(s.world, pol.probs, log.users)
        d = cf.ope_data(pol.probs)
        est = O.point_estimates(d, _clip(o), float(o.switch_tau))
        dg = O.diagnose(d, _clip(o))
        rows[name] = {"offline_ndcg": res[metric], "truth": truth, "DR": est["DR"].value,
                      "SNIPS": est["SNIPS"].value, "IPS": est["IPS"].value, "DM": est["DM"].value,
                      "ess": dg.ess, "tv_logger": tv}
    names = list(rows)
    col = {c: np.array([rows[n][c] for n in names]) for c in ("offline_ndcg", "truth", "DR", "SNIPS", "DM")}
    pairs = {"offline_ndcg~truth": ("offline_ndcg", "truth"), "DR~truth": ("DR", "truth"),
             "SNIPS~truth": ("SNIPS", "truth"), "DM~truth": ("DM", "truth"),
             "offline_ndcg~DR": ("offline_ndcg", "DR")}
    tau = {p: float(stats.kendalltau(col[a], col[b]).statistic) for p, (a, b) in pairs.items()}
    rho = {p: float(stats.spearmanr(col[a], col[b]).statistic) for p, (a, b) in pairs.items()}
    print(_table(rows, ["offline_ndcg", "truth", "DR", "SNIPS", "DM", "ess"]))
    print(f"{'pair':<20}{'kendall':>10}{'spearman':>10}")
    for p in pairs:
        print(f"{p:<20}{tau[p]:>10.3f}{rho[p]:>10.3f}")
    plot = plot_alignment(Path(cfg.paths.output_dir) / "ope_align.png", names, col["truth"].tolist(),
                          {f"offline NDCG@{cfg.align.k}": col["offline_ndcg"], "DR estimate": col["DR"],
                           "SNIPS estimate": col["SNIPS"]})
    elapsed = time.perf_counter() - t0
    out = {"command": "ope align", "variants": rows, "kendall_tau": tau, "spearman": rho, "plot": str(plot),
           "data": data_lineage(s.data), "split": s.split.info, "timings": {"total_s": elapsed}}
    path = write_summary(cfg, out)
    print(f"time {elapsed:.1f}s\nsummary: {path}")
    return out


def run_regret(cfg: DictConfig) -> dict:
    """Run every policy of ``cfg.regret.policies`` online in the synthetic world
    (bandits learn after every batch) and report cumulative regret vs the oracle."""
    from recsys.cli.ope_cmd import make_policy
    from recsys.evaluation.ope_report import plot_regret

    t0 = time.perf_counter()
    s = build_setup(cfg)
    if s.world is None:
        raise RecsysError("`recsys ope regret` needs data=synthetic")
    m, k = s.log.n_items + 1, s.log.slate_size
    r = cfg.regret
    users = np.random.default_rng(cfg.seed).choice(s.log.users, r.n_requests)
    checkpoints = sorted({c for c in (1000, 5000, 10000, 50000) if c < r.n_requests} | {r.n_requests})
    curves, rows = {}, {}
    for name in r.policies:
        pol, _ = make_policy(cfg.policies[name], s, cfg.seed)
        sim = simulate(pol, s.world, users, m, k, batch_size=r.batch_size, seed=cfg.seed)
        cum = sim.cumulative_regret
        curves[name] = cum
        rows[name] = {f"regret@{c}": float(cum[c - 1]) for c in checkpoints}
        # expected clicks per slate over the last 10% of requests (oracle: `oracle_value`)
        rows[name]["value_end"] = float(sim.expected_reward[-max(1, len(users) // 10):].mean())
    oracle = float(np.mean(oracle_value(s.world, users[-max(1, len(users) // 10):], m, k)))
    print(f"cumulative regret vs the oracle slate ({r.n_requests} requests x {k} positions, "
          f"bandits update every {r.batch_size} requests); oracle value {oracle:.4f} clicks per slate")
    print(_table(rows, list(next(iter(rows.values())))))
    plot = plot_regret(Path(cfg.paths.output_dir) / "regret.png", curves)
    out = {"command": "ope regret", "regret": rows, "oracle_value": oracle, "plot": str(plot), "data": data_lineage(s.data),
           "timings": {"total_s": time.perf_counter() - t0}}
    path = write_summary(cfg, out)
    print(f"summary: {path}")
    return out


__all__ = ["run_bench", "run_align", "run_regret", "resample_impressions"]
