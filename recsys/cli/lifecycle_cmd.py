"""``recsys lifecycle ...``: thin commands over :mod:`recsys.lifecycle`.

* ``simulate``: the feedback-loop simulation
  (:mod:`recsys.lifecycle.feedback_loop`), without and with mitigation; prints a
  table per cycle and writes ``feedback_loop.json``, ``feedback_loop.png`` and
  ``summary.json`` to the run directory.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import write_summary
from recsys.utils.errors import RecsysError


def simulate(cfg: DictConfig) -> dict[str, Any]:
    from recsys.data.synthetic import SyntheticConfig, SyntheticWorld, generate_world
    from recsys.lifecycle.feedback_loop import (LoopConfig, Mitigation, compare_arms, format_table,
                                                per_cycle_table, write_results)

    try:
        loop = LoopConfig(n_cycles=int(cfg.cycles), seed=int(cfg.seed), **OmegaConf.to_container(cfg.loop, resolve=True))
        mitigation = Mitigation(**OmegaConf.to_container(cfg.mitigation, resolve=True))
    except (ValueError, TypeError) as e:
        raise RecsysError(f"config: {e}") from e
    if cfg.world_dir:
        wdir = Path(str(cfg.world_dir))
        if not (wdir / "config.json").is_file():
            raise RecsysError(f"world_dir={wdir}: not a saved synthetic world (expected {wdir / 'config.json'})")
        try:
            world = SyntheticWorld.load(wdir)
        except (ValueError, OSError, KeyError, TypeError) as e:
            raise RecsysError(f"world_dir={wdir}: cannot load the saved world: {e}") from e
    else:
        try:
            world = generate_world(SyntheticConfig(**OmegaConf.to_container(cfg.world, resolve=True)))
        except (ValueError, TypeError) as e:
            raise RecsysError(f"config 'world': {e}") from e
    try:
        result = compare_arms(world, loop, mitigation, min_rise_cut=float(cfg.goal.min_gini_rise_cut),
                              max_ctr_cost=float(cfg.goal.max_ctr_cost))
    except ValueError as e:
        raise RecsysError(str(e)) from e
    files = write_results(result, cfg.paths.output_dir)
    print(format_table(result))
    print(f"gini rise: baseline {result['gini_rise']['baseline']:+.4f}, mitigated {result['gini_rise']['mitigated']:+.4f}"
          f" -> cut {result['gini_rise_cut']:.1%} (goal >= {cfg.goal.min_gini_rise_cut:.0%}); true-CTR cost "
          f"{result['ctr_cost']:+.2%} (goal < {cfg.goal.max_ctr_cost:.0%}): {'PASS' if result['goal_met'] else 'FAIL'}")
    summary = {"command": "lifecycle simulate", "cycles": per_cycle_table(result),
               **{k: result[k] for k in ("gini_rise", "mean_true_ctr", "gini_rise_cut", "ctr_cost", "goal", "goal_met")},
               "goal_status": "pass" if result["goal_met"] else "fail", "world": asdict(world.config),
               "files": {k: str(v) for k, v in files.items()},
               "timings": {arm: result[arm]["timings"] for arm in ("baseline", "mitigated")}}
    print(f"summary: {write_summary(cfg, summary)}")
    return summary


def watch(cfg: DictConfig) -> dict[str, Any]:
    """``recsys lifecycle watch``: the drift decision on the champion of ``name``; past the
    rule: retrain, challenger, gates, canary fragment (:mod:`recsys.lifecycle.watch`)."""
    import json

    from hydra.utils import instantiate

    from recsys.lifecycle.drift_watch import WatchRule
    from recsys.lifecycle.watch import Canary, watch as run_watch

    def plain(node: Any) -> Any:
        return OmegaConf.to_container(node, resolve=True) if node is not None else None

    res = run_watch(instantiate(cfg.registry), str(cfg.name), reference=str(cfg.reference), current=str(cfg.current),
                    rule=WatchRule.from_mapping(plain(cfg.rule)), out_dir=str(cfg.out),
                    time_column=str(cfg.time_column), window_s=cfg.window_s, n_windows=cfg.n_windows,
                    window=plain(cfg.window), overrides=plain(cfg.overrides), gates=plain(cfg.gates),
                    canary=Canary(**plain(cfg.canary)), dry_run=bool(cfg.dry_run), who=cfg.who,
                    retrain_timeout_s=float(cfg.retrain_timeout_s))
    print(("dry run: " if res["dry_run"] else "") + res["reason"])
    print("windows flagged: " + "".join("x" if f else "." for f in res["flagged"]))
    if res.get("challenger"):
        for gate, status in res["gates"].items():
            print(f"  {gate:<20} {status}")
        print(f"challenger {cfg.name} v{res['challenger']} registered from {res['run_dir']}")
        if not res["data_moved"]:
            print("warning: the retrain's data fingerprint equals the champion's: window= did not move the data")
        print(f"canary fragment: {res['canary']}" if res["canary"] else f"no canary: {res['refusal']}")
    if not res["dry_run"]:
        print(f"evidence: {cfg.out}")
    print(json.dumps({k: v for k, v in res.items() if k != "flagged"}, default=str))
    return res
