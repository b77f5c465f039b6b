"""A/B statistics against scipy and textbook values, the exposure format, the
archive, the report, the simulation checks and the ``recsys ab`` commands."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from recsys.evaluation import ab
from recsys.evaluation.ab_report import markdown_report, plot_metric_by_arm, plot_sequential
from recsys.experiments.analysis import analyze
from recsys.experiments.archive import ArchiveError, list_archives, load_archive, write_archive
from recsys.experiments.assignment import ExperimentDesign
from recsys.experiments.checks import cuped_check, run_checks, sequential_check
from recsys.experiments.exposures import metric_specs, read_experiment, write_experiment
from recsys.experiments.simulate import DEFAULT_METRICS, SimulationSpec, simulate_experiment
from recsys.utils.errors import DataError
from tests.helpers import run

DESIGN = ExperimentDesign("exp", "exp-salt", {"control": 0.5, "treatment": 0.5})
SPECS = metric_specs(DEFAULT_METRICS)


# -- statistics against references -------------------------------------------------------

def test_welch_matches_scipy():
    rng = np.random.default_rng(0)
    yc, yt = rng.exponential(2.0, 300), rng.exponential(2.3, 450)
    got = ab.welch_test(*ab.summarize(yc), *ab.summarize(yt), alpha=0.05)
    ref = stats.ttest_ind(yt, yc, equal_var=False)
    assert got["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert got["df"] == pytest.approx(ref.df, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_two_proportion_ztest_matches_chi2_contingency():
    x_c, n_c, x_t, n_t = 480, 10_000, 560, 10_200
    got = ab.two_proportion_ztest(x_c, n_c, x_t, n_t)
    chi2, p, _, _ = stats.chi2_contingency([[x_c, n_c - x_c], [x_t, n_t - x_t]], correction=False)
    assert got["z"] ** 2 == pytest.approx(chi2, rel=1e-10)
    assert got["p_value"] == pytest.approx(p, rel=1e-10)
    assert got["diff"] == pytest.approx(x_t / n_t - x_c / n_c)


def test_tests_broadcast_over_simulations():
    got = ab.two_proportion_ztest(np.array([480, 500]), 10_000, np.array([560, 500]), 10_000)
    assert got["p_value"].shape == (2,) and got["p_value"][1] == pytest.approx(1.0)


def test_delta_method_lift_interval_covers():
    rng = np.random.default_rng(1)
    yc, yt = rng.exponential(2.0, (2000, 400)), rng.exponential(2.2, (2000, 400))
    lift = ab.relative_lift(yc.mean(1), yc.var(1, ddof=1), 400, yt.mean(1), yt.var(1, ddof=1), 400)
    coverage = np.mean((lift["ci_low"] <= 0.1) & (0.1 <= lift["ci_high"]))
    assert 0.93 <= coverage <= 0.97


def test_srm_fires_on_52_48_not_on_fair_split():
    assert ab.srm_test([52_000, 48_000], [0.5, 0.5])["flagged"]
    assert not ab.srm_test([50_100, 49_900], [0.5, 0.5])["flagged"]
    fair = np.random.default_rng(2).multinomial(100_000, [0.5, 0.3, 0.2])
    assert not ab.srm_test(fair, [5, 3, 2])["flagged"]  # shares are normalised


def test_sample_size_textbook_values():
    # baseline 10%, absolute MDE 1 point, alpha .05 two-sided, power .8: ~14,750 per arm
    n = ab.sample_size(0.01, baseline_rate=0.1)
    assert 14_740 <= n <= 14_760
    assert ab.sample_size(0.1, baseline_rate=0.1, relative=True) == n
    assert ab.sample_size(0.1, std=1.0) == 1570  # 2 (1.96 + 0.8416)^2 / 0.1^2 = 1569.8
    assert ab.sample_size(0.1, std=1.0, variance_reduction=0.5) == 785
    assert float(ab.power(n, 0.01, baseline_rate=0.1)) == pytest.approx(0.8, abs=1e-3)
    assert ab.mde(n, baseline_rate=0.1) == pytest.approx(0.01, rel=1e-3)
    assert ab.mde(1570, std=1.0) == pytest.approx(0.1, rel=1e-3)


def test_cuped_theta_is_within_arm_ols_slope():
    rng = np.random.default_rng(3)
    x = rng.normal(size=1000)
    arm = np.repeat([0, 1], 500)
    y = 2.0 * x + 5.0 * arm + rng.normal(size=1000)  # a big effect must not leak into theta
    xc = x - np.where(arm == 1, x[arm == 1].mean(), x[arm == 0].mean())
    yc = y - np.where(arm == 1, y[arm == 1].mean(), y[arm == 0].mean())
    assert ab.cuped_theta(y, x, arm) == pytest.approx(np.polyfit(xc, yc, 1)[0], rel=1e-10)


def test_cuped_unbiased_and_lower_variance():
    res = cuped_check(n_sims=200, n_per_arm=1000, correlation=0.7, seed=4)
    assert abs(res["cuped_bias"]) < 4 * res["cuped_bias_se"]
    assert res["cuped_variance_reduction_across_sims"] > 0.25
    assert res["cuped_variance_reduction"] > 0.25


def test_msprt_valid_under_peeking_naive_is_not():
    res = sequential_check(n_sims=300, n_max=2000, look_every=50, seed=5)
    assert res["sequential_fpr"] <= 0.05 + 0.03  # 0.05 plus sampling slack at 300 sims
    assert res["naive_peeking_fpr"] > 0.12


def test_msprt_p_values_monotone_and_scalar():
    out = ab.msprt(np.array([0.5, 0.1, 0.3]), np.array([1.0, 0.5, 0.1]), tau=0.5)
    assert np.all(np.diff(out["p_value"]) <= 0) and np.all(np.diff(out["ci_high"] - out["ci_low"]) <= 0)
    assert np.ndim(ab.msprt(0.3, 0.01, tau=0.1)["p_value"]) == 0


def test_run_checks_small():
    res = run_checks(scale=0.2)
    for key in ("aa_false_positive_rate", "aa_interval", "planned_power", "measured_power",
                "cuped_variance_reduction", "sequential_fpr", "naive_peeking_fpr"):
        assert key in res
    assert res["aa_interval"][0] <= res["aa_false_positive_rate"] <= res["aa_interval"][1]
    assert abs(res["measured_power"] - res["planned_power"]) < 0.1


# -- exposure file, analysis, archive, report ----------------------------------------------

def _sim(tmp_path: Path, lift: float = 0.0, n: int = 6000, seed: int = 0, name: str = "exp.parquet") -> Path:
    table = simulate_experiment(DESIGN, SimulationSpec(n_users=n, lifts={"treatment": lift}, seed=seed))
    return write_experiment(table, tmp_path / name)


def _modified(tmp_path: Path, src: Path, **columns) -> Path:
    import pyarrow.parquet as pq

    t = pq.read_table(src)
    for name, values in columns.items():
        t = t.drop_columns([name]).append_column(name, values) if values is not None else t.drop_columns([name])
    return write_experiment(t, tmp_path / f"bad{len(list(tmp_path.iterdir()))}.parquet")


def test_read_validates(tmp_path):
    good = _sim(tmp_path, n=500)
    import pyarrow.parquet as pq

    t = pq.read_table(good)
    n = t.num_rows
    rev = t.column("revenue").to_numpy().copy()
    rev[7] = np.nan
    arms = t.column("arm").to_pylist()
    cases = [
        (_modified(tmp_path, good, revenue=None), ["bad", "'revenue'", "missing"]),
        (_modified(tmp_path, good, revenue=pa.array(rev)), ["'revenue'", "nan", "row 7"]),
        (_modified(tmp_path, good, arm=pa.array(["x" if i == 3 else a for i, a in enumerate(arms)])),
         ["'arm'", "unknown arm 'x'", "row 3"]),
        (_modified(tmp_path, good, arm=pa.array(["control"] * n)), ["arm 'treatment' has no rows"]),
        (_modified(tmp_path, good, user_id=pa.array(["u1"] * n)), ["'user_id'", "u1", "one row per user"]),
        (_modified(tmp_path, good, click=pa.array(np.full(n, 2, np.int8))), ["'click'", "0 or 1"]),
        (_modified(tmp_path, good, revenue=pa.array(["a"] * n)), ["'revenue'", "numeric"]),
    ]
    for path, phrases in cases:
        with pytest.raises(DataError) as err:
            read_experiment(path, SPECS, ["control", "treatment"])
        msg = str(err.value)
        assert "\n" not in msg
        for phrase in phrases:
            assert phrase.lower() in msg.lower(), (phrase, msg)
    with pytest.raises(DataError, match="not found"):
        read_experiment(tmp_path / "nope.parquet", SPECS, ["control", "treatment"])
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="Parquet"):
        read_experiment(tmp_path / "junk.parquet", SPECS, ["control", "treatment"])


def test_analysis_finds_true_lift_and_checks_assignment(tmp_path):
    path = _sim(tmp_path, lift=0.15, n=8000, seed=1)
    data = read_experiment(path, SPECS, ["control", "treatment"], timestamp_col="timestamp")
    res = analyze(data, DESIGN)
    r = res["results"]
    assert r["revenue/treatment/significant"] == 1.0 and r["revenue/treatment/cuped_p_value"] < 1e-4
    assert r["revenue/treatment/lift_ci_low"] < 0.15 < r["revenue/treatment/lift_ci_high"]
    assert r["revenue/cuped_variance_reduction"] > 0.2
    assert r["assignment/mismatch_rate"] == 0.0 and r["srm/flagged"] == 0.0
    assert len(res["metrics"]["revenue"]["comparisons"]["treatment"]["sequential"]["curve"]["p_value"]) == 20
    # flip a few arms: the assignment re-check counts them; drop treatment users: SRM fires
    data.arm[:50] = np.where(data.arm[:50] == "control", "treatment", "control")
    assert analyze(data, DESIGN)["assignment"]["mismatches"] == 50
    keep = (data.arm == "control") | (np.arange(data.n) % 10 != 0)
    for field in ("user_id", "arm"):
        setattr(data, field, getattr(data, field)[keep])
    data.metrics = {k: v[keep] for k, v in data.metrics.items()}
    data.covariates = {k: v[keep] for k, v in data.covariates.items()}
    data.timestamp = data.timestamp[keep]
    assert analyze(data, DESIGN)["srm"]["flagged"]


def test_archive_round_trip_and_tamper(tmp_path):
    results = {"results": {"revenue/treatment/lift": 0.05}, "nested": [1, 2.5, None]}
    kw = dict(config={"a": 1}, assignment=DESIGN.to_dict(), data={"sha256": "ab" * 32}, results=results)
    p1 = write_archive(tmp_path / "arch", "exp", now=1_800_000_000.0, **kw)
    p2 = write_archive(tmp_path / "arch", "exp", now=1_800_000_000.0, **kw)  # same second: no overwrite
    assert p1 != p2 and p1.name == "exp-20270115T080000Z"
    back = load_archive(p1)
    assert back["results"] == results and back["assignment"]["salt"] == "exp-salt"
    assert ExperimentDesign.from_dict(back["assignment"]) == DESIGN
    assert list_archives(tmp_path / "arch", "exp") == [p1, p2]
    assert not [p for p in (tmp_path / "arch").iterdir() if p.name.startswith(".")]  # no temp dirs left
    (p1 / "results.json").write_text(json.dumps({"results": {"revenue/treatment/lift": 0.5}}))
    with pytest.raises(ArchiveError, match="sha256"):
        load_archive(p1)
    with pytest.raises(ArchiveError, match="manifest"):
        load_archive(tmp_path)


def test_report_and_plots(tmp_path):
    data = read_experiment(_sim(tmp_path, lift=0.1, n=3000), SPECS, ["control", "treatment"],
                           timestamp_col="timestamp")
    res = analyze(data, DESIGN)
    png = [plot_metric_by_arm(res, tmp_path / "m.png"), plot_sequential(res, tmp_path / "s.png")]
    for p in png:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = markdown_report(res, "exp", {"Metric by arm": "m.png"})
    assert "| revenue | treatment |" in md and "![Metric by arm](m.png)" in md
    data.timestamp = None
    assert plot_sequential(analyze(data, DESIGN), tmp_path / "none.png") is None


# -- command line ----------------------------------------------------------------------------

def test_cli_plan_prints_sample_size(tmp_path):
    res = run("ab", "plan", "baseline_rate=0.1", "mde=0.01", "relative=false", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert 14_740 <= out["n_per_arm"] <= 14_760 and out["n_total"] == 2 * out["n_per_arm"]
    res = run("ab", "plan", "mde=0.01", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "baseline_rate" in res.stderr


def test_cli_simulate_then_analyze(tmp_path):
    sim_dir, an_dir = tmp_path / "sim", tmp_path / "an"
    res = run("ab", "simulate", "simulation.n_users=4000", "simulation.lifts.treatment=0.2",
              f"hydra.run.dir={sim_dir}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = run("ab", "analyze", f"path={sim_dir / 'experiment.parquet'}", "experiment.name=cli",
              "experiment.salt=demo-2026", "columns.timestamp=timestamp", f"hydra.run.dir={an_dir}",
              f"archive.dir={tmp_path / 'arch'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((an_dir / "summary.json").read_text())
    assert summary["results"]["revenue/treatment/significant"] == 1.0
    assert summary["results"]["assignment/mismatch_rate"] == 0.0
    assert len(summary["data"]["sha256"]) == 64
    assert {"report.md", "metric_by_arm.png", "sequential.png"} <= {p.name for p in an_dir.iterdir()}
    archived = load_archive(summary["archive"])
    assert archived["data"]["sha256"] == summary["data"]["sha256"]
    assert archived["results"]["results"] == summary["results"]


@pytest.mark.parametrize("bad", ["missing", "column"])
def test_cli_analyze_bad_file_exits_2_with_one_line(tmp_path, bad):
    path = tmp_path / "missing.parquet"
    if bad == "column":
        path = write_experiment(pa.table({"user_id": ["a", "b"], "arm": ["control", "treatment"]}),
                                tmp_path / "nocol.parquet")
    res = run("ab", "analyze", f"path={path}", f"hydra.run.dir={tmp_path / 'run'}",
              f"archive.dir={tmp_path / 'arch'}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and path.name in lines[0]
    assert ("not found" if bad == "missing" else "'click'") in lines[0]
    assert not (tmp_path / "arch").exists()


def test_cli_simulate_checks_writes_summary_keys(tmp_path):
    res = run("ab", "simulate", "checks=true", "check_scale=0.1", "simulation.n_users=500",
              f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("aa_false_positive_rate", "aa_interval", "planned_power", "measured_power",
                "cuped_variance_reduction", "sequential_fpr", "naive_peeking_fpr"):
        assert key in summary, key
