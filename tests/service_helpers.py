"""Tiny real bundles and a uvicorn server in a thread, for the decision-service tests."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

N_ITEMS, N_USERS, DIM = 80, 120, 8


def build_bundles(root: Path) -> dict[str, Path]:
    """A DCN-v2 ranker bundle, a Flat index bundle over random item vectors whose
    ``embedding_version`` the ranker lists as compatible, a catalogue and a users
    table; plus a second ranker bundle paired with another embedding version."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.artifacts.embeddings import write_embedding_dir
    from recsys.export.onnx_ranker import export_ranker
    from recsys.retrieval.build import IndexSpec, build_bundle, embedding_version_of
    from tests.helpers import ranker_run

    run = ranker_run(root / "run", seed=3)
    rng = np.random.default_rng(0)
    items = [str(i) for i in range(1, N_ITEMS + 1)]
    users = [str(u) for u in range(1, N_USERS + 1)]
    cats = [str(i % 4 + 1) for i in range(1, N_ITEMS + 1)]
    item_vecs = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    user_vecs = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
    write_embedding_dir(run, {"item_id": np.array(items), "embedding": item_vecs, "category": np.array(cats)},
                        users={"user_id": np.array(users), "embedding": user_vecs},
                        meta={"metric": "ip", "model": "test", "data_fingerprint": "tiny"})
    version = embedding_version_of(run)
    out = {"index": root / "index", "ranker": root / "ranker", "ranker_other": root / "ranker_other",
           "catalogue": root / "catalogue.parquet", "users": root / "users.parquet"}
    build_bundle(run, out["index"], IndexSpec(name="flat", factory="Flat"), recall_queries=50)
    export_ranker(run, out["ranker"], name="test_ranker", min_rows=100, compatible_embedding_versions=[version])
    export_ranker(run, out["ranker_other"], name="other", min_rows=100,
                  compatible_embedding_versions=["SASRec/0123456789abcdef"])
    pq.write_table(pa.table({"item_id": items, "category": [int(c) for c in cats],
                             "price_log": rng.uniform(0, 4, N_ITEMS).astype(np.float32),
                             "available": [i != "80" for i in items]}), out["catalogue"])
    pq.write_table(pa.table({"user_id": users, "user_group": [u % 3 + 1 for u in range(1, N_USERS + 1)]}), out["users"])
    return out


def config(paths: dict[str, Path], tmp: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "bundles": {"ranker": str(paths["ranker"]), "index": str(paths["index"]),
                    "catalogue": str(paths["catalogue"]), "users": str(paths["users"])},
        "budgets": {"state_ms": 500, "queue_ms": 500, "query_ms": 500, "retrieve_ms": 500, "rank_ms": 1000},
        "decision_log": {"directory": str(tmp / "log"), "flush_interval_s": 0.2},
        "blocked_items": ["7"],
        "static_items": [str(i) for i in range(1, 41)],
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a thread; yields the base URL
    and shuts the server down (running the app's shutdown) on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 10
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(timeout=10)


def served_log_setup(serve: dict[str, Any], world: Any, n_requests: int, seed: int, tmp: Path,
                     catalogue: Path, **traffic: Any) -> tuple[Any, dict[str, Any]]:
    """``serve`` (its decision log under ``tmp / "log"``) served over loopback to
    ``n_requests`` simulated world users, the logs joined to ``tmp / "ope_log.parquet"``:
    the OPE setup over ``catalogue`` and the traffic summary."""
    from recsys.bench.simulate import simulate_traffic
    from recsys.data.bandit_logs import LogOptions
    from recsys.ope.setup import build_log_setup, read_log_only
    from recsys.service.app import create_app
    from recsys.service.config import serve_config
    from recsys.service.join import join_logs

    with serving(create_app(serve_config(serve))) as url:
        out = simulate_traffic(url, world, n_requests, seed=seed, **traffic)
    time.sleep(0.1)  # the last flush
    join_logs(tmp / "log", tmp / "ope_log.parquet")
    return build_log_setup(read_log_only(tmp / "ope_log.parquet", LogOptions(), catalogue), str(catalogue)), out
