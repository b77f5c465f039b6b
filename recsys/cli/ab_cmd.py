"""``recsys ab analyze | plan | simulate``: A/B tests from logged exposures.

* ``analyze path=<parquet>``: validate, analyse (SRM, Welch / z-test, lift, CUPED,
  MDE, mSPRT), write ``report.md`` + PNG plots + ``summary.json`` into the run dir
  and an audit archive under ``archive.dir``.
* ``plan baseline_rate=0.05 mde=0.02``: sample size per arm, printed as JSON.
* ``simulate``: a synthetic experiment Parquet (``checks=true`` adds the
  simulation checks of the statistics to ``summary.json``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import write_summary
from recsys.utils.errors import RecsysError


def _design(cfg: DictConfig) -> Any:
    from recsys.experiments.assignment import ExperimentDesign

    exp = OmegaConf.to_container(cfg.experiment, resolve=True)
    try:
        return ExperimentDesign.from_dict({**exp, "salt": exp.get("salt") or ""})
    except (ValueError, KeyError, TypeError) as e:
        raise RecsysError(f"config 'experiment': {e}") from e


def analyze(cfg: DictConfig) -> dict:
    from recsys.evaluation.ab_report import markdown_report, plot_metric_by_arm, plot_sequential
    from recsys.experiments.analysis import AnalysisOptions, analyze as run_analysis
    from recsys.experiments.archive import write_archive
    from recsys.experiments.exposures import metric_specs, read_experiment
    from recsys.utils.io import sha256_file, write_text_atomic

    t0 = time.perf_counter()
    design = _design(cfg)
    try:
        specs = metric_specs(OmegaConf.to_container(cfg.metrics, resolve=True))
        opts = AnalysisOptions(**{**OmegaConf.to_container(cfg.analysis, resolve=True),
                                  "check_assignment": bool(cfg.experiment.salt)})
    except (ValueError, TypeError) as e:
        raise RecsysError(f"config: {e}") from e
    data = read_experiment(cfg.path, specs, list(design.arms), user_col=cfg.columns.user_id,
                           arm_col=cfg.columns.arm, timestamp_col=cfg.columns.get("timestamp"))
    result = run_analysis(data, design, opts)
    out_dir = Path(cfg.paths.output_dir)
    plots = {"Metric by arm": plot_metric_by_arm(result, out_dir / "metric_by_arm.png").name}
    seq_png = plot_sequential(result, out_dir / "sequential.png")
    if seq_png is not None:
        plots["Sequential p-value and confidence sequence"] = seq_png.name
    lineage = {"path": str(Path(cfg.path).resolve()), "sha256": sha256_file(cfg.path), "n_rows": data.n,
               "columns": OmegaConf.to_container(cfg.columns, resolve=True)}
    report = markdown_report(result, design.name, plots, {"data": f"`{cfg.path}` (sha256 {lineage['sha256'][:16]})",
                                                          "salt": f"`{design.salt or '(not given)'}`"})
    write_text_atomic(out_dir / "report.md", report)
    archive = None
    if cfg.archive.enabled:
        archive = write_archive(cfg.archive.dir, design.name, config=OmegaConf.to_container(cfg, resolve=True),
                                assignment=design.to_dict(), data=lineage, results=result)
    summary = {"command": "ab analyze", "experiment": design.name, "results": result["results"],
               "analysis": result, "data": lineage, "report": str(out_dir / "report.md"),
               "archive": str(archive) if archive else None, "timings": {"total_s": time.perf_counter() - t0}}
    path = write_summary(cfg, summary)
    print(_table(result))
    print(f"report: {out_dir / 'report.md'}")
    if archive:
        print(f"archive: {archive}")
    print(f"summary: {path}")
    return result["results"]


def _table(result: dict) -> str:
    srm = result["srm"]
    rows = [f"SRM: p={srm['p_value']:.3g} {'FLAGGED' if srm['flagged'] else 'ok'}  arms={result['arms']}",
            f"{'metric':<12}{'arm':<12}{'lift':>9}{'p':>10}{'cuped p':>10}{'seq p':>10}  significant"]
    for name, m in result["metrics"].items():
        for arm, c in m["comparisons"].items():
            cp = c["cuped"]["p_value"] if "cuped" in c else float("nan")
            sp = c["sequential"].get("p_value", c["sequential"]["p_value_final_look"])
            rows.append(f"{name:<12}{arm:<12}{c['lift']['lift']:>+9.2%}{c['p_value']:>10.3g}{cp:>10.3g}"
                        f"{sp:>10.3g}  {'yes' if c['significant'] else 'no'}")
    return "\n".join(rows)


def plan(cfg: DictConfig) -> dict:
    from recsys.evaluation import ab

    binary = cfg.baseline_rate is not None
    if not binary and cfg.std is None:
        raise RecsysError("plan: give baseline_rate=<p> (binary metric) or std=<sd> [baseline_mean=<m>] (continuous)")
    if cfg.arms < 2:
        raise RecsysError(f"plan: arms must be >= 2, got {cfg.arms}")
    alpha = ab.bonferroni(cfg.alpha, cfg.arms - 1) if cfg.correction == "bonferroni" else cfg.alpha
    kw = {"baseline_rate": cfg.baseline_rate} if binary else {"std": cfg.std, "baseline_mean": cfg.baseline_mean}
    try:
        n = ab.sample_size(cfg.mde, relative=cfg.relative, alpha=alpha, power_target=cfg.power,
                           two_sided=cfg.two_sided, variance_reduction=cfg.variance_reduction, **kw)
    except ValueError as e:
        raise RecsysError(f"plan: {e}") from e
    base = cfg.baseline_rate if binary else cfg.baseline_mean
    effect = cfg.mde * base if cfg.relative else cfg.mde
    out = {"metric": "binary" if binary else "continuous", "baseline": base, "mde": cfg.mde,
           "mde_kind": "relative" if cfg.relative else "absolute", "mde_absolute": effect,
           "alpha": cfg.alpha, "alpha_per_comparison": alpha, "power": cfg.power, "two_sided": cfg.two_sided,
           "arms": cfg.arms, "variance_reduction": cfg.variance_reduction,
           "n_per_arm": n, "n_total": n * cfg.arms}
    if cfg.daily_users:
        out["days"] = float(n * cfg.arms / (cfg.daily_users * cfg.traffic))
    print(json.dumps(out, indent=2))
    return out


def simulate(cfg: DictConfig) -> dict:
    from recsys.experiments.exposures import write_experiment
    from recsys.experiments.simulate import SimulationSpec, simulate_experiment

    t0 = time.perf_counter()
    design = _design(cfg)
    try:
        spec = SimulationSpec(**OmegaConf.to_container(cfg.simulation, resolve=True))
    except (ValueError, TypeError) as e:
        raise RecsysError(f"config 'simulation': {e}") from e
    world = None
    if cfg.world is not None:
        from recsys.data.synthetic import SyntheticConfig, generate_world

        world = generate_world(SyntheticConfig(**OmegaConf.to_container(cfg.world, resolve=True)))
    table = simulate_experiment(design, spec, world)
    out = write_experiment(table, cfg.output)
    summary: dict[str, Any] = {"command": "ab simulate", "experiment": design.name, "output": str(out),
                               "n_rows": table.num_rows, "design": design.to_dict(), "simulation": spec.to_dict()}
    print(f"wrote {table.num_rows} users to {out} (salt {design.salt!r})")
    print(f"analyse: recsys ab analyze path={out} experiment.name={design.name} experiment.salt={design.salt} "
          "columns.timestamp=timestamp")
    if cfg.checks:
        from recsys.experiments.checks import run_checks

        checks = run_checks(scale=cfg.check_scale, alpha=cfg.alpha, seed=cfg.seed)
        summary["checks"] = checks
        summary.update({k: v for k, v in checks.items() if k != "timings"})
        print(json.dumps({k: v for k, v in checks.items() if not isinstance(v, str)}, indent=2))
    summary["timings"] = {"total_s": time.perf_counter() - t0}
    print(f"summary: {write_summary(cfg, summary)}")
    return summary
