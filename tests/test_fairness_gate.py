"""The fairness_gaps promotion gate (recsys.lifecycle.fairness_gate), tested directly."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.data.prepare import prepare
from recsys.data.splits import LeaveOneOut
from recsys.data.synthetic_source import SyntheticLoader
from recsys.evaluation.ranking import evaluate_ranking
from recsys.lifecycle import gates
from recsys.lifecycle.fairness_gate import FAIL, NOT_AVAILABLE, PASS, fairness_gaps, user_report
from recsys.lifecycle.gates import Candidate, GateContext
from recsys.models.baselines import EASE

SPEC = {"kind": "fairness_gaps", "metric": "ndcg@10", "max_gap": 0.01}


def _run_dir(tmp_path, report, name="run"):
    d = tmp_path / name
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"command": "evaluate", "fairness": report}))
    return Candidate(name="m", version="2", kind="run", lineage={"run_dir": str(d)}, tags={}, path=str(d))


def _world_report(planted: bool, n_boot: int = 300) -> dict:
    """EASE on a synthetic world with (or without) weak-signal users in region=north,
    evaluated exactly, per-user ndcg@10 by region and by group."""
    loader = SyntheticLoader(n_users=1200, n_items=400, seed=1, weak_signal_users="region=north",
                             weak_signal_strength=0.6 if planted else 0.0)
    data = prepare(loader, None, "synthetic", event_types=["click"])
    split = LeaveOneOut().split(data)
    users, items, _ = split.train_arrays()
    model = EASE().fit(users, items, data.n_users, data.n_items)
    es = split.test
    res = evaluate_ranking(model.score, es.users, es.history, es.targets, data.n_items, ks=(10,),
                           keep_per_user=True, device="cpu")
    groupings = {}
    for col in ("region", "group"):
        attr = np.full(data.n_users + 1, None, dtype=object)
        attr[data.users.column("user_idx").to_numpy()] = data.users.column(col).to_pylist()
        groupings[col] = attr[es.users].astype(str)
    return user_report(res.per_user, groupings, ["ndcg@10"], n_boot=n_boot, seed=0)


@pytest.fixture(scope="module")
def planted():
    return _world_report(True)


@pytest.fixture(scope="module")
def clean():
    return _world_report(False)


def test_planted_disparity_is_refused_naming_the_group_and_gap(tmp_path, planted):
    status, line, ev = fairness_gaps({**SPEC, "attributes": ["region"]}, _run_dir(tmp_path, planted),
                                     GateContext(champion=None))
    north = planted["users"]["region"]["groups"]["north"]["ndcg@10"]
    assert north["gap"] < -0.01 and north["gap_ci"][1] < 0  # the plant is there
    assert status == FAIL, line
    assert "region=north" in line and f"{north['gap']:+.4g}" in line and "CI" in line
    refusing = [r for r in ev["groups"] if r["refuses"]]
    assert [(r["attribute"], r["group"]) for r in refusing] == [("region", "north")]
    assert ev["source"].endswith("summary.json")


def test_no_disparity_passes(tmp_path, clean):
    status, line, ev = fairness_gaps({**SPEC, "attributes": ["region"]}, _run_dir(tmp_path, clean),
                                     GateContext(champion=None))
    assert status == PASS, line
    assert "within limits" in line and len(ev["groups"]) == 5 and not any(r["refuses"] for r in ev["groups"])


def test_registered_through_run_gates_decides_like_the_function(tmp_path, planted):
    """The function has the gates' signature: run_gates accepts it under its kind."""
    cand = _run_dir(tmp_path, planted)
    saved = gates.GATES.get("fairness_gaps")
    gates.GATES["fairness_gaps"] = fairness_gaps
    try:
        (res,) = gates.run_gates({"fairness": {**SPEC, "attributes": ["region"], "on_unavailable": "warn"}},
                                 cand, GateContext(champion=None))
    finally:
        gates.GATES["fairness_gaps"] = saved
    assert res.status == FAIL and res.blocks and "region=north" in res.message
    assert (PASS, FAIL, NOT_AVAILABLE) == (gates.PASS, gates.FAIL, gates.NOT_AVAILABLE)


def _arrays_report(gap: float, n: int = 400, seed: int = 0, min_group_size: int = 20) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.where(np.arange(n) % 4 == 0, "young", "old")
    vals = rng.normal(0.0, 0.1, n)
    for g in ("young", "old"):  # exact group means: 0.5 (old) and 0.5 + gap (young)
        m = labels == g
        vals[m] += 0.5 + (gap if g == "young" else 0.0) - vals[m].mean()
    return user_report({"ndcg@10": vals}, {"age": labels}, ["ndcg@10"], n_boot=300, min_group_size=min_group_size)


def test_limits_ratio_and_significance(tmp_path):
    rep = _arrays_report(-0.05)
    cand = _run_dir(tmp_path, rep)
    ctx = GateContext(champion=None)
    assert fairness_gaps({**SPEC, "max_gap": 0.1}, cand, ctx)[0] == PASS  # gap within a looser limit
    status, line, _ = fairness_gaps({**SPEC, "max_gap": 1.0, "min_ratio": 0.95}, cand, ctx)
    assert status == FAIL and "age=young" in line and "ratio 0.9" in line  # 0.45 / 0.5 = 0.9 -> below 0.95
    # a tiny sample: past the limit by the point estimate but the interval includes 0
    small = _run_dir(tmp_path, _arrays_report(-0.01, n=40, min_group_size=5), name="small")
    status, line, ev = fairness_gaps({**SPEC, "max_gap": 0.0}, small, ctx)
    young = next(r for r in ev["groups"] if r["group"] == "young")
    assert young["gap"] < 0 <= young["gap_ci"][1] and young["breach_gap"] and not young["refuses"]
    assert status == PASS and "not significant" in line
    assert fairness_gaps({**SPEC, "max_gap": 0.0, "require_significant": False}, small, ctx)[0] == FAIL
    # groups under the report's min_group_size cannot be checked: not available, never a pass
    tiny = _run_dir(tmp_path, _arrays_report(-0.03, n=12), name="tiny")
    status, line, _ = fairness_gaps(SPEC, tiny, ctx)
    assert status == NOT_AVAILABLE and "age=young (n=3)" in line


def test_not_available_without_a_report_or_metric(tmp_path):
    ctx = GateContext(champion=None)
    d = tmp_path / "bare"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"command": "evaluate"}))
    cand = Candidate(name="m", version="1", kind="run", lineage={}, tags={}, path=str(d))
    status, line, _ = fairness_gaps(SPEC, cand, ctx)
    assert status == NOT_AVAILABLE and "fairness.enabled=true" in line
    idx = Candidate(name="m", version="1", kind="index", lineage={}, tags={}, path=str(d))
    assert fairness_gaps(SPEC, idx, ctx)[0] == NOT_AVAILABLE
    cand = _run_dir(tmp_path, _arrays_report(0.0))
    status, line, _ = fairness_gaps({**SPEC, "metric": "recall@20"}, cand, ctx)
    assert status == NOT_AVAILABLE and "recall@20" in line
    status, line, _ = fairness_gaps({**SPEC, "attributes": ["region"]}, cand, ctx)
    assert status == NOT_AVAILABLE and "region" in line and "age" in line
