"""Torch-free serving runtime: checksums, feature-set version, request
validation (every bad case names the feature), scores equal to torch."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from recsys.serving.ranker import BundleError, RankerRuntime, RequestError
from tests.helpers import ROOT, ranker_run

VERSION = "ranker_features/1"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, Path]:
    from recsys.export.onnx_ranker import export_ranker

    run_dir = ranker_run(tmp_path_factory.mktemp("run"), seed=3)
    out = tmp_path_factory.mktemp("export") / "dcn"
    export_ranker(run_dir, out)
    return out, run_dir


@pytest.fixture(scope="module")
def rt(bundle) -> RankerRuntime:
    return RankerRuntime(bundle[0], feature_set_version=VERSION, intra_op_threads=1)


@pytest.fixture
def request_(bundle, rt) -> dict[str, np.ndarray]:
    rows = load_file(str(bundle[1] / "model" / "parity_rows.safetensors"))
    return {k: rows[k][:16].copy() for k in rt.inputs}


def test_import_and_scoring_do_not_import_torch(bundle):
    code = ("import sys, numpy as np, json\n"
            "from recsys.serving.ranker import RankerRuntime\n"
            f"rt = RankerRuntime({str(bundle[0])!r}, feature_set_version={VERSION!r})\n"
            "req = {i['name']: np.zeros(3, dtype=i['dtype']) for i in rt.manifest['inputs']}\n"
            "assert rt.score(req).shape == (3,)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pytorch_lightning', 'lightning', 'hydra')]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_scores_match_torch(bundle, rt, request_):
    from recsys.export.onnx_ranker import rebuild_net, torch_scores

    net, _ = rebuild_net(bundle[1] / "model")
    np.testing.assert_allclose(rt.score(request_), torch_scores(net, request_), atol=1e-5, rtol=0)
    p = rt.predict_proba(request_)
    assert ((p > 0) & (p < 1)).all()
    assert "CPUExecutionProvider" in rt.providers


def test_score_candidates_broadcasts_the_context(rt, request_):
    ctx_names = ("user", "user_group", "hour", "user_ctr", "user_log_imps")
    ctx = {k: request_[k][0] for k in ctx_names}
    cands = {k: v for k, v in request_.items() if k not in ctx_names}
    full = {**{k: np.full(16, ctx[k]) for k in ctx_names}, **cands}
    np.testing.assert_allclose(rt.score_candidates(ctx, cands), rt.score(full))
    with pytest.raises(RequestError, match="both per request and per candidate"):
        rt.score_candidates({"item": 3, **ctx}, cands)


def _bad_cases(req: dict[str, np.ndarray], vocab: dict[str, int]):
    def edit(**changes):
        out = dict(req)
        for k, v in changes.items():
            if v is None:
                out.pop(k)
            else:
                out[k] = v
        return out
    f = req["price_log"].copy()
    f[3] = np.nan
    inf = req["item_ctr"].copy()
    inf[0] = np.inf
    return [
        ("missing", edit(item=None), r"missing \['item'\]"),
        ("extra", {**req, "colour": np.zeros(16)}, r"unexpected \['colour'\]"),
        ("int as float", edit(user=req["user"].astype(np.float32)), "feature 'user': dtype float32"),
        ("float as int", edit(price_log=np.ones(16, dtype=np.int64)), "feature 'price_log': dtype int64"),
        ("string", edit(hour=np.array(["1"] * 16)), "feature 'hour': dtype"),
        ("2-d", edit(item=req["item"].reshape(4, 4)), r"feature 'item': shape \(4, 4\)"),
        ("scalar", edit(item=np.int64(3)), r"feature 'item': shape \(\)"),
        ("length", edit(position=req["position"][:5]), "feature 'position': 5 rows"),
        ("nan", edit(price_log=f), "feature 'price_log': NaN or infinite value at row 3"),
        ("inf", edit(item_ctr=inf), "feature 'item_ctr': NaN or infinite"),
        ("oov high", edit(item=np.full(16, vocab["item"])), f"feature 'item': id {vocab['item']} out of vocabulary"),
        ("oov negative", edit(user=np.full(16, -1)), "feature 'user': id -1 out of vocabulary"),
        ("oov position", edit(position=np.full(16, 99)), "feature 'position': id 99"),
        ("empty", {k: v[:0] for k, v in req.items()}, "empty request"),
    ]


def test_every_bad_request_is_refused_naming_the_feature(rt, request_):
    for name, req, pattern in _bad_cases(request_, rt.manifest["vocab_sizes"]):
        with pytest.raises(RequestError, match=pattern):
            rt.score(req)
        assert issubclass(RequestError, ValueError), name


def _copy(bundle: Path, tmp_path: Path) -> Path:
    d = tmp_path / "b"
    shutil.copytree(bundle, d)
    return d


def test_tampered_and_truncated_models_are_refused(bundle, tmp_path):
    d = _copy(bundle[0], tmp_path)
    model = d / "ranker.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 differs"):
        RankerRuntime(d)
    model.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(BundleError, match="truncated"):
        RankerRuntime(d)
    model.unlink()
    with pytest.raises(BundleError, match="missing"):
        RankerRuntime(d)
    with pytest.raises(BundleError, match="no manifest.json"):
        RankerRuntime(tmp_path)


def test_feature_set_version_mismatch_names_both(bundle, tmp_path):
    with pytest.raises(BundleError, match=r"'ranker_features/1'.*'ranker_features/2'"):
        RankerRuntime(bundle[0], feature_set_version="ranker_features/2")
    d = _copy(bundle[0], tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["format"] = "something/9"
    _rewrite_manifest(d, m)  # consistent checksum: the format check itself must refuse it
    with pytest.raises(BundleError, match="format"):
        RankerRuntime(d)


def _rewrite_manifest(d: Path, m: dict) -> None:
    import hashlib

    raw = json.dumps(m).encode()
    (d / "manifest.json").write_bytes(raw)
    (d / "manifest.sha256").write_text(f"{hashlib.sha256(raw).hexdigest()}  manifest.json\n")


def test_tampered_manifest_is_refused(bundle, tmp_path):
    """A manifest edited to match a modified model (or to change a version) fails its own checksum."""
    d = _copy(bundle[0], tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["feature_set_version"] = "ranker_features/2"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="modified manifest"):
        RankerRuntime(d)
    (d / "manifest.sha256").unlink()
    with pytest.raises(BundleError, match="no manifest.sha256"):
        RankerRuntime(d)


def test_retrieval_pairing_checks_embedding_versions(bundle, tmp_path):
    from recsys.export.onnx_ranker import export_ranker

    out = tmp_path / "paired"
    export_ranker(bundle[1], out, compatible_embedding_versions=["SASRec/0123456789abcdef"])
    ok = RankerRuntime(out, feature_set_version=VERSION,
                       retrieval_bundle={"embedding_version": "SASRec/0123456789abcdef"})
    assert ok.embedding_version == "SASRec/0123456789abcdef"
    with pytest.raises(BundleError, match=r"SASRec/0123456789abcdef.*'SASRec/ffffffffffffffff'"):
        RankerRuntime(out, retrieval_bundle={"embedding_version": "SASRec/ffffffffffffffff"})
    with pytest.raises(BundleError, match="none declared.*'SASRec/0123456789abcdef'"):
        RankerRuntime(bundle[0], retrieval_bundle={"embedding_version": "SASRec/0123456789abcdef"})
    with pytest.raises(BundleError, match="declares no embedding_version"):
        RankerRuntime(out, retrieval_bundle={"name": "old-index"})
    # a retrieval bundle folder: its manifest is checksum-verified before its version is read
    r = tmp_path / "retrieval"
    r.mkdir()
    _rewrite_manifest(r, {"embedding_version": "SASRec/0123456789abcdef"})
    assert RankerRuntime(out, retrieval_bundle=r).embedding_version == "SASRec/0123456789abcdef"
    (r / "manifest.json").write_text(json.dumps({"embedding_version": "SASRec/ffffffffffffffff"}))
    with pytest.raises(BundleError, match="modified manifest"):
        RankerRuntime(out, retrieval_bundle=r)
