"""The decision service's query stage with a query-encoder bundle: a real SASRec
`recsys train` run exported by `recsys export` (with its raw item ids) and an index
built from the same run; the user's recent items from /v1/events become the ANN
query; a mismatched encoder/index pair is refused at start."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from recsys.service.app import create_app
from recsys.service.bundles import BundleSetError, load_bundle_set
from recsys.service.config import BundlePaths, serve_config
from recsys.serving.encoder import QueryEncoderRuntime
from tests.helpers import ranker_run, run

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TRAIN = ["experiment=sasrec_synthetic", "data.n_users=300", "data.n_items=120", "datamodule.max_len=20",
         "net.hidden=16", "~logger", "trainer.enable_progress_bar=false", "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from recsys.artifacts.embeddings import write_embedding_dir
    from recsys.export.onnx_ranker import export_ranker
    from recsys.retrieval.build import IndexSpec, build_bundle, embedding_version_of

    base = tmp_path_factory.mktemp("enc")
    env = {"OMP_NUM_THREADS": "1"}
    r = run("train", *TRAIN, f"paths.cache_dir={base / 'cache'}", f"hydra.run.dir={base / 'run'}", cwd=base, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("export", f"run={base / 'run'}", "name=query", "encoder.min_users=50", f"hydra.run.dir={base / 'job'}",
            env={**env, "RECSYS_EXPORT_DIR": str(base / "export")})
    assert r.returncode == 0, r.stderr[-2000:]
    build_bundle(base / "run", base / "index", IndexSpec(name="flat", factory="Flat"), recall_queries=20)
    version = embedding_version_of(base / "run")
    rr = ranker_run(base / "ranker_run")
    export_ranker(rr, base / "ranker", name="r", min_rows=100, compatible_embedding_versions=[version])
    # an index of another embedding version (the ranker run's own random vectors)
    rng = np.random.default_rng(1)
    write_embedding_dir(rr, {"item_id": np.array([str(i) for i in range(1, 121)]),
                             "embedding": rng.normal(size=(120, 16)).astype(np.float32)},
                        meta={"metric": "ip", "model": "other", "data_fingerprint": "x"})
    build_bundle(rr, base / "index_other", IndexSpec(name="flat", factory="Flat"), recall_queries=20)
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = QueryEncoderRuntime(base / "export" / "query").item_ids[1:].tolist()
    pq.write_table(pa.table({"item_id": ids, "category": [f"c{j % 4}" for j in range(len(ids))],
                             "category_idx": [j % 4 + 1 for j in range(len(ids))],
                             "price_log": np.ones(len(ids), dtype=np.float32)}), base / "catalogue.parquet")
    pq.write_table(pa.table({"user_id": ["other"], "user_group": [1]}), base / "users.parquet")
    return {"encoder": base / "export" / "query", "index": base / "index", "ranker": base / "ranker",
            "index_other": base / "index_other", "catalogue": base / "catalogue.parquet",
            "users": base / "users.parquet"}


def test_encoder_bundle_maps_raw_item_ids(paths):
    enc = QueryEncoderRuntime(paths["encoder"])
    assert enc.item_ids is not None and enc.item_ids[0] == "" and len(set(enc.item_ids[1:])) == enc.n_items
    raw = enc.item_ids[[3, 1, 7]].tolist()
    assert enc.item_index(raw + ["not-an-item"]).tolist() == [3, 1, 7]  # unknown ids dropped


def test_recent_items_through_the_encoder_are_the_ann_query(paths, tmp_path):
    cfg = serve_config({"bundles": {k: str(paths[k]) for k in ("encoder", "index", "ranker", "catalogue", "users")},
                        "budgets": {"state_ms": 2000, "queue_ms": 2000, "query_ms": 2000, "retrieve_ms": 2000, "rank_ms": 2000},
                        "decision_log": {"directory": str(tmp_path / "log")}, "diversity": {"method": "none"}})
    app = create_app(cfg)
    bs = app.state.holder.current
    queries = []
    real = bs.index.search
    bs.index.search = lambda q, n: (queries.append(np.array(q)), real(q, n))[1]
    enc = bs.encoder
    with TestClient(app, client=("127.0.0.1", 5000)) as c:
        out = c.post("/v1/recommend", json={"user_id": "newcomer", "channel": "web", "k": 5}).json()
        assert out["level"] != "personalised" and "personalised:query:cold_start" in out["reasons"]
        history = enc.item_ids[[5, 9, 2]].tolist()  # oldest first
        evs = [{"user_id": "newcomer", "item_id": i, "event_type": "view", "channel": "web"} for i in history]
        assert c.post("/v1/events", json={"events": evs}).json()["recorded"] == 3
        out = c.post("/v1/recommend", json={"user_id": "newcomer", "channel": "web", "k": 5}).json()
        assert out["level"] == "personalised", out
        assert out["versions"]["encoder"] == "query" and "query" in out["latency_ms"]
        np.testing.assert_allclose(queries[-1], enc.encode(np.array([[5, 9, 2]])), rtol=1e-5, atol=1e-6)
        assert not set(history) & set(out["items"])  # seen items are filtered
        # a different history is a different query and (here) a different slate
        evs = [{"user_id": "other", "item_id": i, "event_type": "view", "channel": "web"}
               for i in enc.item_ids[[40, 41, 60, 77]].tolist()]
        c.post("/v1/events", json={"events": evs})
        c.post("/v1/recommend", json={"user_id": "other", "channel": "web", "k": 5})
        np.testing.assert_allclose(queries[-1], enc.encode(np.array([[40, 41, 60, 77]])), rtol=1e-5, atol=1e-6)
        assert not np.allclose(queries[-1], queries[-2])


def test_encoder_and_index_of_different_runs_are_refused(paths):
    with pytest.raises(BundleSetError, match="embedding_version"):
        load_bundle_set(BundlePaths(encoder=str(paths["encoder"]), index=str(paths["index_other"])))
    with pytest.raises(BundleSetError, match="needs an index"):
        load_bundle_set(BundlePaths(encoder=str(paths["encoder"])))
