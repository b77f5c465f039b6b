"""Feedback-loop simulation (recsys.lifecycle.feedback_loop) and `recsys lifecycle simulate`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.data.synthetic import SyntheticConfig, generate_world
from recsys.lifecycle.feedback_loop import LoopConfig, Mitigation, compare_arms, explore, initial_matrix, run_loop
from tests.helpers import run

# a small world in which the plain loop concentrates exposure (measured: Gini 0.9225 -> 0.9290 in 3 cycles)
WORLD = SyntheticConfig(n_users=800, n_items=400, seed=0)
LOOP = LoopConfig(n_cycles=3, log_weight=3.0, seed=0)
RERANK = Mitigation(rerank_weight=0.3, rerank_candidates=10)


@pytest.fixture(scope="module")
def world():
    return generate_world(WORLD)


@pytest.fixture(scope="module")
def arms(world):
    return compare_arms(world, LOOP, RERANK)


def test_plain_loop_concentrates_exposure_and_mitigation_rises_less(arms):
    base = [r["gini"] for r in arms["baseline"]["cycles"]]
    mit = [r["gini"] for r in arms["mitigated"]["cycles"]]
    assert len(base) == len(mit) == 3
    assert base[-1] - base[0] > 0.002, base  # the loop concentrates exposure
    assert arms["gini_rise"]["baseline"] == pytest.approx(base[-1] - base[0])
    assert arms["gini_rise"]["mitigated"] < arms["gini_rise"]["baseline"]
    assert arms["gini_rise_cut"] == pytest.approx(1 - (mit[-1] - mit[0]) / (base[-1] - base[0]))
    assert max(mit) < min(base)  # the re-ranker spreads exposure in every cycle
    for arm in ("baseline", "mitigated"):
        for r in arms[arm]["cycles"]:
            assert 0.0 <= r["true_ctr"] <= 1.0 and 0.0 < r["coverage"] <= 1.0 and 0.0 <= r["diversity"] <= 1.0
    # the plain loop's lists change from cycle to cycle only because the model is refit on the logged clicks
    assert len({round(r["gini"], 12) for r in arms["baseline"]["cycles"]}) == 3


def test_true_ctr_equals_a_direct_computation(world):
    res = run_loop(world, LoopConfig(n_cycles=2, seed=3), Mitigation(epsilon=0.1), keep_lists=True)
    t = world.truth
    for c in range(2):
        served = res["served"][c]  # (U, K)
        u = np.arange(1, WORLD.n_users + 1)[:, None]
        logit = np.einsum("ukd,ukd->uk", np.broadcast_to(t["user_factors"][u], served.shape + (WORLD.dim,)),
                          t["item_factors"][served])
        logit += t["relevance_pop_weight"][0] * t["user_pop_sensitivity"][u] * t["item_bias"][served]
        p = t["position_bias"][None, :] / (1.0 + np.exp(-(logit + t["relevance_offset"][0])))
        assert res["cycles"][c]["true_ctr"] == pytest.approx(float(p.mean()), rel=1e-9)
        exp = np.zeros(WORLD.n_items + 1)
        np.add.at(exp, served, np.broadcast_to(1.0 / np.log2(np.arange(served.shape[1]) + 2.0), served.shape))
        v = np.sort(exp[1:])
        n = len(v)
        g = np.sum((2 * np.arange(1, n + 1) - n - 1) * v) / (n * v.sum())
        assert res["cycles"][c]["gini"] == pytest.approx(g, rel=1e-9)
        assert res["cycles"][c]["coverage"] == pytest.approx(len(np.unique(served)) / WORLD.n_items)


def test_exploration_propensities_are_exact_marginals():
    n_rows, n_items, k, eps = 20000, 50, 4, 0.2
    slates = np.tile(np.array([[3, 1, 7, 9]]), (n_rows, 1))
    served, prop = explore(slates, n_items, eps, np.random.default_rng(0))
    flipped = served != slates
    assert flipped.mean() == pytest.approx(eps, abs=0.01)
    assert not np.isin(served[flipped], slates[0]).any() and (served > 0).all()
    assert all(len(set(row)) == k for row in served[:500])  # distinct within a list
    assert np.allclose(prop[~flipped], 1 - eps) and np.allclose(prop[flipped], eps / (n_items - k))
    # empirical frequency of one explored item at position 0 vs its logged propensity
    assert (served[:, 0] == 2).mean() == pytest.approx(eps / (n_items - k), rel=0.25)


def test_propensity_weighted_retraining_changes_the_refit(world):
    x0 = initial_matrix(world)
    assert x0.shape == (WORLD.n_users + 1, WORLD.n_items + 1) and x0[0].sum() == 0
    plain = run_loop(world, LoopConfig(n_cycles=2, seed=0), Mitigation(epsilon=0.05), x0=x0)
    ipw = run_loop(world, LoopConfig(n_cycles=2, seed=0), Mitigation(epsilon=0.05, propensity_weighting=True), x0=x0)
    # same first cycle (same model, same draws); the second differs only through the weighted refit
    assert plain["cycles"][0] == ipw["cycles"][0]
    assert plain["cycles"][1]["gini"] != ipw["cycles"][1]["gini"]


def test_bad_mitigation_values_are_refused():
    with pytest.raises(ValueError, match="epsilon"):
        Mitigation(epsilon=1.0)
    with pytest.raises(ValueError, match="n_cycles"):
        LoopConfig(n_cycles=0)


def test_cli_writes_summary_and_png(tmp_path):
    out = tmp_path / "run"
    res = run("lifecycle", "simulate", "cycles=2", "world.n_users=300", "world.n_items=150",
              "mitigation.rerank_weight=0.3", f"hydra.run.dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    s = json.loads((out / "summary.json").read_text())
    assert [r["cycle"] for r in s["cycles"]] == [1, 2]
    assert {"gini/baseline", "gini/mitigated", "true_ctr/baseline", "coverage/mitigated",
            "diversity/baseline"} <= set(s["cycles"][0])
    assert s["goal_status"] in ("pass", "fail") and s["goal_met"] == (s["goal_status"] == "pass")
    assert s["goal_met"] == (s["gini_rise_cut"] >= 0.5 and s["ctr_cost"] < 0.05)
    assert (out / "feedback_loop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    full = json.loads((out / "feedback_loop.json").read_text())
    assert full["baseline"]["cycles"][1]["gini"] == s["cycles"][1]["gini/baseline"]
    assert "gini/baseline" in res.stdout and "true-CTR cost" in res.stdout


@pytest.mark.parametrize("arg,needle", [("mitigation.epsilon=1.5", "epsilon"), ("world_dir=NOPE", "world_dir=")])
def test_cli_bad_input_is_one_line(tmp_path, arg, needle):
    out = tmp_path / "run"
    arg = arg.replace("NOPE", str(tmp_path / "missing"))
    res = run("lifecycle", "simulate", arg, f"hydra.run.dir={out}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert not (out / "summary.json").exists() and not (out / "feedback_loop.png").exists()
