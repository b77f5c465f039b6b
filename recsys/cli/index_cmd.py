"""``recsys index build | query | tune | bench``: FAISS retrieval over item embeddings.

No torch import on CPU machines (torch is loaded only where a CUDA driver exists).
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.cli.bundles import bundle_dir
from recsys.cli.common import write_summary
from recsys.utils.errors import RecsysError

KNOBS = ("nprobe", "efSearch", "k_factor_rf")
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # not its CPU-feature probing on every run


def build(cfg: DictConfig) -> dict:
    from recsys.artifacts.bundle import INDEX_FORMAT, bundle_name, check_output_target
    from recsys.retrieval.build import build_bundle
    from recsys.retrieval.report import build_report

    if cfg.get("threads") is not None:
        import faiss

        faiss.omp_set_num_threads(int(cfg.threads))
    spec = instantiate(cfg.index)
    if not cfg.get("out") and not cfg.get("name"):
        raise RecsysError("name is required, e.g. recsys index build source=<run dir> name=<bundle> (or out=<dir>)")
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.paths.export_dir) / bundle_name(cfg.name)
    overwrite = bool(cfg.get("overwrite", False))
    check_output_target(out, format=INDEX_FORMAT, kind="index", overwrite=overwrite)  # before the build's work
    m = build_bundle(cfg.source, out, spec, metric=cfg.get("metric"), backend=str(cfg.backend),
                     recall_queries=int(cfg.recall_queries), seed=int(cfg.seed), overwrite=overwrite)
    lines, result = build_report(m, out)
    print("\n".join(lines))
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
    from recsys.retrieval.query import query_bundle, write_hits
    from recsys.retrieval.report import hits_lines, top_ids
    from recsys.serving.index import IndexRuntime

    bundle = bundle_dir(cfg, str(cfg.bundle))
    rt = IndexRuntime(bundle, verify=bool(cfg.verify), threads=cfg.get("threads"),
                      search_params={k: cfg.get(k) for k in KNOBS if cfg.get(k) is not None})
    key_name, keys, hits, secs = query_bundle(rt, int(cfg.k), users=_ids(cfg.get("user")), items=_ids(cfg.get("item")),
                                              users_file=cfg.get("users_file"), exclude_seen=bool(cfg.exclude_seen),
                                              category=cfg.get("category"))
    out = Path(cfg.out) if cfg.get("out") else (Path(cfg.paths.output_dir) / "results.parquet"
                                                  if cfg.get("users_file") else None)
    if out is not None:
        write_hits(out, key_name, keys, hits)
    for line in hits_lines(key_name, keys, hits, int(cfg.print_max)) + ([f"results: {out}"] if out else []):
        print(line)
    result = {"bundle": str(bundle), "n_queries": len(keys), "k": int(cfg.k), "search_params": rt.params,
              "seconds": secs, "results": str(out) if out else None, "top": top_ids(keys, hits)}
    write_summary(cfg, {"command": "index query", **result})
    return result


def tune(cfg: DictConfig) -> dict:
    import faiss

    from recsys.retrieval.report import plot_frontier, sweep_lines
    from recsys.retrieval.tune import frontier, pick, query_grid, reference_queries, sweep
    from recsys.serving.index import IndexRuntime

    bundle = bundle_dir(cfg, str(cfg.bundle))
    rt = IndexRuntime(bundle, verify=bool(cfg.verify))
    faiss.omp_set_num_threads(int(cfg.threads))
    factory, k = rt.manifest["index_spec"]["factory"], int(cfg.k)
    grid = query_grid(rt, cfg.grid)
    queries, source, exact_rows = reference_queries(rt, int(cfg.n_queries), k, seed=int(cfg.seed))
    t0 = time.perf_counter()
    points = sweep(rt.index, queries, exact_rows, grid, k=k, repeats=int(cfg.repeats))
    front, chosen = frontier(points, k), pick(points, float(cfg.min_recall), k)
    print(f"{factory} over {rt.n_items} items; {len(queries)} {source}; {cfg.threads} thread(s)")
    print("\n".join(sweep_lines(points, front, chosen, k, cfg.min_recall)))
    result = {"bundle": str(bundle), "index": factory, "points": points, "frontier": front, "chosen": chosen,
              "queries": {"n": len(queries), "source": source}, "threads": int(cfg.threads),
              "seconds": time.perf_counter() - t0}
    plot = plot_frontier(Path(cfg.paths.output_dir) / "frontier.png", {factory: points}, k,
                         min_recall=float(cfg.min_recall))
    result["plot"] = str(plot)
    print(f"frontier plot: {plot}")
    path = write_summary(cfg, {"command": "index tune", **result})
    print(f"summary: {path}")
    return result


def bench(cfg: DictConfig) -> dict:
    from recsys.bench.retrieval import report_lines, run_bench

    b = cfg.bench
    specs = [instantiate(c) for c in cfg.candidates.values()]
    res = run_bench(specs, n_items=int(b.n_items), dim=int(b.dim), n_queries=int(b.n_queries), k=int(b.k),
                    min_recall=float(b.min_recall), threads=int(b.threads), build_threads=int(b.build_threads),
                    seed=int(b.seed), repeats=int(b.repeats), workdir=cfg.paths.output_dir,
                    generator=OmegaConf.to_container(b.generator, resolve=True))
    print("\n".join(report_lines(res)))
    from recsys.retrieval.report import plot_frontier

    curves = {r["index"]: r["sweep"] for r in res["results"] if r.get("sweep")}
    res["plot"] = str(plot_frontier(Path(cfg.paths.output_dir) / "frontier.png", curves, int(b.k),
                                    exact_qps=res["exact_qps"], min_recall=float(b.min_recall)))
    print(f"frontier plot: {res['plot']}")
    argv = " ".join(["recsys", "index", "bench", *sys.argv[1:]])
    path = write_summary(cfg, {"command": "index bench", "argv": argv, **res})
    print(f"summary: {path}")
    return res
