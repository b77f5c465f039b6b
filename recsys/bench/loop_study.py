"""The bundle sets of the online-loop study on the synthetic world (docs/online_loop.md).

:func:`build_study` trains and exports what each variant serves, all from the same
world (``data=synthetic``) and its leave-one-out split:

* ``recsys train`` runs of SASRec and the two-tower model (subprocesses, like any
  user would run them), each run's ``embeddings/`` indexed exactly (``Flat``) by
  :func:`recsys.retrieval.build.build_bundle`; the run's ``test/ndcg@10`` is its
  offline NDCG;
* two classic baselines written as embedding runs so the service can retrieve with
  them: popularity (a 1-d item vector ``log(1 + train clicks)``, user vector 1) and
  EASE (item vector = its column of the EASE weight matrix, user vector = the user's
  history indicator: ``user . item`` is exactly EASE's score); their offline NDCG is
  :func:`recsys.training.baselines.evaluate_split`'s;
* two DCN-v2 rankers trained on the world's logged impressions, without and with
  the behavioural features (:func:`recsys.features.ranker.add_behavioural_features`),
  exported with every index's ``embedding_version`` as compatible.

Returns the study: ``champion`` (a ``serve:`` block), ``challengers`` (name ->
``serve.bundles`` overrides) and ``offline_ndcg`` (name -> the retrieval model's
test NDCG@10: a ranker variant has its index's, the offline number a team would
look at before a launch).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recsys.utils.errors import RecsysError


def _train_runs(out: Path, data_overrides: Sequence[str], cache_dir: str, epochs: int) -> dict[str, Path]:
    """SASRec and two-tower ``recsys train`` runs, two processes at once."""
    jobs = {"sasrec": "sasrec_synthetic", "two_tower": "two_tower_synthetic"}

    def one(name: str) -> Path:
        run = out / "runs" / name
        if (run / "summary.json").is_file() and (run / "embeddings").is_dir():
            return run
        cmd = [sys.executable, "-m", "recsys", "train", f"experiment={jobs[name]}", *data_overrides, "~logger",
               "trainer.enable_progress_bar=false", f"trainer.max_epochs={epochs}", f"paths.cache_dir={cache_dir}",
               f"hydra.run.dir={run}"]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
        if res.returncode != 0:
            raise RecsysError(f"recsys train {jobs[name]} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
        return run

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(jobs, pool.map(one, jobs)))


def _embedding_run(run: Path, item_ids: np.ndarray, items: np.ndarray, user_ids: np.ndarray, users: np.ndarray,
                   model: str, fingerprint: str) -> Path:
    from recsys.artifacts.embeddings import write_embedding_dir

    if not (run / "embeddings").is_dir():
        write_embedding_dir(run, {"item_id": item_ids, "embedding": items.astype(np.float32)},
                            users={"user_id": user_ids, "embedding": users.astype(np.float32)},
                            meta={"metric": "ip", "model": model, "data_fingerprint": fingerprint})
    return run


def _train_ranker(run: Path, world: Any, behavioural: bool, steps: int, seed: int) -> Path:
    """``<run>/model``: a DCN-v2 after ``steps`` Adam steps on the world's impressions."""
    from recsys.training.ranker.quick import fit_quick_ranker

    if (run / "model").is_dir():
        return run
    return fit_quick_ranker(run, world, deep=(64, 32), train_steps=steps, seed=seed, behavioural=behavioural,
                            test_fraction=0.2, batch_size=512)


