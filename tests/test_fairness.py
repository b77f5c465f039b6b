"""Fairness: metrics by user group with bootstrap intervals, item exposure, the
exposure-aware re-ranker, and the planted-disparity check on the synthetic world."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from recsys.data.prepare import prepare
from recsys.data.splits import LeaveOneOut
from recsys.data.synthetic import SyntheticConfig, generate_world
from recsys.data.synthetic_source import SyntheticLoader
from recsys.evaluation.fairness import (activity_groups, exposure_report, gini, group_metrics, item_exposure,
                                        list_ndcg, nan_mean, paired_difference_ci, position_weights)
from recsys.evaluation.fairness_report import FairnessOptions, format_fairness, item_groups
from recsys.evaluation.fairness_study import disparity_trial, planted_disparity_study
from recsys.evaluation.ranking import evaluate_ranking, exclude, top_k_items
from recsys.models.baselines import EASE, Popularity
from recsys.policies.exposure import exposure_order, exposure_rerank
from recsys.schema import EventType
from recsys.training.baselines import EvalOptions, evaluate_split

from tests.helpers import run


# ----------------------------------------------------------------- numpy core
def test_group_metrics_gap_and_intervals() -> None:
    rng = np.random.default_rng(0)
    a = rng.binomial(1, 0.30, 400).astype(float)
    b = rng.binomial(1, 0.10, 300).astype(float)
    labels = np.array(["a"] * 400 + ["b"] * 300)
    rep = group_metrics({"hr": np.concatenate([a, b])}, labels, ["hr"], n_boot=500, seed=1)
    ga, gb = rep["groups"]["a"]["hr"], rep["groups"]["b"]["hr"]
    assert ga["mean"] == pytest.approx(a.mean()) and gb["mean"] == pytest.approx(b.mean())
    assert ga["gap"] == pytest.approx(a.mean() - b.mean()) and gb["gap"] == pytest.approx(-ga["gap"])
    assert ga["ci"][0] < ga["mean"] < ga["ci"][1]
    assert ga["gap_ci"][0] > 0 and gb["gap_ci"][1] < 0  # a real difference: interval excludes 0
    s = rep["summary"]["hr"]
    assert (s["worst"], s["best"]) == ("b", "a") and s["min_ratio"] == pytest.approx(b.mean() / a.mean())
    # the interval of a difference of independent means: about 2 * 1.96 * its standard error wide
    se = np.sqrt(a.var() / 400 + b.var() / 300)
    assert (ga["gap_ci"][1] - ga["gap_ci"][0]) == pytest.approx(2 * 1.96 * se, rel=0.15)
    # same seed -> same numbers; small groups report n only
    assert group_metrics({"hr": np.concatenate([a, b])}, labels, ["hr"], n_boot=500, seed=1) == rep
    small = group_metrics({"hr": np.concatenate([a, b])}, labels, ["hr"], n_boot=50, min_group_size=350)
    assert small["groups"]["b"] == {"n": 300} and "mean" in small["groups"]["a"]["hr"] and small["summary"] == {}


def test_null_gaps_are_covered_at_the_nominal_rate() -> None:
    """No true difference: the 95% gap interval excludes 0 in about 5% of samples."""
    rng = np.random.default_rng(2)
    hits = 0
    for s in range(100):
        v = rng.exponential(size=300)
        rep = group_metrics({"m": v}, np.where(rng.random(300) < 0.3, "x", "y"), ["m"], n_boot=300, seed=s)
        lo, hi = rep["groups"]["x"]["m"]["gap_ci"]
        hits += lo > 0 or hi < 0
    assert hits <= 12


def test_activity_groups_and_paired_difference() -> None:
    labels = activity_groups(np.array([1, 2, 3, 4, 5, 6, 7, 8]), 4)
    assert list(labels) == ["Q1 [1, 2]"] * 2 + ["Q2 [3, 4]"] * 2 + ["Q3 [5, 6]"] * 2 + ["Q4 [7, 8]"] * 2
    assert len(set(activity_groups(np.array([3, 3, 3, 3, 9]), 4))) == 2  # ties never split
    rng = np.random.default_rng(0)
    base = rng.random(500)
    res = paired_difference_ci(base + 0.05 + 0.01 * rng.standard_normal(500), base, n_boot=400)
    assert res["mean"] == pytest.approx(0.05, abs=0.003) and 0 < res["ci"][0] < 0.05 < res["ci"][1]


def test_exposure_report_by_hand() -> None:
    top = np.array([[1, 2], [1, 3], [1, 0]])  # item 1 at position 0 three times
    w = position_weights(2)
    exp = item_exposure(top, 4)
    assert exp.tolist() == pytest.approx([0.0, 3 * w[0], w[1], w[1], 0.0])
    groups = np.array([0, 0, 0, 1, 1])  # items 1, 2 -> group 0; 3, 4 -> group 1
    merit = np.array([0.0, 1.0, 1.0, 1.0, 1.0])
    rep = exposure_report(top, groups, merit, ["a", "b"])
    share_a = (3 * w[0] + w[1]) / (3 * w[0] + 2 * w[1])
    assert rep["groups"]["a"]["exposure_share"] == pytest.approx(share_a)
    assert rep["groups"]["a"]["relevance_share"] == 0.5
    assert rep["exposure_to_relevance_max"] == pytest.approx(share_a / 0.5)
    assert rep["exposure_relevance_tv"] == pytest.approx(share_a - 0.5)
    assert rep["item_coverage"] == 0.75 and rep["item_gini"] == pytest.approx(gini(exp[1:]))
    assert gini(np.ones(5)) == 0.0 and gini(np.array([0, 0, 0, 1.0])) == pytest.approx(0.75)


# ----------------------------------------------------------------- synthetic world
@pytest.fixture(scope="module")
def small_data():
    data = prepare(SyntheticLoader(n_users=600, n_items=300, seed=1), None, "s", event_types=["click"])
    return data, LeaveOneOut().split(data)


def test_list_ndcg_matches_the_exact_evaluator(small_data) -> None:
    data, split = small_data
    users, items, _ = split.train_arrays()
    model = EASE(l2=50.0).fit(users, items, data.n_users, data.n_items)
    es = split.test
    res = evaluate_ranking(model.score, es.users, es.history, es.targets, data.n_items, ks=(10,), top_k=10,
                           keep_per_user=True, device="cpu")
    mine = list_ndcg(res.top_items, es.targets.row_ids(), es.targets.indices)
    np.testing.assert_allclose(mine, res.per_user["ndcg@10"], rtol=1e-12)


def test_evaluate_split_fairness_section_leaves_metrics_unchanged(small_data) -> None:
    data, split = small_data
    plain = evaluate_split(Popularity(), data, split, EvalOptions(device="cpu"))
    opts = EvalOptions(device="cpu", fairness=FairnessOptions(enabled=True, n_bootstrap=200))
    fair = evaluate_split(Popularity(), data, split, opts)
    report = fair.pop("fairness")
    t1, t2 = plain.pop("timings"), fair.pop("timings")
    assert fair == plain and "fairness_s" in t2 and "fairness_s" not in t1
    assert set(report["users"]) == {"activity", "group", "age_bucket", "region", "n_devices"}
    act = report["users"]["activity"]["groups"]
    assert len(act) == 4 and sum(g["n"] for g in act.values()) == plain["test/n_users"]
    n = report["users"]["group"]["groups"]
    overall = sum(g["n"] * g["ndcg@10"]["mean"] for g in n.values()) / sum(g["n"] for g in n.values())
    assert overall == pytest.approx(plain["test/ndcg@10"])
    items = report["items"]
    assert items["column"] == "category" and 0 < items["item_gini"] <= 1
    assert sum(g["exposure_share"] for g in items["groups"].values()) == pytest.approx(1.0)
    assert sum(g["relevance_share"] for g in items["groups"].values()) == pytest.approx(1.0)
    text = format_fairness(report)
    assert "region" in text and "exposure (top-10" in text
    json.dumps(report)  # goes into summary.json as is


def test_default_world_unchanged_and_knob_validated() -> None:
    base = SyntheticConfig(n_users=200, n_items=120, seed=4)
    off = SyntheticConfig(n_users=200, n_items=120, seed=4, weak_signal_users="region=north")
    w0, w1 = generate_world(base), generate_world(off)
    for name in ("events", "users", "items", "impressions"):
        assert getattr(w0, name).equals(getattr(w1, name))
    assert "user_signal_noise" not in w0.truth
    assert SyntheticLoader(n_users=200).fingerprint_config()["synthetic"].keys() >= {"n_users", "seed"}
    assert "weak_signal_strength" not in SyntheticLoader(n_users=200).fingerprint_config()["synthetic"]
    on = generate_world(SyntheticConfig(n_users=200, n_items=120, seed=4, weak_signal_users="region=north",
                                        weak_signal_strength=0.5))
    region = np.array(on.users.column("region").to_pylist())
    noise = on.truth["user_signal_noise"][1:]
    assert (noise[region == "north"] == 0.5).all() and (noise[region != "north"] == 0).all()
    assert on.users.equals(w0.users) and on.items.equals(w0.items)  # only behaviour moves
    for bad in ({"weak_signal_strength": 0.5}, {"weak_signal_users": "planet=mars", "weak_signal_strength": 0.5},
                {"weak_signal_users": "region=north", "weak_signal_strength": 1.0}):
        with pytest.raises(ValueError, match="weak_signal"):
            SyntheticConfig(**bad)
    with pytest.raises(ValueError, match="matches no user"):
        generate_world(SyntheticConfig(n_users=50, n_items=40, weak_signal_users="region=atlantis",
                                       weak_signal_strength=0.5))


def test_planted_noise_keeps_next_item_distribution_exact() -> None:
    """Chi-square of (first item, item at step s) counts against the exact law,
    with half of the users' steps uniform noise (as in test_synthetic)."""
    cfg = SyntheticConfig(n_users=4000, n_items=30, n_categories=3, seq_len_mean=5.0, min_seq_len=3,
                          n_requests=10, seed=11, weak_signal_users="group=g0", weak_signal_strength=0.6)
    world = generate_world(cfg)
    ev = world.events.filter(pc.equal(world.events["event_type"], EventType.CLICK.value))
    user = np.asarray(ev["user_id"].to_numpy(zero_copy_only=False)).astype(np.int64)
    item = np.asarray(ev["item_id"].to_numpy(zero_copy_only=False)).astype(np.int64)
    order = np.lexsort((ev["timestamp"].to_numpy(), user))
    user, item = user[order], item[order]
    b = np.flatnonzero(np.concatenate([[True], user[1:] != user[:-1]]))
    m = cfg.n_items + 1
    for step in range(3):
        key = item[b] if step else np.zeros(len(b), dtype=np.int64)
        observed, expected = np.zeros((m, m)), np.zeros((m, m))
        np.add.at(observed, (key, item[b + step]), 1.0)
        for r, u in enumerate(user[b]):
            dist = world.next_item_distribution(int(u), item[b[r]: b[r] + step])
            expected[key[r]] += dist
        ok = expected >= 5
        chi2 = ((observed[ok] - expected[ok]) ** 2 / expected[ok]).sum() / ok.sum()
        assert chi2 < 1.6, (step, chi2)


