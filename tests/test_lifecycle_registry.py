"""The model registry on a real MLflow SQLite store (issue 15, items 1-3): three tiny
SASRec runs (2, 12 and 1 epochs) registered as versions; the first is promoted (no
champion yet), the 12-epoch one beats it in the paired test and is promoted, the
planted 1-epoch challenger is refused naming the offline gate and its numbers;
rollback restores the previous champion, also in a running decision service after
one reload; every step is in the hash-chained audit trail; a model card is written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from recsys.lifecycle.audit import AuditTrail
from recsys.lifecycle.gates import GateRefused
from recsys.lifecycle.registry import Registry, RegistryError
from tests.helpers import ROOT, run

TRAIN = ["experiment=sasrec_synthetic", "data.n_users=300", "data.n_items=120", "~logger",
         "trainer.enable_progress_bar=false", "callbacks.early_stopping.patience=20"]
EPOCHS = (2, 12, 1)  # v1: first champion, v2: better, v3: the planted worse challenger


def shipped_gates(fairness: bool = False) -> dict:
    """The gates of configs/registry.yaml; without the fairness gate unless asked (these
    short SASRec runs have a real region gap on the synthetic world, which that gate
    refuses: tests/test_fairness_gate.py tests it)."""
    gates = yaml.safe_load((ROOT / "recsys" / "configs" / "registry.yaml").read_text())["gates"]
    return gates if fairness else {k: g for k, g in gates.items() if k != "fairness_gaps"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("runs")
    r = run("train", "-m", *TRAIN, f"trainer.max_epochs={','.join(map(str, EPOCHS))}",
            f"paths.cache_dir={base / 'cache'}", f"hydra.sweep.dir={base / 'sweep'}", cwd=base,
            env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return [base / "sweep" / str(i) for i in range(len(EPOCHS))]


@pytest.fixture(scope="module")
def reg(tmp_path_factory) -> Registry:
    return Registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def evaluator():
    from recsys.cli.registry_cmd import run_evaluator

    return run_evaluator()


@pytest.fixture(scope="module")
def promoted(reg, runs, evaluator) -> dict:
    """The gate sequence, recorded for the tests below."""
    gates = shipped_gates()
    out: dict = {"versions": [reg.register(r, "sasrec", who="trainer-bot", why=f"{e} epochs").version
                              for r, e in zip(runs, EPOCHS)]}
    v1, v2, v3 = out["versions"]
    out["first"] = reg.promote("sasrec", v1, gates=gates, per_user=evaluator, who="alice", why="first model")
    out["better"] = reg.promote("sasrec", v2, gates=gates, per_user=evaluator, who="alice", why="12 epochs")
    with pytest.raises(GateRefused) as e:
        reg.promote("sasrec", v3, gates=gates, per_user=evaluator, who="bob", why="planted worse")
    out["refusal"] = str(e.value)
    out["champion_after_refusal"] = reg.champion("sasrec").version
    return out


def test_worse_challenger_refused_naming_the_gate_better_one_promoted(promoted, reg, runs):
    v1, v2, v3 = promoted["versions"]
    first = {r.gate: r for r in promoted["first"]}
    assert first["offline_metrics"].status == "pass" and "no champion" in first["offline_metrics"].message
    better = {r.gate: r for r in promoted["better"]}
    ev = better["offline_metrics"].evidence
    assert better["offline_metrics"].status == "pass" and ev["champion_version"] == v1
    assert ev["n_users"] == 300 and ev["mean_diff"] > 0 and ev["ci95"][0] > 0 and ev["p_better"] < 0.05
    # the per-user scores reproduce the runs' own test metrics (same users, same protocol)
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in runs[:2])
    assert ev["champion_mean"] == pytest.approx(s1["test/ndcg@10"], abs=1e-9)
    assert ev["candidate_mean"] == pytest.approx(s2["test/ndcg@10"], abs=1e-9)
    # gates that have no evidence say so; they never pass silently
    for g in ("onnx_parity", "latency_budget", "ope_lcb", "canary_ab"):
        assert better[g].status == "not_available" and better[g].message
    line = promoted["refusal"]
    assert "\n" not in line and line.startswith(f"promotion of sasrec v{v3} refused by gate offline_metrics failed")
    assert "ndcg@10" in line and f"champion v{v2}" in line and "paired t-test over 300 users" in line
    assert promoted["champion_after_refusal"] == v2
    assert json.loads(reg.get("sasrec", v3).tags["recsys.gates"])["offline_metrics"] == "fail"


def test_lineage_recorded_with_each_version(promoted, reg, runs):
    v = reg.get("sasrec", promoted["versions"][1])
    s = json.loads((runs[1] / "summary.json").read_text())
    model = json.loads((runs[1] / "model" / "model_args.json").read_text())
    assert v.kind == "run" and v.tags["recsys.data_fingerprint"] == s["data"]["fingerprint"]
    assert v.tags["recsys.git_commit"] == s["environment"]["git_commit"]
    assert v.tags["recsys.weights_sha256"] == model["weights_sha256"]
    assert v.tags["recsys.embedding_version"] == f"SASRec/{model['weights_sha256'][:16]}"
    assert v.lineage["config"]["trainer"]["max_epochs"] == 12 and len(v.tags["recsys.config_sha256"]) == 64
    assert (Path(v.path) / "model" / "weights.safetensors").is_file()  # an immutable copy in the store
    assert not (Path(v.path) / "checkpoints").exists()


def test_rollback_restores_previous_champion_and_audit_has_every_step(promoted, reg):
    v1, v2, v3 = promoted["versions"]
    assert reg.resolve("sasrec") == Path(reg.get("sasrec", v2).path)
    back = reg.rollback("sasrec", who="carol", why="incident 42")
    assert back.version == v1 and reg.champion("sasrec").version == v1
    assert reg.get("sasrec", v2).status == "rolled_back"
    listed = {v.version: (v.status, v.aliases) for v in reg.versions("sasrec")}
    assert listed[v1] == ("champion", ["champion"]) and listed[v2] == ("rolled_back", [])
    assert reg.serving_link("sasrec").resolve() == Path(reg.get("sasrec", v1).path).resolve()
    retired = reg.retire("sasrec", v3, who="carol", why="refused challenger")
    assert retired.status == "retired" and not Path(retired.path).exists()
    with pytest.raises(RegistryError, match="retired"):
        reg.promote("sasrec", v3, gates={}, who="carol")
    with pytest.raises(RegistryError, match="champion"):
        reg.retire("sasrec", v1)
    trail = AuditTrail(reg.dir / "audit.jsonl")
    recs = [r for r in trail.records() if r["model"] == "sasrec"]
    steps = [(r["action"], r["version"], r["outcome"], r["who"]) for r in recs]
    assert steps == [("register", v1, "ok", "trainer-bot"), ("register", v2, "ok", "trainer-bot"),
                     ("register", v3, "ok", "trainer-bot"), ("promote", v1, "ok", "alice"),
                     ("promote", v2, "ok", "alice"), ("promote", v3, "refused", "bob"),
                     ("rollback", v1, "ok", "carol"), ("retire", v3, "ok", "carol")]
    assert all(r["why"] and r["time"] for r in recs)
    refused = recs[5]["details"]
    assert "offline_metrics" in refused["refusal"] and Path(refused["evidence"]).is_file()
    assert trail.verify() == len(trail.records())
    assert reg.client.get_registered_model("sasrec").tags["recsys.audit_head"] == trail.head()


def test_audit_trail_detects_edits(tmp_path):
    trail = AuditTrail(tmp_path / "audit.jsonl")
    for i in range(3):
        trail.append("register", "m", str(i), who="x", why="w")
    assert trail.verify() == 3
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    (tmp_path / "audit.jsonl").write_text("\n".join([lines[0], lines[2]]) + "\n")  # a record removed
    with pytest.raises(Exception, match="record 2 breaks the hash chain"):
        trail.verify()
    edited = json.loads(lines[1])
    edited["who"] = "mallory"
    (tmp_path / "audit.jsonl").write_text("\n".join([lines[0], json.dumps(edited), lines[2]]) + "\n")
    with pytest.raises(Exception, match="record 2"):
        trail.verify()


def test_model_card_markdown_and_self_contained_html(promoted, reg, tmp_path):
    from recsys.lifecycle.cards import write_card

    res = write_card(reg, "sasrec", promoted["versions"][1], tmp_path / "card")
    md = Path(res["markdown"]).read_text()
    for section in ("## Intended use", "## Data provenance", "## Metrics", "By group: not available",
                    "## Assumptions", "## Gate evidence", "## Limits", "## Training cost", "## Audit trail"):
        assert section in md, section
    assert "offline_metrics | pass" in md and "not_available" in md and "estimated energy" in md
    assert "W per core" in md  # the energy method is stated
    page = Path(res["html"]).read_text()
    assert res["plots"] == 2 and page.count("data:image/png;base64,") == 2
    assert "src=\"http" not in page and "<script" not in page


def test_sensitive_model_needs_approval_cli_refusal_is_one_line(reg, runs, tmp_path):
    v = reg.register(runs[1], "sasrec_sensitive", sensitive=True, who="x", why="sensitive use")
    r = run("registry", "promote", "name=sasrec_sensitive", f"version={v.version}", "why=try",
            f"registry.directory={reg.dir}", "~gates.offline_metrics", env={"RECSYS_ACTOR": "dave"})
    assert r.returncode == 3, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: promotion of sasrec_sensitive v{v.version} refused by gate "
                                               "sensitive_approval failed: tagged sensitive and no recorded approval")
    reg.approve("sasrec_sensitive", v.version, who="erin", why="privacy review PR-7")
    gates = {k: g for k, g in shipped_gates().items() if k != "offline_metrics"}
    res = {g.gate: g for g in reg.promote("sasrec_sensitive", v.version, gates=gates, who="erin", why="approved")}
    assert res["sensitive_approval"].status == "pass" and "erin" in res["sensitive_approval"].message
    last = [x for x in reg.audit.records() if x["model"] == "sasrec_sensitive"]
    assert [(x["action"], x["outcome"], x["who"]) for x in last] == [
        ("register", "ok", "x"), ("promote", "refused", "dave"), ("approve", "ok", "erin"), ("promote", "ok", "erin")]


def test_rollback_in_a_running_service_within_one_reload(reg, runs, tmp_path, monkeypatch):
    """Index bundles of two of the runs under a registered name; the service serves the
    champion's serving link; promote -> one reload serves the new one; rollback -> one
    reload serves the previous one again."""
    import warnings

    import pyarrow as pa
    import pyarrow.parquet as pq

    with warnings.catch_warnings():  # starlette 1.x prefers httpx2 for its TestClient; httpx works
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from recsys.retrieval.build import IndexSpec, build_bundle
    from recsys.service.app import create_app
    from recsys.service.config import serve_config

    built = [build_bundle(r, tmp_path / f"index{i}", IndexSpec(name="flat", factory="Flat"), recall_queries=50)
             for i, r in enumerate(runs[:2])]
    want = [m["embedding_version"] for m in built]
    assert want[0] != want[1]
    items = pq.read_table(runs[0] / "embeddings" / "items.parquet").column("item_id").to_pylist()
    pq.write_table(pa.table({"item_id": items, "category": [i % 4 + 1 for i in range(len(items))],
                             "available": [True] * len(items)}), tmp_path / "catalogue.parquet")
    user = pq.read_table(runs[0] / "embeddings" / "users.parquet").column("user_id")[0].as_py()
    gates = shipped_gates()
    a = reg.register(tmp_path / "index0", "sasrec_index", who="x", why="a").version
    b = reg.register(tmp_path / "index1", "sasrec_index", who="x", why="b").version
    res = {g.gate: g for g in reg.promote("sasrec_index", a, gates=gates, who="x", why="first")}
    assert res["offline_metrics"].status == "not_applicable" and not res["offline_metrics"].blocks
    assert res["onnx_parity"].status == res["latency_budget"].status == "not_available"
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "t")
    auth = {"Authorization": "Bearer t"}
    cfg = {"bundles": {"index": str(reg.serving_link("sasrec_index")), "catalogue": str(tmp_path / "catalogue.parquet")},
           "budgets": {"state_ms": 500, "queue_ms": 500, "retrieve_ms": 500, "rank_ms": 1000},
           "decision_log": {"directory": str(tmp_path / "log"), "flush_interval_s": 0.2}}
    body = {"user_id": user, "channel": "home", "k": 5}
    with TestClient(create_app(serve_config(cfg)), client=("127.0.0.1", 50000)) as c:
        served = c.post("/v1/recommend", json=body).json()
        assert served["versions"]["embedding_version"] == want[0] and served["level"] == "personalised"
        reg.promote("sasrec_index", b, gates=gates, who="x", why="second")
        assert c.post("/v1/admin/reload", headers=auth).json()["versions"]["embedding_version"] == want[1]
        assert c.post("/v1/recommend", json=body).json()["versions"]["embedding_version"] == want[1]
        reg.rollback("sasrec_index", who="x", why="bad canary")
        assert c.post("/v1/admin/reload", headers=auth).json()["versions"]["embedding_version"] == want[0]
        assert c.post("/v1/recommend", json=body).json()["versions"]["embedding_version"] == want[0]
    assert [x["action"] for x in reg.audit.records() if x["model"] == "sasrec_index"] == [
        "register", "register", "promote", "promote", "rollback"]