def build_study(out: Path, data: Any, split: Any, world: Any, data_overrides: Sequence[str], cache_dir: str,
                epochs: int = 10, ranker_steps: int = 600, seed: int = 0) -> dict[str, Any]:
    """Build every variant's bundles under ``out`` (reused when already there); see the module docstring."""
    import json

    import pyarrow.parquet as pq

    from recsys.export.onnx_ranker import export_ranker
    from recsys.features.ranker import serving_tables
    from recsys.models.baselines import EASE
    from recsys.retrieval.build import IndexSpec, build_bundle, embedding_version_of
    from recsys.training.baselines import EvalOptions, evaluate_split

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    runs = _train_runs(out, data_overrides, cache_dir, epochs)
    timings["train_runs_s"] = time.perf_counter() - t0
    offline = {n: float(json.loads((r / "summary.json").read_text())["test/ndcg@10"]) for n, r in runs.items()}

    # classic baselines as embedding runs (exact: their scores are inner products)
    t = time.perf_counter()
    raw_items = np.asarray(data.raw_item_ids()[1:], dtype=object).astype(str)
    uid = np.asarray(data.users.column("user_id").to_pylist(), dtype=object).astype(str)
    es = split.test
    users_idx = es.users
    train_u, train_i, _ = split.train_arrays()
    opts = EvalOptions(ks=(10,), item_category_column=None)
    counts = np.bincount(train_i, minlength=data.n_items + 1)[1:].astype(np.float64)
    from recsys.models.baselines import Popularity

    offline["popularity"] = float(evaluate_split(Popularity(), data, split, opts)["test/ndcg@10"])
    runs["popularity"] = _embedding_run(out / "runs" / "popularity", raw_items, np.log1p(counts)[:, None],
                                        uid[users_idx - 1], np.ones((len(users_idx), 1)), "popularity",
                                        data.fingerprint)
    ease = EASE(l2=500.0)
    offline["ease"] = float(evaluate_split(ease, data, split, opts)["test/ndcg@10"])  # fitted on the train split
    hist = np.zeros((len(users_idx), data.n_items), dtype=np.float32)
    hist[es.history.row_ids(), es.history.indices - 1] = 1.0
    runs["ease"] = _embedding_run(out / "runs" / "ease", raw_items, ease.weights[1:, 1:].T, uid[users_idx - 1], hist,
                                  "EASE", data.fingerprint)
    timings["baselines_s"] = time.perf_counter() - t

    t = time.perf_counter()
    index, versions = {}, []
    for name, run in runs.items():
        index[name] = out / "bundles" / f"index_{name}"
        if not index[name].is_dir():
            build_bundle(run, index[name], IndexSpec(name="flat", factory="Flat"), recall_queries=50, seed=seed)
        v = embedding_version_of(run)
        if v is not None:  # a baseline's embeddings have no model (and no version): no ranker pairs with them
            versions.append(v)
    timings["index_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ranker = {}
    for name, behavioural in (("dcn", False), ("dcn_behavioural", True)):
        run = _train_ranker(out / "runs" / name, world, behavioural, ranker_steps, seed)
        ranker[name] = out / "bundles" / f"ranker_{name}"
        if not ranker[name].is_dir():
            export_ranker(run, ranker[name], name=name, min_rows=500, compatible_embedding_versions=versions)
    timings["rankers_s"] = time.perf_counter() - t

    catalogue, users = serving_tables(world)
    tables = {"catalogue": out / "bundles" / "catalogue.parquet", "users": out / "bundles" / "users.parquet",
              "events": out / "bundles" / "events.parquet"}
    for name, table in (("catalogue", catalogue), ("users", users), ("events", world.events)):
        if not tables[name].is_file():
            pq.write_table(table, tables[name])
    champion = {"bundles": {"index": str(index["sasrec"]), "ranker": str(ranker["dcn"]),
                            **{k: str(v) for k, v in tables.items()}},
                "caps": {"user_item": None}, "diversity": {"method": "none"}, "n_candidates": 200, "n_rank": 100,
                "decision_log": {"flush_interval_s": 0.5}}
    challengers = {
        "sasrec_dcn_behavioural": {"ranker": str(ranker["dcn_behavioural"])},
        "sasrec_ann": {"ranker": None},
        "two_tower_dcn": {"index": str(index["two_tower"])},
        "two_tower_ann": {"index": str(index["two_tower"]), "ranker": None},
        "ease_ann": {"index": str(index["ease"]), "ranker": None},
        "popularity": {"index": str(index["popularity"]), "ranker": None},
    }
    nd = {"champion": offline["sasrec"], "sasrec_dcn_behavioural": offline["sasrec"], "sasrec_ann": offline["sasrec"],
          "two_tower_dcn": offline["two_tower"], "two_tower_ann": offline["two_tower"], "ease_ann": offline["ease"],
          "popularity": offline["popularity"]}
    study = {"champion": champion, "challengers": challengers, "offline_ndcg": nd,
             "models_offline_ndcg": offline, "timings": {**timings, "total_s": time.perf_counter() - t0}}
    (out / "study.json").write_text(json.dumps(study, indent=1))
    return study