# ----------------------------------------------------------------- re-ranker
def test_rerank_without_weight_is_plain_ranking_and_state_carries() -> None:
    cand = np.array([[5, 3, 9, 0], [2, 5, 7, 1]])
    scores = np.array([[0.1, 0.9, 0.5, 0.0], [3.0, 2.0, 1.0, 0.5]])
    top, state = exposure_rerank(cand, scores, 3, weight=0.0)
    assert top.tolist() == [[3, 9, 5], [2, 5, 7]]
    assert state[5] == pytest.approx(position_weights(3)[2] + position_weights(3)[1])
    top2, state2 = exposure_rerank(cand[:1], scores[:1], 4, weight=0.0)
    assert top2.tolist() == [[3, 9, 5, 0]]  # an empty candidate slot stays empty
    # item 3 is already over-exposed in the carried state: a strong penalty moves it down
    top3, _ = exposure_rerank(cand[:1], scores[:1], 3, weight=5.0, state=state * 0 + np.eye(10)[3] * 100)
    assert top3[0, 0] != 3
    with pytest.raises(ValueError):
        exposure_rerank(cand, scores, 5)


def test_exposure_order_by_string_ids_carries_state() -> None:
    items, scores, groups = ["a", "b", "c", "d", "e"], [5.0, 4.0, 3.0, 2.0, 1.0], ["x", "x", "x", "y", "y"]
    plain, st0 = exposure_order(items, scores, groups, 3, weight=0.0)
    assert plain == items and st0["x"] == pytest.approx(position_weights(3).sum()) and st0["y"] == 0
    state, shares = None, []
    for _ in range(20):
        ordered, state = exposure_order(items, scores, groups, 3, state=state, target_share={"x": 0.5, "y": 0.5},
                                        weight=1.0)
        assert sorted(ordered) == items and ordered[0] == "a"  # a permutation; the best item keeps its place
    assert state["y"] / (state["x"] + state["y"]) > 0.2  # by score alone y would get 0 exposure in the top 3
    with pytest.raises(ValueError):
        exposure_order(items, scores[:2], groups, 3)


