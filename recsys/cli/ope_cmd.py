"""``recsys ope`` (one policy), ``recsys ope bench`` (estimators over re-sampled logs),
``recsys ope align`` (offline metric vs OPE vs true online value) and ``recsys ope
regret`` (bandits online): compose -> instantiate -> :mod:`recsys.ope` -> print ->
summary.json. How OPE works is in ``recsys/ope/`` (start at its ``__init__``)."""
from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import data_lineage, load_data, write_summary
from recsys.data.synthetic_source import load_world
from recsys.evaluation import ope_report
from recsys.data.bandit_logs import LogOptions
from recsys.ope import (EstimatorOptions, Setup, build_log_setup, build_policy, build_setup, evaluate_policy,
                        read_log, read_log_only, run_align, run_bench, run_regret)
from recsys.utils.errors import RecsysError


def _data_override() -> tuple[bool, list[str]]:
    """Whether ``data=<name>`` was given on the command line, and any ``data.*`` overrides."""
    task = list(HydraConfig.get().overrides.task)
    keys = [o.split("=", 1)[0].lstrip("+~") for o in task]
    return "data" in keys, [k for k in keys if k.startswith("data.")]


def _setup(cfg: DictConfig) -> Setup:
    """The log and its action set: ``logs=<file>`` alone (the log's items or ``catalogue=``),
    ``logs=<file> data=<name>`` (joined to that catalogue), or the synthetic world's."""
    has_data, data_keys = _data_override()
    if cfg.get("logs"):
        opts = LogOptions.from_mapping(OmegaConf.to_container(cfg.logs_options, resolve=True))  # type: ignore[arg-type]
        if not has_data:
            if data_keys:
                raise RecsysError(f"{data_keys[0]}=... given with logs= but no data=<name>: name the catalogue to "
                                  "join the log to (e.g. data=synthetic), or drop the data.* overrides to use the "
                                  "log's own items")
            return build_log_setup(read_log_only(cfg.logs, opts, cfg.get("catalogue")), cfg.get("catalogue"))
        if cfg.get("catalogue"):
            raise RecsysError("catalogue= and data= both given: the action set comes from one of them")
        data, _ = load_data(cfg)
        return build_setup(data, instantiate(cfg.split).split(data), None, read_log(cfg.logs, data, opts))
    if cfg.get("catalogue"):
        raise RecsysError("catalogue= needs logs=<file> (the synthetic world has its own catalogue)")
    data, _ = load_data(cfg)
    world = load_world(data.extras_dir, data.extras)
    return build_setup(data, instantiate(cfg.split).split(data), world, None)


def _policy(cfg: DictConfig, s: Setup) -> tuple[object, dict]:
    """``cfg.policy`` (configs/policy/<name>.yaml) built on the setup and warmed up."""
    pol, info = build_policy(s, instantiate(cfg.policy), cfg.seed, cfg.warmup.n_requests, cfg.warmup.batch_size)
    return pol, {"policy": HydraConfig.get().runtime.choices.get("policy", "policy"), **info}


def _finish(cfg: DictConfig, command: str, out: dict, s: Setup, t0: float) -> dict:
    out = {"command": command, **out, "data": data_lineage(s.data) if s.data is not None else None, "timings": {"total_s": time.perf_counter() - t0}}
    print(f"summary: {write_summary(cfg, out)}")
    return out


def _plot(cfg: DictConfig, name: str) -> Path:
    return Path(cfg.paths.output_dir) / name


