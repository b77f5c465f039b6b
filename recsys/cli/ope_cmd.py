"""``recsys ope`` (one policy), ``recsys ope bench`` (20-seed estimator study) and
``recsys ope align`` (offline metric vs OPE vs true online value).

Action space of a run = the log's item indices (the synthetic world's raw ids
when no ``logs=`` is given). Models are fitted on the prepared data's
leave-one-out training split and act on a user with that user's click history
from the prepared data (the split's test history, the same for every request of
the user: a simplification, the history is not cut at the request time);
consumed items are excluded, as in the offline ranking.
"""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import data_lineage, format_table, load_data, write_summary
from recsys.data.bandit_logs import BanditLog, read_bandit_log, resample_impressions, synthetic_bandit_log
from recsys.data.synthetic_source import load_world
from recsys.evaluation import ope as O
from recsys.evaluation.ope_reward import CrossFit
from recsys.policies import (BernoulliTS, EpsilonGreedy, LinearTS, LinUCB, ScorePolicy, UniformPolicy,
                             simulate)
from recsys.policies.simulation import relevance_all
from recsys.utils.errors import RecsysError
from recsys.utils.sparse import CSR

PolicyFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Setup:
    """Everything a policy needs, in the log's index space."""

    log: BanditLog
    world: Any  # SyntheticWorld or None
    data: Any  # PreparedData
    split: Any
    user_to_prep: np.ndarray  # (n_log_users + 1,) prepared user idx, 0 = unknown
    item_to_log: np.ndarray  # (n_prep_items + 1,) log column of each prepared item, -1 = none
    history: CSR  # rows = prepared user idx


def _lookup(ids_from: np.ndarray, ids_to: pa.Array) -> np.ndarray:
    """Index of each ``ids_from`` string in ``ids_to`` plus 1 (0 = absent)."""
    found = pc.index_in(pa.array(ids_from, pa.string()), value_set=pc.cast(ids_to, pa.string()))
    return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64) + 1


def build_setup(cfg: DictConfig, log: BanditLog | None = None) -> Setup:
    data, _ = load_data(cfg)
    world = load_world(data.extras_dir, data.extras)
    split = instantiate(cfg.split).split(data)
    if log is None:
        if cfg.get("logs"):
            o = cfg.logs_options
            log = read_bandit_log(cfg.logs, columns=OmegaConf.to_container(o.columns) if o.columns else None,
                                  slate_size=o.slate_size, binary_reward=o.binary_reward,
                                  known_users=np.array(["", *data.users.column("user_id").to_pylist()], dtype=object),
                                  known_items=np.array(["", *data.items.column("item_id").to_pylist()], dtype=object))
            world = None
        elif world is None:
            raise RecsysError(f"`recsys ope` without logs=<file> needs data=synthetic (got data={data.name})")
        else:
            log = synthetic_bandit_log(world)
    user_to_prep = np.concatenate([[0], _lookup(log.user_ids[1:], data.users.column("user_id"))])
    pos_in_log = _lookup(np.asarray(data.items.column("item_id").to_pylist(), dtype=object),
                         pa.array(log.item_ids[1:], pa.string()))
    item_to_log = np.concatenate([[0], np.where(pos_in_log > 0, pos_in_log, -1)])
    es = split.test  # history = the user's clicks before the test item, rows = prepared user idx
    order = np.argsort(es.users, kind="stable")
    lens = np.zeros(data.n_users + 1, dtype=np.int64)
    lens[es.users] = es.history.lengths()
    history = CSR(np.concatenate([[0], np.cumsum(lens)]), es.history.take(order).indices)
    return Setup(log, world, data, split, user_to_prep, item_to_log, history)


def model_scores(model: Any, s: Setup) -> PolicyFn:
    """Log users ``(b,)`` -> model scores in log space ``(b, M)``; unknown / consumed items -inf."""
    m = s.log.n_items + 1
    keep = s.item_to_log >= 0
    keep[0] = False

    def fn(users: np.ndarray) -> np.ndarray:
        prep = s.user_to_prep[users]
        hist = s.history.take(prep)
        sc = np.array(model.score(prep, hist), dtype=np.float64)  # (b, n_prep + 1)
        sc[hist.row_ids(), hist.indices] = -np.inf
        out = np.full((len(users), m), -np.inf)
        out[:, s.item_to_log[keep]] = sc[:, keep]
        return out

    return fn


