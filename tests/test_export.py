"""ONNX export of a ranker: parity at several batch sizes, manifest round trip,
loud failure that leaves nothing behind, and the `recsys export` commands."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from recsys.artifacts.errors import BundleError
from recsys.export import onnx_ranker
from recsys.export.onnx_ranker import ExportError, export_ranker, onnx_session, rebuild_net, torch_scores
from recsys.utils.io import sha256_file
from tests.helpers import ranker_run, run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return ranker_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def bundle(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "dcn"
    export_ranker(run_dir, out)
    return out


def test_bundle_layout_and_manifest_round_trip(bundle, run_dir):
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "manifest.sha256", "ranker.onnx"]
    m = json.loads((bundle / "manifest.json").read_text())
    feats = json.loads((run_dir / "model" / "features.json").read_text())
    assert [i["name"] for i in m["inputs"]] == feats["inputs"]
    for spec in m["inputs"]:
        assert spec["shape"] == ["batch"] and m["dynamic_axes"][spec["name"]] == {"0": "batch"}
        assert spec["dtype"] == ("int64" if spec["kind"] == "categorical" else "float32")
        assert spec["vocab_size"] == feats["vocab_sizes"].get(spec["name"])
    assert m["vocab_sizes"] == feats["vocab_sizes"]
    assert m["feature_set_version"] == feats["feature_set_version"]
    assert m["opset"] >= 18 and m["data_fingerprint"] == "tiny-world"
    assert m["model"]["run_dir"] == str(run_dir.resolve())
    assert {"torch", "onnxruntime", "onnx", "numpy"} <= set(m["versions"])
    assert m["files"]["ranker.onnx"]["sha256"] == sha256_file(bundle / "ranker.onnx")
    assert (bundle / "manifest.sha256").read_text().split()[0] == sha256_file(bundle / "manifest.json")
    assert m["kind"] == "ranker" and m["compatible_embedding_versions"] == []
    assert m["parity"]["rows"] >= 1000 and m["parity"]["max_abs_diff"] <= 1e-5
    assert set(m["parity"]["max_abs_diff_by_batch"]) == {"1", "7", "256", "1000"}
    import onnx

    proto = onnx.load(str(bundle / "ranker.onnx"))
    assert [i.name for i in proto.graph.input] == feats["inputs"]
    assert not list(bundle.glob("*.data"))  # single file, no external data


@pytest.mark.parametrize("b", [1, 2, 33, 1200])
def test_parity_at_batch_sizes(bundle, run_dir, b):
    net, _ = rebuild_net(run_dir / "model")
    rows = load_file(str(run_dir / "model" / "parity_rows.safetensors"))
    rows = {k: np.resize(v, b) for k, v in rows.items()}  # 1200 > parity rows: wraps around
    names = [i["name"] for i in json.loads((bundle / "manifest.json").read_text())["inputs"]]
    rows = {k: rows[k] for k in names}
    got = onnx_session(bundle / "ranker.onnx").run(["logits"], rows)[0]
    assert got.shape == (b,)
    np.testing.assert_allclose(got, torch_scores(net, rows), atol=1e-5, rtol=0)


def test_parity_failure_leaves_nothing(run_dir, tmp_path, monkeypatch):
    real = onnx_ranker.onnx_scores
    monkeypatch.setattr(onnx_ranker, "onnx_scores", lambda s, rows: real(s, rows) + 1e-3)
    out = tmp_path / "export" / "broken"
    with pytest.raises(ExportError, match="parity check failed"):
        export_ranker(run_dir, out)
    assert not out.exists()
    assert list((tmp_path / "export").iterdir()) == []  # no temp folder either


def test_too_few_rows_and_bad_weights_refused(run_dir, tmp_path):
    with pytest.raises(ExportError, match=">= 5000 rows"):
        export_ranker(run_dir, tmp_path / "b", min_rows=5000)
    bad = tmp_path / "run"
    (bad / "model").mkdir(parents=True)
    for f in (run_dir / "model").iterdir():
        (bad / "model" / f.name).write_bytes(f.read_bytes())
    w = bad / "model" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-8])
    with pytest.raises(BundleError, match="weights.safetensors: .*truncated or modified"):
        export_ranker(bad, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_cli_export_and_bench(run_dir, tmp_path):
    env = {"RECSYS_EXPORT_DIR": str(tmp_path / "export"), "OMP_NUM_THREADS": "1"}
    r = run("export", f"run={run_dir}", "name=cli", f"hydra.run.dir={tmp_path / 'exp'}", env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "export" / "cli" / "manifest.json").is_file()
    s = json.loads((tmp_path / "exp" / "summary.json").read_text())
    assert s["parity_max_abs_diff"] <= 1e-5
    r = run("export", "bench", "bundle=cli", "n_requests=60", "sizes=[1,10,100,1000]",
            f"hydra.run.dir={tmp_path / 'bench'}", env=env)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "bench" / "summary.json").read_text())
    assert set(s["p50_ms"]) == set(s["p99_ms"]) == {"1", "10", "100", "1000"}
    assert s["onnx_speedup_vs_torch_batch1"] > 0 and s["parity_max_abs_diff"] <= 1e-5


def test_export_command_refuses_a_dir_without_model(tmp_path):
    from omegaconf import OmegaConf

    from recsys.cli.export_cmd import export
    from recsys.utils.errors import RecsysError

    cfg = OmegaConf.create({"run": str(tmp_path), "name": "x", "paths": {"export_dir": str(tmp_path / "e")}})
    with pytest.raises(RecsysError, match="no model/"):
        export(cfg)


def test_int8_comparison(bundle, run_dir, tmp_path):
    from recsys.bench.export import int8_comparison

    saved = load_file(str(run_dir / "model" / "parity_rows.safetensors"))
    names = [i["name"] for i in json.loads((bundle / "manifest.json").read_text())["inputs"]]
    res = int8_comparison(bundle / "ranker.onnx", tmp_path / "q.onnx", {k: saved[k] for k in names},
                          saved["label"], sizes=[1, 100], n_requests=50)
    assert (tmp_path / "q.onnx").is_file() and set(res["speedup_p50"]) == {"1", "100"}
    assert np.isfinite(res["auc_change"]) and res["max_abs_logit_diff"] < 1.0
