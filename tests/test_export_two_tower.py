"""Two-tower user tower as a query-encoder bundle: a tiny real `recsys train`
two-tower run -> `recsys export` -> bundle with the user tower's named inputs;
parity at several batch sizes and lengths; the runtime's multi-input validation;
tampering refused; the bench with side inputs."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys.utils.topk import top_k_excluding
from recsys.export import onnx_encoder
from recsys.export.onnx_encoder import ExportError, ParitySpec, export_query_encoder, torch_module_for_bundle
from recsys.serving.bundle import BundleError, RequestError
from recsys.serving.encoder import QueryEncoderRuntime
from tests.helpers import run

N_ITEMS, MAX_HIST = 100, 20
TRAIN = ["experiment=two_tower_synthetic", "data.n_users=1100", f"data.n_items={N_ITEMS}", "data.loader.n_requests=100",
         f"datamodule.max_history={MAX_HIST}", "net.arch.dim=32", "net.arch.hidden=64", "~logger",
         "trainer.enable_progress_bar=false", "trainer.max_epochs=1"]
SIDE = ["user_id", "user_age_bucket", "user_group", "user_n_devices", "user_region"]


@pytest.fixture(scope="module")
def tt_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("tt")
    r = run("train", *TRAIN, f"paths.cache_dir={base / 'cache'}", f"hydra.run.dir={base / 'run'}",
            cwd=base, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return base / "run"


@pytest.fixture(scope="module")
def bundle(tt_run, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("exp")
    r = run("export", f"run={tt_run}", "name=tt", f"hydra.run.dir={base / 'job'}",
            env={"RECSYS_EXPORT_DIR": str(base / "export"), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "top-10 identical" in r.stdout
    return base / "export" / "tt"


@pytest.fixture(scope="module")
def rt(bundle) -> QueryEncoderRuntime:
    return QueryEncoderRuntime(bundle)


@pytest.fixture(scope="module")
def module(bundle):
    return torch_module_for_bundle(json.loads((bundle / "manifest.json").read_text()), bundle)


def _request(rt: QueryEncoderRuntime, n: int, length: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.integers(1, N_ITEMS + 1, (n, length))
    for r in range(n):
        x[r, : int(rng.integers(0, length))] = 0
    side = {s["name"]: rng.integers(0, s["vocab_size"], n) for s in rt.side_inputs}
    return x, side


def test_manifest_inputs_parity_and_pairing(bundle, tt_run):
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["kind"] == "query_encoder" and m["model"]["class"] == "recsys.models.two_tower.TwoTower"
    meta = json.loads((tt_run / "model" / "model_args.json").read_text())
    assert m["embedding_version"] == f"TwoTower/{meta['weights_sha256'][:16]}"
    assert [i["name"] for i in m["inputs"]] == ["items", *SIDE]
    assert m["inputs"][0]["max_len"] == MAX_HIST and m["inputs"][1]["kind"] == "hashed_id"
    assert all(i["dtype"] == "int64" and i["shape"] == ["batch"] for i in m["inputs"][1:])
    assert m["item_embeddings"]["shape"] == [N_ITEMS + 1, 32] and m["item_embeddings"]["scoring"].startswith("cosine")
    p = m["parity"]
    assert p["users"] >= 1000 and p["lengths"] == [1, 5, 17, MAX_HIST] and p["example_length"] not in p["lengths"]
    assert p["max_abs_diff"] <= 1e-5 and p["min_topk_agreement"] >= 0.999 and p["side_inputs"] == SIDE
    import onnx

    proto = onnx.load(str(bundle / "query_encoder.onnx"))
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims == {"items": ["batch", "seq"], **{n: ["batch"] for n in SIDE}}
    # the item table is the run's item-tower output (what an index built from the run holds), row 0 = padding
    table = np.load(bundle / "item_embeddings.npy")
    items = pq.read_table(tt_run / "embeddings" / "items.parquet")
    np.testing.assert_allclose(table[1:], np.stack(items.column("embedding").to_numpy(zero_copy_only=False)),
                               atol=1e-6)
    assert not table[0].any()


@pytest.mark.parametrize("batch,length", [(1, 1), (7, 9), (300, MAX_HIST)])
def test_runtime_matches_torch_at_batch_sizes_and_lengths(rt, module, batch, length):
    x, side = _request(rt, batch, length, batch + length)
    with torch.no_grad():
        want = module(torch.from_numpy(x), *(torch.from_numpy(side[n]) for n in SIDE)).numpy()
    got = rt.encode(x, **side)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # cosine model: unit vectors
    ids, vals = rt.top_k(x, k=10, **side)
    ref = top_k_excluding(want @ rt.item_embeddings.T, x, 10)
    assert (ids == ref).all(axis=1).mean() >= 0.99 and ids.shape == vals.shape == (batch, 10)
    for r in range(batch):
        assert not set(ids[r]) & (set(x[r]) | {0})
    ids2, _ = rt.top_k({"items": x, **side}, k=10)  # one mapping works too
    assert (ids2 == ids).all()


def test_bad_requests_are_refused(rt):
    x, side = _request(rt, 3, 5, 0)
    cases = [({k: v for k, v in side.items() if k != "user_region"}, "missing input 'user_region'"),
             ({**side, "user_zip": side["user_group"]}, "unknown input 'user_zip'"),
             ({**side, "user_group": side["user_group"].astype(np.float32)}, "user_group: dtype float32"),
             ({**side, "user_group": np.array([1.0, np.nan, 0.0])}, "user_group: contains NaN"),
             ({**side, "user_id": side["user_id"][:2]}, r"user_id: shape \(2,\), expected \(3,\)"),
             ({**side, "user_id": side["user_id"][:, None]}, r"user_id: shape \(3, 1\)"),
             ({**side, "user_region": np.array([0, 6, 1])}, r"user_region: value 6 out of range \[0, 5\]"),
             ({**side, "user_id": np.array([-1, 0, 0])}, "user_id: value -1 out of range")]
    for bad, pattern in cases:
        with pytest.raises(RequestError, match=pattern):
            rt.encode(x, **bad)
    with pytest.raises(RequestError, match=f"id {N_ITEMS + 1} out of range"):
        rt.encode(np.array([[0, 1, N_ITEMS + 1]] * 3), **side)
    with pytest.raises(RequestError, match="missing input 'items'"):
        rt.encode(side)
    with pytest.raises(RequestError, match="k=0"):
        rt.top_k(x, k=0, **side)
    one = {k: int(v[0]) for k, v in side.items()}  # one user: 1-D items + scalars
    assert rt.encode(x[0], **one).shape == (1, 32)


def test_tampered_bundle_is_refused(bundle, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(bundle, d)
    model = d / "query_encoder.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="query_encoder.onnx: sha256 differs"):
        QueryEncoderRuntime(d)
    shutil.copy(bundle / "query_encoder.onnx", model)
    m = json.loads((d / "manifest.json").read_text())
    m["inputs"][2]["vocab_size"] = 99
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="modified manifest"):
        QueryEncoderRuntime(d)


def test_failed_parity_leaves_nothing(tt_run, tmp_path, monkeypatch):
    from recsys.cli.runs import encoder_parity_data

    adapter = onnx_encoder.ENCODERS["recsys.models.two_tower.TwoTower"]
    d = encoder_parity_data(tt_run, adapter)
    with pytest.raises(ExportError, match="side inputs"):
        export_query_encoder(tt_run, tmp_path / "e" / "x", replace(d, side={}))
    real = onnx_encoder.onnx_states
    monkeypatch.setattr(onnx_encoder, "onnx_states",
                        lambda s, x, batch_size=256, side=None: real(s, x, batch_size, side) + 1e-3)
    with pytest.raises(ExportError, match="parity check failed"):
        export_query_encoder(tt_run, tmp_path / "e" / "x", d, ParitySpec(lengths=(4,)))
    assert list((tmp_path / "e").iterdir()) == []


def test_bench_with_side_inputs(bundle, module):
    from recsys.bench.export import bench_encoder

    res = bench_encoder(bundle, module, batch_sizes=[1, 256], n_requests=20)
    assert res["side_inputs"] == SIDE and res["seq_len"] == MAX_HIST
    for row in res["by_batch"].values():
        assert row["torch_over_onnx_p50"] > 0 and row["faster"] in ("onnxruntime", "torch")


def test_attention_pooling_user_tower_exports_with_a_symbolic_batch(tmp_path):
    """Attention pooling once specialised the batch dim under torch.export (len()
    of a tensor): the bundle must take any batch and pass parity."""
    r = run("train", *TRAIN, "net.arch.pooling=attention", f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("export", f"run={tmp_path / 'run'}", "name=att", f"hydra.run.dir={tmp_path / 'job'}",
            env={"RECSYS_EXPORT_DIR": str(tmp_path / "export"), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    rt = QueryEncoderRuntime(tmp_path / "export" / "att")
    for n in (1, 3, 257):
        items, side = _request(rt, n, 7, seed=n)
        assert rt.encode(items, **side).shape == (n, 32)