def user_features(s: Setup) -> np.ndarray:
    """One-hot user side features (string columns of the prepared users) + bias: (n_log_users + 1, d)."""
    u = s.data.users
    cols = [np.ones(u.num_rows)]
    for name in u.column_names:
        if name in ("user_idx", "user_id") or not pa.types.is_string(u.column(name).type):
            continue
        codes = pc.dictionary_encode(u.column(name)).combine_chunks().indices.to_numpy(zero_copy_only=False)
        cols.extend((codes == c).astype(np.float64) for c in range(int(codes.max()) + 1))
    prep_feats = np.concatenate([np.zeros((1, len(cols))), np.stack(cols, axis=1)])  # row = user_idx
    feats = prep_feats[s.user_to_prep]
    feats[:, 0] = 1.0
    return feats


def build_policy(cfg: DictConfig, s: Setup, seed: int) -> tuple[Any, dict[str, Any]]:
    """The evaluation policy ``cfg.policies[cfg.policy]``, fitted / warmed up."""
    if cfg.policy not in cfg.policies:
        raise RecsysError(f"unknown policy {cfg.policy!r}; choose one of {sorted(cfg.policies)}")
    pcfg = cfg.policies[cfg.policy]
    pol, info = make_policy(pcfg, s, seed)
    if not hasattr(pol, "update"):
        return pol, info
    m, k = s.log.n_items + 1, s.log.slate_size
    if s.world is not None:  # warm up online in the world, then freeze
        rng = np.random.default_rng(seed)
        warm_users = rng.choice(s.log.users, pcfg.warmup_requests)
        sim = simulate(pol, s.world, warm_users, m, k, batch_size=pcfg.batch_size, seed=seed)
        info["warmup_regret_per_request"] = float(sim.regret.mean())
    else:  # learn from the first half of the log, evaluate on the rest
        half = s.log.n_requests // 2
        for st in range(0, half, pcfg.batch_size):
            sl = slice(st, min(st + pcfg.batch_size, half))
            pol.update(s.log.users[sl], s.log.actions[sl], s.log.rewards[sl])
        info["trained_on_requests"] = half
    return pol, info


def make_policy(pcfg: DictConfig, s: Setup, seed: int) -> tuple[Any, dict[str, Any]]:
    """A policy from its config entry: models are fitted, bandits start untrained."""
    m, k = s.log.n_items + 1, s.log.slate_size
    kind = pcfg.kind
    info: dict[str, Any] = {"policy": pcfg.name, "kind": kind}
    if kind in ("model", "epsilon_greedy"):
        model = instantiate(pcfg.model)
        users, items, _ = s.split.train_arrays()
        model.fit(users, items, s.data.n_users, s.data.n_items)
        fn = model_scores(model, s)
        if kind == "epsilon_greedy":
            return EpsilonGreedy(fn, m, k, pcfg.epsilon), info
        return ScorePolicy(fn, m, k, pcfg.mode, pcfg.temperature), info
    if kind == "uniform":
        return UniformPolicy(m, k), info
    if kind == "oracle":
        if s.world is None:
            raise RecsysError("policy=oracle_softmax needs the synthetic world (no logs=)")
        rel_logit = lambda u: np.log(np.maximum(relevance_all(s.world, u, m), 1e-12))  # noqa: E731
        return ScorePolicy(rel_logit, m, k, "softmax", pcfg.temperature), info
    exam = s.world.truth["position_bias"] if s.world is not None else None
    if kind == "linucb":
        pol = LinUCB(user_features(s), m, k, pcfg.alpha, pcfg.l2, exam)
    elif kind == "linear_ts":
        pol = LinearTS(user_features(s), m, k, pcfg.v, pcfg.l2, exam, pcfg.n_samples, seed)
    elif kind == "bernoulli_ts":
        pol = BernoulliTS(m, k, examination=exam, n_samples=pcfg.n_samples, seed=seed)
    else:
        raise RecsysError(f"unknown policy kind {kind!r}")
    return pol, info


def true_value(world: Any, policy_fn: PolicyFn, users: np.ndarray, counts: np.ndarray | None = None,
               block: int = 256) -> tuple[float, float, float]:
    """Exact value of ``policy_fn`` averaged over ``users`` (weighted by ``counts``), and
    its mean total-variation distance and KL divergence from the logger."""
    uniq, cnt = (np.unique(users, return_counts=True) if counts is None else (users, counts))
    total = tv = kl = 0.0
    for st in range(0, len(uniq), block):
        ub, cb = uniq[st:st + block], cnt[st:st + block].astype(np.float64)
        p = policy_fn(ub)
        kk = len(world.truth["position_bias"])
        p = p if p.ndim == 3 else np.broadcast_to(p[:, None, :], (len(ub), kk, p.shape[-1]))
        total += world.policy_value(p * cb[:, None, None], ub) * len(ub)
        lg = world.logging_distribution(ub)[:, None, :]
        tv += O.total_variation(p, lg) * cb.sum()
        kl += float(O.kl_divergence(p, np.broadcast_to(lg, p.shape)) * cb.sum())
    n = cnt.sum()
    return total / n, tv / n, kl / n