def test_rerank_cuts_exposure_concentration_at_a_measured_cost(small_data) -> None:
    data, split = small_data
    users, items, _ = split.train_arrays()
    model = EASE(l2=50.0).fit(users, items, data.n_users, data.n_items)
    es = split.test
    scores = torch.tensor(model.score(es.users, es.history))
    exclude(scores, es.history)
    cand = top_k_items(scores, 50).numpy()
    cs = np.take_along_axis(scores.numpy(), cand, axis=1)
    rows, tgt = es.targets.row_ids(), es.targets.indices
    codes, names = item_groups(data, "category")

    def measure(top):
        rep = exposure_report(top, codes, np.bincount(tgt, minlength=data.n_items + 1), names)
        return nan_mean(list_ndcg(top, rows, tgt)), rep

    base_ndcg, base = measure(exposure_rerank(cand, cs, 10, weight=0.0)[0])
    ndcg, rep = measure(exposure_rerank(cand, cs, 10, weight=0.1)[0])
    assert rep["item_gini"] < base["item_gini"] - 0.02  # item-level: less concentrated
    assert rep["item_coverage"] > base["item_coverage"]
    assert ndcg > 0.85 * base_ndcg  # at a bounded relevance cost
    # category-level against the catalogue share: exposure moves toward the target
    cat_share = np.bincount(codes[1:]).astype(float)
    top_c, _ = exposure_rerank(cand, cs, 10, item_group=codes, target_share=cat_share, weight=0.5)
    ndcg_c, rep_c = measure(top_c)

    def tv_to_catalogue(r):
        return 0.5 * sum(abs(g["exposure_share"] - g["catalogue_share"]) for g in r["groups"].values())

    assert tv_to_catalogue(rep_c) < tv_to_catalogue(base) - 0.05
    assert rep_c["group_gini"] < base["group_gini"] and ndcg_c > 0.8 * base_ndcg


