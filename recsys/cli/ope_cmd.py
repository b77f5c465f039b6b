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
    """``recsys ope align``: offline NDCG vs OPE estimates vs true value for ``align.variants``."""
    t0 = time.perf_counter()
    s = _setup(cfg)
    variants = {name: partial(instantiate, v) for name, v in cfg.align.variants.items()}
    out = run_align(s, variants, instantiate(cfg.evaluation), EstimatorOptions(**cfg.ope), cfg.seed,
                    cfg.align.k, _plot(cfg, "ope_align.png"))
    print(ope_report.align_report(out))
    print(f"time {time.perf_counter() - t0:.1f}s")
    return _finish(cfg, "ope align", out, s, t0)


def regret(cfg: DictConfig) -> dict:
    """``recsys ope regret``: ``regret.policies`` served online, cumulative regret vs the oracle."""
    t0 = time.perf_counter()
    s = _setup(cfg)
    r = cfg.regret
    unknown = [n for n in r.policies if n not in cfg.policies]
    if unknown:
        raise RecsysError(f"unknown policy {unknown[0]!r} in regret.policies; choose from {sorted(cfg.policies)}")
    out = run_regret(s, {n: instantiate(cfg.policies[n]) for n in r.policies}, r.n_requests, r.batch_size,
                     cfg.seed, _plot(cfg, "regret.png"))
    print(ope_report.regret_report(out))
    return _finish(cfg, "ope regret", out, s, t0)

