"""The online loop end to end on a small world with three variants (champion =
index + DCN-v2 ranker; ANN scores only; static catalogue order): real `recsys
serve` processes on loopback, logs join, OPE from the champion's exploration log,
canary arms, ab analyze, the align table. OPE of the exploring champion matches
the value it was measured to have online."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.bench.online_loop import LoopPlan, run_loop, weights_from_summary
from recsys.data.synthetic import SyntheticConfig, generate_world
from recsys.utils.errors import RecsysError
from tests.helpers import run
from tests.service_helpers import build_bundles


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return build_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.mark.slow
def test_loop_end_to_end_three_variants(paths, tmp_path):
    world = generate_world(SyntheticConfig(n_users=120, n_items=80, n_categories=4, n_requests=2000, seed=3))
    champion = {"bundles": {k: str(paths[k]) for k in ("index", "ranker", "catalogue", "users")},
                "caps": {"user_item": None}, "diversity": {"method": "none"},
                "decision_log": {"flush_interval_s": 0.2},
                # generous budgets: a loaded test machine must not turn a slow stage into a fallback level
                "budgets": {"state_ms": 1000, "queue_ms": 1000, "query_ms": 1000, "retrieve_ms": 1000,
                            "rank_ms": 2000}}
    challengers = {"ann_only": {"ranker": None}, "static": {"index": None, "ranker": None}}
    plan = LoopPlan(n_explore=600, n_canary=450, n_bootstrap=10, min_ess=50, canary_repeats=2,
                    mixture_weights={"champion": 1.0, "ann_only": 1.0, "static": 2.0})
    out = run_loop(world, champion, challengers, tmp_path, plan,
                   offline_ndcg={"champion": 0.3, "ann_only": 0.2, "static": 0.1})
    rows = out["variants"]
    assert list(rows) == ["champion", "ann_only", "static"]
    for r in rows.values():
        assert {"offline_ndcg", "ope", "online", "ess", "DR", "SNIPS"} <= set(r)
        assert r["online_requests"] > 100 and 0 < r["online"] < 5
    # two canaries, each its own user split: online pools them (request-weighted), each reported beside
    c1, c2 = out["canary"]
    assert c1["salt"] != c2["salt"] and c1["requests"] == c2["requests"] == 450
    users = lambda c: {n: a["users"] for n, a in c["arms"].items()}  # noqa: E731
    assert users(c1) != users(c2)
    for n, r in rows.items():
        per = [c["arms"][n] for c in (c1, c2)]
        assert r["online_per_canary"] == [a["true_value"]["mean"] for a in per]
        assert r["online_requests"] == sum(a["requests"] for a in per)
        assert r["online"] == pytest.approx(sum(a["requests"] * a["true_value"]["mean"] for a in per)
                                            / r["online_requests"])
        assert r["online_ci"][0] < r["online"] < r["online_ci"][1]
    assert out["canary_repeats"]["n"] == 2 and len(out["canary_repeats"]["kendall_tau_between"]) == 1
    assert -1 <= out["single_canary"]["kendall_tau"] <= 1
    assert rows["static"]["levels"] == {"static": rows["static"]["online_requests"]}
    assert rows["champion"]["levels"] == {"personalised": rows["champion"]["online_requests"]}
    for key in ("kendall_tau", "spearman"):
        assert -1 <= out[key] <= 1 and -1 <= out["offline_ndcg"][key] <= 1 and -1 <= out["online_cuped"][key] <= 1
    for r in rows.values():  # CUPED keeps the arm's mean (pre-period clicks are independent of the arm)
        assert abs(r["online_cuped"] - r["online"]) < 0.25 * r["online"]
    # the exploring champion's OPE on its own log = its measured online value
    self_ = out["champion_explore"]
    assert self_["ess"] > 250 and self_["rel_error"] < 0.15
    # the exploration mixes in every variant's greedy slate (share 0.5; weights 1, 1, 2 of 4): a variant's importance
    # weights are at most 1 / (0.5 v), so its ESS is near 600 * 0.5 * v or more (catalogue order got an ESS of 7 from
    # a softmax around the champion alone), and its OPE is close to its canary arm
    assert out["plan"]["mixture_share"] == 0.5
    # static weighs 2 of 4: its greedy slate is a quarter of the log (propensity >= 0.25 at each position)
    log = pq.read_table(tmp_path / "ope_log.parquet").to_pandas()
    assert log["logging_policy"].str.contains("mixture(share=0.5,candidates=3,weighted)", regex=False).all()
    assert (log["propensity"] >= 0.25 - 1e-9).mean() > 0.2
    for name, v in (("champion", 0.25), ("ann_only", 0.25), ("static", 0.5)):
        r = rows[name]
        assert r["ess"] > 0.8 * 600 * 0.5 * v and r["rel_error"] < 0.4, (name, r["ess"], r["rel_error"])
    assert np.mean([r["rel_error"] for r in rows.values()]) < 0.2
    assert set(out["goals"]["within_10%_where_ess_ge_50"]) == {n for n, r in rows.items() if r["ess"] >= 50}
    ab = out["ab"]
    assert set(ab["arms"]) == {"champion", "ann_only", "static"} and not ab["srm"]["flagged"]
    assert ab["assignment"]["mismatches"] == 0  # the service's arms are the ones ab recomputes from the salt
    assert set(ab["verdicts"]) == {"ann_only", "static"}
    assert out["logs_join"]["requests"] == 600
    assert (tmp_path / "online_loop.png").is_file()
    json.dumps(out)  # JSON-ready


def test_loop_refuses_a_challenger_named_champion(paths, tmp_path):
    with pytest.raises(RecsysError, match="none named 'champion'"):
        run_loop(None, {"bundles": {"catalogue": str(paths["catalogue"])}}, {"champion": {}}, tmp_path)
    with pytest.raises(RecsysError, match="expected DR or SNIPS"):
        run_loop(None, {}, {"a": {}}, tmp_path, LoopPlan(estimator="IPS"))
    with pytest.raises(RecsysError, match="mixture_share=1.5: expected 0 <= value <= 1"):
        run_loop(None, {}, {"a": {}}, tmp_path, LoopPlan(mixture_share=1.5))
    with pytest.raises(RecsysError, match="canary_repeats=0: expected >= 1"):
        run_loop(None, {}, {"a": {}}, tmp_path, LoopPlan(canary_repeats=0))
    with pytest.raises(RecsysError, match=r"mixture_weights: expected a weight for champion and every challenger"):
        run_loop(None, {}, {"a": {}}, tmp_path, LoopPlan(mixture_weights={"a": 1.0}))
    with pytest.raises(RecsysError, match="given with mixture_share=0"):
        run_loop(None, {}, {"a": {}}, tmp_path, LoopPlan(mixture_share=0.0, mixture_weights={"champion": 1, "a": 1}))
    assert not np.any([p.name.startswith("explore") for p in tmp_path.iterdir()])


def test_mixture_weights_from_a_previous_loop_are_one_over_its_ope(tmp_path):
    """Weights 1 / OPE (equal relative precision), floored at a quarter of the median
    estimate; a previous summary without one of this study's variants is refused."""
    prev = tmp_path / "summary.json"
    prev.write_text(json.dumps({"variants": {"champion": {"ope": 0.7}, "pop": {"ope": 0.3}, "zero": {"ope": 0.01},
                                             "old": {"ope": 0.9}}}))
    w = weights_from_summary(prev, ["champion", "pop", "zero"])
    assert w["pop"] / w["champion"] == pytest.approx(0.7 / 0.3)
    assert w["zero"] == pytest.approx(1 / (0.25 * 0.3))  # floored: median 0.3
    with pytest.raises(RecsysError, match="'new'"):
        weights_from_summary(prev, ["champion", "new"])
    with pytest.raises(RecsysError, match="no such file"):
        weights_from_summary(tmp_path / "nope.json", ["champion"])
    assert set(weights_from_summary(prev)) == {"champion", "pop", "zero", "old"}  # the file checked on its own


def test_align_refuses_a_missing_prior_summary_in_one_line_before_building_anything(tmp_path):
    res = run("ope", "align", "source=served", f"served.mixture_weights={tmp_path / 'nope.json'}",
              f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0 and len(lines) == 1, res.stderr[-2000:]
    assert "served.mixture_weights=" in lines[0] and "no such file" in lines[0]
    assert not (tmp_path / "run" / "study").exists() and not (tmp_path / "run" / "summary.json").exists()
