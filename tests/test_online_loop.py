"""The online loop end to end on a small world with three variants (champion =
index + DCN-v2 ranker; ANN scores only; static catalogue order): real `recsys
serve` processes on loopback, logs join, OPE from the champion's exploration log,
canary arms, ab analyze, the align table. OPE of the exploring champion matches
the value it was measured to have online."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.bench.online_loop import LoopPlan, run_loop
from recsys.data.synthetic import SyntheticConfig, generate_world
from recsys.utils.errors import RecsysError
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
    plan = LoopPlan(n_explore=600, n_canary=450, n_bootstrap=10, min_ess=50, canary_repeats=2)
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
    # the exploration mixes in every variant's greedy slate (share 0.5 over 3 variants): each variant's weights
    # are at most 6, so its ESS is near 600 / 6 or more (catalogue order got an ESS of 7 from a softmax around
    # the champion alone), and its OPE is close to its canary arm
    assert out["plan"]["mixture_share"] == 0.5
    for name, r in rows.items():
        assert r["ess"] > 80 and r["rel_error"] < 0.4, (name, r["ess"], r["rel_error"])
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
    assert not np.any([p.name.startswith("explore") for p in tmp_path.iterdir()])
