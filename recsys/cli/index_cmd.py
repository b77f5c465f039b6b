"""``recsys index build | query | tune | bench``: FAISS retrieval over item embeddings.

No torch import on CPU machines (torch is loaded only where a CUDA driver exists).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import write_summary
from recsys.utils.errors import DataError, RecsysError

KNOBS = ("nprobe", "efSearch", "k_factor_rf")
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # not its CPU-feature probing on every run


def _bundle_dir(cfg: DictConfig, ref: str) -> Path:
    from recsys.artifacts.bundle import resolve_bundle_ref

    return resolve_bundle_ref(ref, cfg.paths.export_dir)


def _knobs(cfg: DictConfig) -> dict[str, Any]:
    return {k: cfg.get(k) for k in KNOBS if cfg.get(k) is not None}


def _threads(cfg: DictConfig) -> None:
    if cfg.get("threads") is not None:
        import faiss

        faiss.omp_set_num_threads(int(cfg.threads))


def build(cfg: DictConfig) -> dict:
    from recsys.artifacts.bundle import INDEX_FORMAT, bundle_name, check_output_target
    from recsys.retrieval.build import build_bundle

    _threads(cfg)
    spec = instantiate(cfg.index)
    if not cfg.get("out") and not cfg.get("name"):
        raise RecsysError("name is required, e.g. recsys index build source=<run dir> name=<bundle> (or out=<dir>)")
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.paths.export_dir) / bundle_name(cfg.name)
    overwrite = bool(cfg.get("overwrite", False))
    check_output_target(out, format=INDEX_FORMAT, kind="index", overwrite=overwrite)  # before the build's work
    m = build_bundle(cfg.source, out, spec, metric=cfg.get("metric"), backend=str(cfg.backend),
                     recall_queries=int(cfg.recall_queries), seed=int(cfg.seed), overwrite=overwrite)
    print(f"built {m['index_spec']['factory']} ({m['metric']}) over {m['n_items']} items x {m['dim']} "
          f"in {m['build_s']:.1f}s on {m['build_backend']}: recall@10 {m['recall@10']:.4f} vs exact "
          f"({m['recall_queries']['n']} {m['recall_queries']['source']}), "
          f"{m['index_bytes'] / 2**20:.1f} MB")
    print(f"bundle: {out}")
    result = {"bundle": str(out), **{k: m[k] for k in ("n_items", "dim", "metric", "build_s", "recall@10",
                                                         "index_bytes", "build_backend")},
              "index": m["index_spec"]["factory"], "search_params": m["search_params"]}
    path = write_summary(cfg, {"command": "index build", **result, "manifest": m})
    print(f"summary: {path}")
    return result


def _ids(value: Any) -> list[str] | None:
    if value is None:
        return None
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def query(cfg: DictConfig) -> dict:
    from recsys.serving.index import IndexRuntime

    bundle_dir = _bundle_dir(cfg, str(cfg.bundle))
    rt = IndexRuntime(bundle_dir, verify=bool(cfg.verify), search_params=_knobs(cfg),
                      threads=cfg.get("threads"))
    users, items, k = _ids(cfg.get("user")), _ids(cfg.get("item")), int(cfg.k)
    given = [n for n, v in (("user", users), ("item", items), ("users_file", cfg.get("users_file"))) if v]
    if len(given) != 1:
        raise RecsysError(f"give exactly one of user=<id>, item=<id>, users_file=<parquet> (got {given or 'none'})")
    if cfg.get("users_file"):
        users = _read_user_ids(Path(cfg.users_file))
    t0 = time.perf_counter()
    if items:
        if cfg.exclude_seen:
            raise RecsysError("exclude_seen applies to queries by user, not by item")
        hits, keys, key_name = rt.similar_items(items, k, category=cfg.get("category")), items, "item_id"
    else:
        hits, keys, key_name = (rt.search_users(users, k, exclude_seen=bool(cfg.exclude_seen),
                                                category=cfg.get("category")), users, "user_id")
    secs = time.perf_counter() - t0
    out = Path(cfg.out) if cfg.get("out") else (Path(cfg.paths.output_dir) / "results.parquet"
                                                  if cfg.get("users_file") else None)
    if out is not None:
        _write_hits(out, key_name, keys, hits)
    for q in range(min(len(keys), int(cfg.print_max))):
        print(f"{key_name} {keys[q]}:")
        for r in range(k):
            if hits.rows[q, r] >= 0:
                print(f"  {r + 1:>3}  {hits.ids[q, r]:<20}  {hits.scores[q, r]: .4f}")
    if len(keys) > int(cfg.print_max):
        print(f"... {len(keys) - int(cfg.print_max)} more queries")
    if out is not None:
        print(f"results: {out}")
    result = {"bundle": str(bundle_dir), "n_queries": len(keys), "k": k, "search_params": rt.params,
              "seconds": secs, "results": str(out) if out else None,
              "top": {str(keys[q]): hits.ids[q][hits.rows[q] >= 0].tolist() for q in range(min(len(keys), 20))}}
    write_summary(cfg, {"command": "index query", **result})
    return result


def _read_user_ids(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(path, "no such file")
    try:
        t = pq.read_table(path, columns=["user_id"])
    except (pa.ArrowInvalid, KeyError, OSError) as e:
        raise DataError(path, f"cannot read a 'user_id' column ({str(e).splitlines()[0]})", column="user_id") from None
    return [str(u) for u in t.column("user_id").to_pylist()]


def _write_hits(path: Path, key_name: str, keys: list[str], hits) -> None:  # noqa: ANN001
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.utils.io import atomic_path

    b, k = hits.rows.shape
    keep = (hits.rows >= 0).reshape(-1)
    table = pa.table({
        key_name: pa.array(np.repeat(np.asarray(keys, dtype=str), k)[keep], pa.string()),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), b)[keep]),
        "item": pa.array(hits.ids.reshape(-1)[keep], pa.string()),
        "score": pa.array(hits.scores.reshape(-1)[keep].astype(np.float32)),
    }).rename_columns([key_name, "rank", "rec_item_id", "score"])
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def tune(cfg: DictConfig) -> dict:
    import faiss

    from recsys.retrieval.build import exact_search, held_out_queries
    from recsys.retrieval.tune import frontier, pick, sweep
    from recsys.serving.index import IndexRuntime

    bundle_dir = _bundle_dir(cfg, str(cfg.bundle))
    rt = IndexRuntime(bundle_dir, verify=bool(cfg.verify))
    faiss.omp_set_num_threads(int(cfg.threads))
    has = rt.params
    grid = {kn: list(v) for kn, v in cfg.grid.items() if kn in has and v}
    if not grid:
        raise RecsysError(f"{bundle_dir}: index {rt.manifest['index_spec']['factory']} has no query-time knob "
                          f"to tune (knobs: nprobe for IVF, efSearch for HNSW, k_factor_rf for refine)")
    if "nprobe" in grid:
        nlist = faiss.extract_index_ivf(rt.index).nlist
        grid["nprobe"] = [v for v in grid["nprobe"] if v <= nlist] or [nlist]
    k = int(cfg.k)
    vectors = rt.all_vectors()
    queries, source = held_out_queries(vectors, rt.user_vectors, int(cfg.n_queries), seed=int(cfg.seed),
                                       metric=rt.metric)
    _, exact_rows = exact_search(vectors, queries, k, rt.metric)
    t0 = time.perf_counter()
    points = sweep(rt.index, queries, exact_rows, grid, k=k, repeats=int(cfg.repeats))
    front = frontier(points, k)
    chosen = pick(points, float(cfg.min_recall), k)
    print(f"{rt.manifest['index_spec']['factory']} over {rt.n_items} items; {len(queries)} {source}; "
          f"{cfg.threads} thread(s)")
    print(f"{'params':<36}  {'recall@' + str(k):>10}  {'qps':>10}  {'ms/query':>9}  frontier")
    front_ids = {id(p) for p in front}
    for p in sorted(points, key=lambda p: p[f"recall@{k}"]):
        print(f"{json.dumps(p['params']):<36}  {p[f'recall@{k}']:>10.4f}  {p['qps']:>10.0f}  "
              f"{p['ms_per_query']:>9.4f}  {'*' if id(p) in front_ids else ''}")
    if chosen:
        print(f"fastest with recall@{k} >= {cfg.min_recall}: {json.dumps(chosen['params'])} "
              f"({chosen['qps']:.0f} queries/s); use it with `recsys index query ... "
              + " ".join(f"{a}={b}" for a, b in chosen["params"].items()) + "`")
    else:
        print(f"no point reaches recall@{k} >= {cfg.min_recall}: widen the grid")
    result = {"bundle": str(bundle_dir), "index": rt.manifest["index_spec"]["factory"], "points": points,
              "frontier": front, "chosen": chosen, "queries": {"n": len(queries), "source": source},
              "threads": int(cfg.threads), "seconds": time.perf_counter() - t0}
    path = write_summary(cfg, {"command": "index tune", **result})
    print(f"summary: {path}")
    return result


def bench(cfg: DictConfig) -> dict:
    from recsys.retrieval.bench import run_bench

    b = cfg.bench
    specs = [instantiate(c) for c in cfg.candidates.values()]
    res = run_bench(specs, n_items=int(b.n_items), dim=int(b.dim), n_queries=int(b.n_queries), k=int(b.k),
                    min_recall=float(b.min_recall), threads=int(b.threads), build_threads=int(b.build_threads),
                    seed=int(b.seed), repeats=int(b.repeats), workdir=cfg.paths.output_dir,
                    generator=OmegaConf.to_container(b.generator, resolve=True))
    k = int(b.k)
    head = (f"{'index':<22} {'params':<30} {'recall@' + str(k):>9} {'qps':>9} {'speedup':>8} "
            f"{'build_s':>8} {'memory_mb':>9}")
    print(head)
    print("-" * len(head))
    for r in res["results"]:
        print(f"{r['index']:<22} {json.dumps(r['params']):<30} {r[f'recall@{k}']:>9.4f} {r['qps']:>9.0f} "
              f"{r['speedup_vs_exact']:>8.1f} {r['build_s']:>8.1f} {r['memory_mb']:>9.1f}")
    if res["wrapper_overhead"] is not None:
        d = res["wrapper_overhead_detail"]
        print(f"wrapper_overhead: {res['wrapper_overhead']:.3f} (project / raw faiss CPU time, {d['index']} "
              f"{d['params']}, batch {d['batch']}; wall clock {d['wall_ratio']:.3f}; batch 1: "
              f"{d['batch1']['ratio']:.3f})")
    print(f"gpu: {res['gpu']}")
    import sys

    path = write_summary(cfg, {"command": "index bench", "argv": " ".join(["recsys", "index", "bench", *sys.argv[1:]]),
                               **res})
    print(f"summary: {path}")
    return res
