"""The online gates (issue 15, item 2) called directly: ``ope_lcb`` on a served log of
the synthetic world (whose true policy values are known) for a better, an equal and a
worse candidate; ``canary_ab`` on real ``recsys.experiments.analysis`` results (clean,
broken guardrail, sample-ratio mismatch, rolled back by the service)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from recsys.data.bandit_logs import synthetic_log_table
from recsys.data.synthetic import SyntheticConfig, generate_world
from recsys.experiments.analysis import AnalysisOptions, analyze
from recsys.experiments.assignment import ExperimentDesign
from recsys.experiments.exposures import ExperimentData
from recsys.lifecycle.gates import Candidate, GateContext
from recsys.lifecycle.online_gates import canary_ab, ope_lcb
from recsys.utils.errors import DataError

CAND = Candidate("ctr", "2", "ranker", {}, {}, "/nowhere")
CTX = GateContext(champion=None)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("ope")
    world = generate_world(SyntheticConfig(n_users=300, n_items=80, n_categories=4, n_requests=6000, seed=3))
    pq.write_table(synthetic_log_table(world), base / "log.parquet")
    users = np.arange(1, 301)
    logger = world.logging_distribution(users)[:, 1:]  # (300, 80)
    rel = world.truth["position_bias"][0] * world.relevance(users[:, None], np.arange(1, 81)[None, :])

    def policy(name: str, probs: np.ndarray) -> tuple[Path, float]:
        probs = probs / probs.sum(axis=1, keepdims=True)
        rows = [(str(u), str(j + 1), float(probs[i, j])) for i, u in enumerate(users) for j in range(80)]
        p = base / f"{name}.parquet"
        pl.DataFrame(rows, schema=["user_id", "item_id", "prob"], orient="row").write_parquet(p)
        full = np.zeros((300, 81))
        full[:, 1:] = probs
        return p, world.policy_value(full, users)

    better = logger * np.exp(3.0 * (rel - rel.mean(axis=1, keepdims=True)) / rel.std(axis=1, keepdims=True))
    worse = logger * np.exp(-3.0 * (rel - rel.mean(axis=1, keepdims=True)) / rel.std(axis=1, keepdims=True))
    return {"log": base / "log.parquet", "base": base, "logged": world.policy_value(np.c_[np.zeros(300), logger],
                                                                                   users),
            "same": policy("same", logger), "better": policy("better", better), "worse": policy("worse", worse)}


def test_ope_lcb_passes_a_better_candidate_and_refuses_a_worse_one(served):
    better_path, better_true = served["better"]
    worse_path, worse_true = served["worse"]
    assert better_true > 1.1 * served["logged"] > served["logged"] > 1.1 * worse_true  # the planted ordering
    st, msg, ev = ope_lcb({"log": str(served["log"]), "target": str(better_path), "tolerance": 0.0,
                           "n_bootstrap": 200}, CAND, CTX)
    assert st == "pass", msg
    assert ev["ci_low"] >= ev["champion_value"] and ev["estimate"] == pytest.approx(better_true, rel=0.05)
    assert "DR" in msg and "lower bound" in msg and ev["n_requests"] == 6000
    st, msg, ev = ope_lcb({"log": str(served["log"]), "target": str(worse_path), "tolerance": 0.05,
                           "n_bootstrap": 200}, CAND, CTX)
    assert st == "fail" and ev["ci_low"] < ev["threshold"], msg
    # the logger itself: DR of the same policy is the logged value; within a 10% tolerance it passes
    same_path, _ = served["same"]
    st, msg, ev = ope_lcb({"log": str(served["log"]), "target": str(same_path), "tolerance": 0.1,
                           "estimator": "snips", "n_bootstrap": 200}, CAND, CTX)
    assert st == "pass" and ev["estimate"] == pytest.approx(ev["champion_value"], rel=1e-9), msg


def test_ope_lcb_inputs(served):
    assert ope_lcb({}, CAND, CTX)[0] == "not_available"
    assert ope_lcb({"log": str(served["log"])}, CAND, CTX)[0] == "not_available"
    with pytest.raises(DataError, match="file not found"):
        ope_lcb({"log": str(served["base"] / "nope.parquet"), "target": "x"}, CAND, CTX)
    bad = served["base"] / "bad.parquet"
    pl.read_parquet(served["same"][0]).with_columns(pl.col("prob") * 2).write_parquet(bad)
    with pytest.raises(DataError, match="sum to 2, expected 1"):
        ope_lcb({"log": str(served["log"]), "target": str(bad)}, CAND, CTX)


def _summary(tmp: Path, name: str, n_c: int, n_t: int, p_c: float, p_t: float) -> Path:
    rng = np.random.default_rng(0)
    arm = np.array(["champion"] * n_c + ["ctr_v2"] * n_t)
    click = np.r_[rng.random(n_c) < p_c, rng.random(n_t) < p_t].astype(np.float64)
    data = ExperimentData("canary.parquet", np.arange(n_c + n_t).astype(str), arm, {"click": click},
                          {"click": "binary"})
    res = analyze(data, ExperimentDesign("canary", "s", {"champion": 1.0, "ctr_v2": 1.0}),
                  AnalysisOptions(check_assignment=False))
    p = tmp / f"{name}.json"
    p.write_text(json.dumps({"command": "ab analyze", "analysis": res}, default=float))
    return p


def test_canary_ab(tmp_path):
    guards = {"click": {"higher_is_better": True, "max_relative_harm": 0.02}}
    ok = _summary(tmp_path, "ok", 4000, 4000, 0.10, 0.10)
    st, msg, ev = canary_ab({"summary": str(ok), "guardrails": guards}, CAND, CTX)
    assert st == "pass" and "SRM clean" in msg and ev["guardrails"]["click"]["held"], msg
    harm = _summary(tmp_path, "harm", 4000, 4000, 0.10, 0.06)
    st, msg, ev = canary_ab({"summary": str(harm), "guardrails": guards}, CAND, CTX)
    assert st == "fail" and "guardrail click broken" in msg and ev["guardrails"]["click"]["ci_high"] < -0.02
    srm = _summary(tmp_path, "srm", 4400, 3600, 0.10, 0.10)
    st, msg, _ = canary_ab({"summary": str(srm), "guardrails": guards}, CAND, CTX)
    assert st == "fail" and "SRM p=" in msg
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"arms": {"ctr_v2": {"rolled_back": {"reasons": ["latency_p99"]}}}}))
    st, msg, _ = canary_ab({"summary": str(ok), "guardrails": guards, "experiment_state": str(state)}, CAND, CTX)
    assert st == "fail" and "rolled the arm back (latency_p99)" in msg
    assert canary_ab({}, CAND, CTX)[0] == "not_available"
    with pytest.raises(DataError, match="arm 'other' is not in the experiment"):
        canary_ab({"summary": str(ok), "guardrails": guards, "arm": "other"}, CAND, CTX)


def test_registered_in_run_gates(served, monkeypatch, tmp_path):
    """Registered under their kinds (as gates.py will: GATES["ope_lcb"] = ope_lcb, ...), they
    run through run_gates with its statuses; a bad input becomes not_available, never a pass."""
    from recsys.lifecycle import gates as G
    from recsys.lifecycle import online_gates as OG

    assert (OG.PASS, OG.FAIL, OG.NOT_AVAILABLE) == (G.PASS, G.FAIL, G.NOT_AVAILABLE)
    monkeypatch.setitem(G.GATES, "ope_lcb", ope_lcb)
    monkeypatch.setitem(G.GATES, "canary_ab", canary_ab)
    ok = _summary(tmp_path, "ok", 4000, 4000, 0.10, 0.10)
    specs = {"ope_lcb": {"kind": "ope_lcb", "log": str(served["log"]), "target": str(served["worse"][0]),
                         "n_bootstrap": 100},
             "canary_ab": {"kind": "canary_ab", "summary": str(ok), "guardrails": {"click": {}}},
             "ope_bad": {"kind": "ope_lcb", "log": str(served["log"]), "target": str(tmp_path / "missing.parquet"),
                         "on_unavailable": "refuse"}}
    res = {r.gate: r for r in G.run_gates(specs, CAND, CTX)}
    assert res["ope_lcb"].status == "fail" and res["ope_lcb"].blocks
    assert res["canary_ab"].status == "pass" and not res["canary_ab"].blocks
    assert res["ope_bad"].status == "not_available" and "file not found" in res["ope_bad"].message
    assert "ope_lcb failed" in G.refusal_line("ctr", "2", list(res.values()))