def ope(cfg: DictConfig) -> dict:
    """``recsys ope``: every estimator for ``policy`` on the log, truth beside it on the world's."""
    t0 = time.perf_counter()
    s = _setup(cfg)
    pol, info = _policy(cfg, s)
    out = evaluate_policy(s, pol, info, EstimatorOptions(**cfg.ope), cfg.seed, _plot(cfg, "ope.png"))
    print(ope_report.policy_report(out))
    for w in out["diagnostics"]["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return _finish(cfg, "ope", out, s, t0)


def bench(cfg: DictConfig) -> dict:
    """``recsys ope bench``: bias, RMSE and coverage of every estimator over ``bench.n_seeds`` logs."""
    t0 = time.perf_counter()
    s = _setup(cfg)
    pol, info = _policy(cfg, s)
    b = cfg.bench
    out = run_bench(s, pol, info, EstimatorOptions(**cfg.ope), b.n_seeds, b.n_requests, b.seed_offset,
                    _plot(cfg, "ope_bench.png"))
    print(ope_report.bench_report(out))
    print(f"time {time.perf_counter() - t0:.1f}s")
    return _finish(cfg, "ope bench", out, s, t0)


def align(cfg: DictConfig) -> dict:
    """``recsys ope align``: offline NDCG vs OPE estimates vs true value for ``align.variants``
    (``source=served``: the online loop on served data, :func:`_align_served`)."""
    t0 = time.perf_counter()
    if cfg.get("source", "world") == "served":
        return _align_served(cfg, t0)
    if cfg.get("source", "world") != "world":
        raise RecsysError(f"source={cfg.source!r}: expected world or served")
    s = _setup(cfg)
    variants = {name: partial(instantiate, v) for name, v in cfg.align.variants.items()}
    out = run_align(s, variants, instantiate(cfg.evaluation), EstimatorOptions(**cfg.ope), cfg.seed,
                    cfg.align.k, _plot(cfg, "ope_align.png"))
    print(ope_report.align_report(out))
    print(f"time {time.perf_counter() - t0:.1f}s")
    return _finish(cfg, "ope align", out, s, t0)


def _align_served(cfg: DictConfig, t0: float) -> dict:
    """``recsys ope align source=served``: champion explores -> logs join -> OPE of every variant ->
    canary arms measured online -> ab analyze -> align table (recsys.bench.online_loop)."""
    from recsys.bench.loop_study import build_study
    from recsys.bench.online_loop import LoopPlan, run_loop, weights_from_summary
    from recsys.cli.common import split_data
    from recsys.ope.served_policies import read_serving_config

    sv = OmegaConf.to_container(cfg.served, resolve=True)
    assert isinstance(sv, dict)
    weights = sv.get("mixture_weights")
    if isinstance(weights, str):
        weights_from_summary(weights)  # a bad file is refused before any data or study is built
    elif weights is not None and not isinstance(weights, dict):
        raise RecsysError(f"served.mixture_weights={weights!r}: expected null, a mapping name -> weight or the path "
                          "of a previous loop's summary.json")
    data, _ = load_data(cfg)
    world = load_world(data.extras_dir, data.extras)
    if world is None:
        raise RecsysError(f"data={data.name}: source=served needs the synthetic world (its true click model)")
    out_dir = Path(cfg.paths.output_dir)
    if sv["study"]:
        study = read_serving_config(sv["study"])  # a mapping file: {champion, challengers, offline_ndcg}
        for key in ("champion", "challengers"):
            if key not in study:
                raise RecsysError(f"{sv['study']}: needs a {key}: block (docs/online_loop.md)")
    else:
        task = [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").startswith("data")]
        study = build_study(out_dir / "study", data, split_data(cfg, data), world, task, str(cfg.paths.cache_dir),
                            int(sv["build"]["epochs"]), int(sv["build"]["ranker_steps"]), int(cfg.seed))
    if isinstance(weights, str):  # a previous loop's summary: weights 1 / its OPE estimates
        weights = weights_from_summary(weights, ["champion", *study["challengers"]])
    plan = LoopPlan(n_explore=int(sv["n_explore"]), n_canary=int(sv["n_canary"]), exploration=dict(sv["exploration"]),
                    estimator=str(sv["estimator"]), min_ess=float(sv["min_ess"]), tolerance=float(sv["tolerance"]),
                    seed=int(cfg.seed), n_bootstrap=int(sv["n_bootstrap"]), channel=str(sv["channel"]),
                    post_events=bool(sv["post_events"]), contexts=str(sv["contexts"]),
                    mixture_share=float(sv["mixture_share"]), canary_repeats=int(sv["canary_repeats"]),
                    mixture_weights=weights)
    out = run_loop(world, study["champion"], study["challengers"], out_dir / "loop", plan,
                   study.get("offline_ndcg"))
    cols = ["offline_ndcg", "ope", "online", "online_cuped", "rel_error", "ess"]
    print(ope_report.format_table(out["variants"], cols, label="variant"))
    print(f"OPE ({plan.estimator}) vs online: kendall tau {out['kendall_tau']}, spearman {out['spearman']}; "
          f"offline NDCG vs online: kendall tau {out['offline_ndcg']['kendall_tau']}, "
          f"spearman {out['offline_ndcg']['spearman']}; OPE vs CUPED-adjusted online: kendall tau "
          f"{out['online_cuped']['kendall_tau']}")
    reps = out["canary_repeats"]
    if reps["n"] > 1:
        print(f"online pools {reps['n']} canaries (fresh user splits); OPE vs the first canary alone: kendall tau "
              f"{out['single_canary']['kendall_tau']}; canary vs canary: kendall tau "
              + ", ".join(f"{x:.3f}" for x in reps["kendall_tau_between"]))
    if weights is not None:
        print("mixture weights: " + ", ".join(f"{n} {w / sum(weights.values()):.3f}" for n, w in weights.items()))
    ce = out["champion_explore"]
    print(f"exploring champion: OPE {ce['ope']:.4f} vs online {ce['online']:.4f} (ESS {ce['ess']:.0f})")
    for arm, v in out["ab"]["verdicts"].items():
        print(f"canary {arm}: {v['verdict']} (lift {v['lift']:+.3f}, CUPED p {v['cuped_p_value']:.3g})")
    out = {"command": "ope align", "source": "served", **out, "study": study,
           "data": data_lineage(data), "timings": {**out["timings"], "total_s": time.perf_counter() - t0}}
    print(f"summary: {write_summary(cfg, out)}")
    return out


def regret(cfg: DictConfig) -> dict:
    """``recsys ope regret``: ``regret.policies`` served online, cumulative regret vs the oracle."""
    t0 = time.perf_counter()
    s = _setup(cfg)
    r = cfg.regret
    unknown = [n for n in r.policies if n not in cfg.policies]
    if unknown:
        raise RecsysError(f"unknown policy {unknown[0]!r} in regret.policies; choose from {sorted(cfg.policies)}")
    out = run_regret(s, {n: instantiate(cfg.policies[n]) for n in r.policies}, r.n_requests, r.batch_size,
                     cfg.seed, _plot(cfg, "regret.png"), r.get("log_dir"))
    print(ope_report.regret_report(out))
    for name, info in out.get("logs", {}).items():
        print(f"log {name}: {info['path']} ({info['requests']} requests, {info['clicks_per_request']:.4f} clicks/request)")
    return _finish(cfg, "ope regret", out, s, t0)