def support_fn(s: Setup, eps: float) -> PolicyFn:
    if s.world is not None:
        return lambda u: s.world.logging_distribution(u) <= eps
    m, k = s.log.n_items + 1, s.log.slate_size
    shown = np.zeros((k, m), dtype=bool)
    shown[np.broadcast_to(np.arange(k), s.log.actions.shape), s.log.actions] = True
    return lambda u: np.broadcast_to(~shown, (len(u), k, m))


def _crossfit(s: Setup, log: BanditLog, o: DictConfig, seed: int) -> CrossFit:
    group = None
    if "category" in log.action_features:
        _, group = np.unique(log.action_features["category"].astype(str), return_inverse=True)
    return CrossFit(log.users, log.actions, log.rewards, log.propensities, log.n_users + 1, log.n_items + 1,
                    n_folds=o.n_folds, seed=seed, action_group=group, prior_strength=o.prior_strength)


def _table(rows: dict[str, dict[str, float]], cols: list[str]) -> str:
    return format_table(rows, cols, label="name")


def _clip(o: DictConfig) -> float | None:
    return None if o.clip is None else float(o.clip)


def ope(cfg: DictConfig) -> dict:
    out = evaluate_policy(cfg)
    path = write_summary(cfg, out)
    print(f"summary: {path}")
    return out


def evaluate_policy(cfg: DictConfig) -> dict:
    """Estimate ``cfg.policy`` on the log; print the table, plot; return the summary dict."""
    t0 = time.perf_counter()
    s = build_setup(cfg)
    pol, info = build_policy(cfg, s, cfg.seed)
    log, o = s.log, cfg.ope
    if "trained_on_requests" in info:  # bandit learned from the first half of the log
        keep = np.arange(info["trained_on_requests"], log.n_requests)
        log = BanditLog(log.users[keep], log.actions[keep], log.rewards[keep], log.propensities[keep],
                        log.timestamps[keep], log.user_ids, log.item_ids, log.logging_policies, {},
                        log.action_features, log.source)
    cf = _crossfit(s, log, o, cfg.seed)
    d = cf.ope_data(pol.probs, support_fn(s, o.support_eps))
    res = O.estimate_all(d, _clip(o), float(o.switch_tau), o.n_bootstrap, o.alpha, cfg.seed)
    truth = tv = kl = None
    if s.world is not None:
        truth, tv, kl = true_value(s.world, pol.probs, log.users)
    rows = {}
    for name, e in res.estimates.items():
        r = {"estimate": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high}
        if truth is not None:
            r.update(truth=truth, rel_error=abs(e.value - truth) / truth)
        rows[name] = r
    logged_value = float(log.rewards.sum(axis=1).mean())
    print(f"policy {info['policy']} on {log.n_requests} requests x {log.slate_size} positions "
          f"({log.source}); logger's on-policy value {logged_value:.4f}"
          + (f"; TV(pi, logger) {tv:.3f}, KL {kl:.3f}" if tv is not None else ""))
    print(_table(rows, ["estimate", "ci_low", "ci_high"] + (["truth", "rel_error"] if truth is not None else [])))
    dg = res.diagnostics
    print(f"diagnostics: ESS {dg.ess:.0f}/{dg.n_requests} requests, max weight {dg.max_weight:.1f}, "
          f"mean weight {dg.mean_weight:.3f}, unsupported mass {dg.unsupported_mass:.2%}, "
          f"clipped {dg.clipped_share:.2%}")
    for w in dg.warnings:
        print(f"warning: {w}")
    from recsys.evaluation.ope_report import plot_estimates

    plot = plot_estimates(Path(cfg.paths.output_dir) / "ope.png",
                          {n: (r["estimate"], r["ci_low"], r["ci_high"]) for n, r in rows.items()}, truth,
                          f"OPE of {info['policy']}")
    out = {"command": "ope", **info, "estimates": rows, "true_value": truth, "logged_value": logged_value,
           "total_variation": tv, "kl_divergence": kl, "diagnostics": dg.__dict__, "plot": str(plot),
           "data": data_lineage(s.data), "timings": {"total_s": time.perf_counter() - t0}}
    return out


def bench(cfg: DictConfig) -> dict:
    from recsys.cli.ope_study import run_bench

    return run_bench(cfg)


def regret(cfg: DictConfig) -> dict:
    from recsys.cli.ope_study import run_regret

    return run_regret(cfg)


def align(cfg: DictConfig) -> dict:
    from recsys.cli.ope_study import run_align

    return run_align(cfg)


__all__ = ["ope", "bench", "align", "build_setup", "build_policy", "true_value", "support_fn",
           "resample_impressions"]
