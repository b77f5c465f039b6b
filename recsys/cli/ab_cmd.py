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
    from recsys.evaluation.ab_report import markdown_report, plot_metric_by_arm, plot_sequential, result_table
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
    print(result_table(result))
    print(f"report: {out_dir / 'report.md'}")
    if archive:
        print(f"archive: {archive}")
    print(f"summary: {path}")
    return result["results"]


def plan(cfg: DictConfig) -> dict:
    from recsys.evaluation.ab import plan_sample_size

    try:
        out = plan_sample_size(**{k: cfg[k] for k in ("baseline_rate", "std", "baseline_mean", "mde", "relative",
                                                       "alpha", "power", "two_sided", "arms", "correction",
                                                       "variance_reduction", "daily_users", "traffic")})
    except ValueError as e:
        raise RecsysError(f"plan: {e}") from e
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
