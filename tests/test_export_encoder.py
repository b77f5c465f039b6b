"""Query-encoder export (SASRec next-item state): a real `recsys train` run ->
`recsys export` -> bundle; parity at several lengths; the torch-free runtime
(encode, top-k, request validation, checksums); loud failures; the bench."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.utils.topk import top_k_excluding
from recsys.export import onnx_encoder
from recsys.export.onnx_encoder import EncoderData, ExportError, ParitySpec, export_query_encoder
from recsys.export.onnx_ranker import rebuild_net
from recsys.serving.bundle import BundleError, RequestError
from recsys.serving.encoder import QueryEncoderRuntime
from tests.helpers import ROOT, run

MAX_LEN = 20
TRAIN = ["experiment=sasrec_synthetic", "data.n_users=1100", "data.n_items=150", f"datamodule.max_len={MAX_LEN}",
         "net.hidden=32", "~logger", "trainer.enable_progress_bar=false", "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def seq_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("seq")
    r = run("train", *TRAIN, f"paths.cache_dir={base / 'cache'}", f"hydra.run.dir={base / 'run'}",
            cwd=base, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return base / "run"


@pytest.fixture(scope="module")
def bundle(seq_run, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("exp")
    r = run("export", f"run={seq_run}", "name=query", f"hydra.run.dir={base / 'job'}",
            env={"RECSYS_EXPORT_DIR": str(base / "export"), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "top-10 identical" in r.stdout
    s = json.loads((base / "job" / "summary.json").read_text())
    assert s["kind"] == "query_encoder" and s["parity_max_abs_diff"] <= 1e-5
    return base / "export" / "query"


@pytest.fixture(scope="module")
def net(seq_run):
    return rebuild_net(seq_run / "model")[0]


@pytest.fixture(scope="module")
def rt(bundle) -> QueryEncoderRuntime:
    return QueryEncoderRuntime(bundle)


def _histories(n: int, length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 151, (n, length))
    for r in range(n):  # varied real lengths, left-padded
        x[r, : int(rng.integers(0, length))] = 0
    return x


def test_bundle_layout_manifest_and_parity(bundle, seq_run):
    assert sorted(p.name for p in bundle.iterdir()) == ["item_embeddings.npy", "item_ids.npy", "manifest.json",
                                                       "manifest.sha256", "query_encoder.onnx"]
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["kind"] == "query_encoder" and m["model"]["class"] == "recsys.models.sequential.SASRec"
    meta = json.loads((seq_run / "model" / "model_args.json").read_text())
    assert m["embedding_version"] == f"SASRec/{meta['weights_sha256'][:16]}"
    assert m["inputs"][0] | {} == {"name": "items", "dtype": "int64", "shape": ["batch", "seq"], "kind": "item_sequence",
                                   "vocab_size": 151, "pad_id": 0, "padding": "left", "max_len": MAX_LEN}
    assert m["item_embeddings"]["shape"] == [151, 32] and m["outputs"][0]["shape"] == ["batch", 32]
    p = m["parity"]
    assert p["users"] >= 1000 and p["lengths"] == [1, 5, 17, MAX_LEN] and p["example_length"] not in p["lengths"]
    assert p["max_abs_diff"] <= 1e-5 and p["min_topk_agreement"] >= 0.999
    assert all(r["padded_rows"] > 0 for r in p["by_length"] if r["length"] >= 17)  # padding was exercised
    assert "test-split histories" in p["history_source"]
    import onnx

    proto = onnx.load(str(bundle / "query_encoder.onnx"))
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"] and not list(bundle.glob("*.data"))


@pytest.mark.parametrize("length", [2, 9, MAX_LEN])
def test_runtime_matches_torch(rt, net, length):
    x = _histories(40, length, length)
    with torch.no_grad():
        state = net.next_item_state(torch.from_numpy(x)).numpy()
        scores = (torch.from_numpy(state) @ net.output_embeddings().T).numpy()
    np.testing.assert_allclose(rt.encode(x), state, atol=1e-5, rtol=0)
    ids, vals = rt.top_k(x, k=10)
    want = top_k_excluding(scores, x, 10)
    assert (ids == want).mean() >= 0.99 and ids.shape == vals.shape == (40, 10)
    assert np.all(np.diff(vals, axis=1) <= 0)
    for r in range(40):
        assert not set(ids[r]) & (set(x[r]) | {0})
    assert rt.top_k(x[:1], k=5, exclude_seen=False)[0].shape == (1, 5)


def test_runtime_single_sequence_and_truncation(rt, net):
    long = np.random.default_rng(0).integers(1, 151, 2 * MAX_LEN)
    with torch.no_grad():
        want = net.next_item_state(torch.from_numpy(long[-MAX_LEN:][None])).numpy()
    np.testing.assert_allclose(rt.encode(long), want, atol=1e-5, rtol=0)  # 1-D = one user; keeps the last max_len


def test_bad_requests_are_refused(rt):
    good = np.array([[0, 3, 4]])
    cases = [(good.astype(np.float32), "dtype float32"), (good[None], r"shape \(1, 1, 3\)"),
             (np.array([[0, 3, 151]]), "id 151 out of range"), (np.array([[-1, 3, 4]]), "id -1 out of range"),
             (np.array([[3, 0, 4]]), "row 0 has padding"), (np.zeros((0, 3), dtype=np.int64), "empty"),
             (np.array([["a", "b"]]), "dtype")]
    for bad, pattern in cases:
        with pytest.raises(RequestError, match=pattern):
            rt.encode(bad)
    with pytest.raises(RequestError, match="k=0"):
        rt.top_k(good, k=0)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    d = tmp_path / "b"
    shutil.copytree(bundle, d)
    return d


def test_tampered_truncated_and_wrong_kind_bundles_are_refused(bundle, tmp_path):
    d = _copy(bundle, tmp_path)
    table = d / "item_embeddings.npy"
    data = bytearray(table.read_bytes())
    data[-3] ^= 0xFF
    table.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="item_embeddings.npy: sha256 differs"):
        QueryEncoderRuntime(d)
    shutil.copy(bundle / "item_embeddings.npy", table)
    model = d / "query_encoder.onnx"
    model.write_bytes(model.read_bytes()[:-100])
    with pytest.raises(BundleError, match="truncated"):
        QueryEncoderRuntime(d)
    shutil.copy(bundle / "query_encoder.onnx", model)
    m = json.loads((d / "manifest.json").read_text())
    m["inputs"][0]["max_len"] = 500
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="modified manifest"):
        QueryEncoderRuntime(d)
    m["kind"] = "ranker"
    raw = json.dumps(m).encode()
    (d / "manifest.json").write_bytes(raw)
    (d / "manifest.sha256").write_text(hashlib.sha256(raw).hexdigest())
    with pytest.raises(BundleError, match="a 'ranker' bundle, expected a 'query_encoder'"):
        QueryEncoderRuntime(d)


def test_runtime_does_not_import_torch(bundle):
    code = ("import sys, numpy as np\n"
            "from recsys.serving.encoder import QueryEncoderRuntime\n"
            f"rt = QueryEncoderRuntime({str(bundle)!r})\n"
            "assert rt.top_k(np.array([[0, 5, 7]]), k=3)[0].shape == (1, 3)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pytorch_lightning', 'hydra')]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_failed_parity_leaves_nothing(seq_run, tmp_path, monkeypatch):
    from recsys.utils.sparse import CSR

    hist = CSR.from_lists(_histories(1000, 12, 1).tolist())  # pads dropped below: real lengths vary
    hist = CSR.from_lists([[i for i in row if i] or [1] for row in hist.to_lists()])
    with pytest.raises(ExportError, match="need >= 2000 user histories"):
        export_query_encoder(seq_run, tmp_path / "e" / "x", EncoderData(hist), ParitySpec(min_users=2000))
    real = onnx_encoder.onnx_states
    monkeypatch.setattr(onnx_encoder, "onnx_states", lambda s, x, batch_size=256: real(s, x, batch_size) + 1e-3)
    with pytest.raises(ExportError, match="parity check failed.*top-10 identical"):
        export_query_encoder(seq_run, tmp_path / "e" / "x", EncoderData(hist), ParitySpec(lengths=(4,)))
    assert list((tmp_path / "e").iterdir()) == []  # no bundle, no temp folder


def test_model_class_without_export_is_refused(tmp_path):
    from recsys.artifacts.models import save_model
    from recsys.models.mf import MatrixFactorization

    save_model(MatrixFactorization(n_users=3, n_items=4, dim=2), {"n_users": 3, "n_items": 4, "dim": 2},
               tmp_path / "model")
    with pytest.raises(ExportError, match="has no export"):
        onnx_encoder.bundle_kind(tmp_path / "model")


def test_bench_encoder_reports_both_directions(bundle, net):
    from recsys.bench.export import bench_encoder

    res = bench_encoder(bundle, onnx_encoder.ENCODERS["recsys.models.sequential.SASRec"].wrap(net).eval(),
                        batch_sizes=[1, 256], n_requests=20)
    assert set(res["by_batch"]) == {"1", "256"} and res["seq_len"] == MAX_LEN
    for row in res["by_batch"].values():
        assert row["torch_over_onnx_p50"] > 0 and row["faster"] in ("onnxruntime", "torch")