# ----------------------------------------------------------------- planted disparity
def test_planted_disparity_is_detected_and_absent_when_not_planted() -> None:
    """Fast version of the study (2 seeds); the 20-seed run is the slow test below."""
    res = planted_disparity_study(seeds=(0, 1), n_boot=500)
    for t in res["trials"]:
        if t["planted"]:
            assert t["below_zero"] and t["gap"] < -0.05, t
        else:
            assert not t["excludes_zero"], t


def test_planted_disparity_works_on_a_behavioural_group_too() -> None:
    """The knob also plants on a synthetic group (which differs naturally too):
    the planted world's gap is far below the unplanted one's."""
    small = {"weak_users": "group=g1", "n_boot": 200, "n_users": 1200, "n_items": 600}
    on = disparity_trial(3, True, **small)
    off = disparity_trial(3, False, **small)
    assert on["below_zero"] and on["gap"] < off["gap"] - 0.05


@pytest.mark.slow
def test_planted_disparity_study_20_seeds() -> None:
    res = planted_disparity_study(seeds=tuple(range(20)))
    assert res["detection_rate"] >= 0.95
    assert res["false_positive_rate"] <= 0.10


def test_evaluate_command_prints_and_writes_fairness(tmp_path) -> None:
    run_dir = tmp_path / "run"
    res = run("evaluate", "model=popularity", "data.n_users=300", "data.n_items=150",
              f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}",
              "evaluation.fairness.n_bootstrap=200", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "fairness: ndcg@10 by user group" in res.stdout and "exposure (top-10" in res.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"activity", "group", "region"} <= set(summary["fairness"]["users"])
    assert summary["fairness"]["items"]["column"] == "category"
