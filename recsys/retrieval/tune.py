"""Sweep query-time knobs (``nprobe``, ``efSearch``, ``k_factor_rf``) and report the
recall / queries-per-second frontier, so a user can pick an operating point.

Example::

    pts = sweep(index, queries, exact_rows, {"efSearch": [16, 32, 64, 128]})
    best = pick(pts, min_recall=0.95)       # the fastest point with recall@10 >= 0.95
"""
from __future__ import annotations

import itertools
import time
from typing import Any, Mapping

import faiss
import numpy as np

from recsys.retrieval.build import exact_search, held_out_queries, recall_at_k
from recsys.retrieval.bundle import IndexBundle, set_search_params
from recsys.utils.errors import RecsysError
from recsys.utils.progress import progress


def time_search(search, queries: np.ndarray, k: int, repeats: int = 3, batch: int | None = None,
                clock: str = "wall") -> tuple[float, np.ndarray]:
    """Best-of-``repeats`` seconds to answer all ``queries`` (in batches of ``batch``,
    default one call) and the rows of the last run. ``clock="cpu"`` counts this
    process's CPU time instead of wall time (immune to waiting for a busy core)."""
    nq = len(queries)
    batch = batch or nq
    timer = time.process_time if clock == "cpu" else time.perf_counter
    best, rows = float("inf"), None
    for _ in range(repeats):
        t0 = timer()
        parts = [search(queries[s:s + batch], k)[1] for s in range(0, nq, batch)]
        best = min(best, timer() - t0)
        rows = parts[0] if len(parts) == 1 else np.vstack(parts)
    return best, rows


def sweep(index: faiss.Index, queries: np.ndarray, exact_rows: np.ndarray, grid: Mapping[str, list],
          k: int = 10, repeats: int = 3) -> list[dict[str, Any]]:
    """One point per combination of ``grid`` values: params, recall@k, qps, ms/query."""
    names = list(grid)
    points = []
    combos = list(itertools.product(*(grid[n] for n in names))) if names else [()]
    for values in progress(combos, "index tune"):
        params = dict(zip(names, values))
        set_search_params(index, params)
        secs, rows = time_search(index.search, queries, k, repeats=repeats)
        points.append({"params": params, f"recall@{k}": recall_at_k(rows, exact_rows, k),
                       "qps": len(queries) / secs, "ms_per_query": 1000 * secs / len(queries)})
    return points


def frontier(points: list[dict[str, Any]], k: int = 10) -> list[dict[str, Any]]:
    """The Pareto points: no other point has both higher recall and higher qps."""
    key = f"recall@{k}"
    pts = sorted(points, key=lambda p: (-p["qps"], -p[key]))
    out, best_recall = [], -1.0
    for p in pts:
        if p[key] > best_recall:
            out.append(p)
            best_recall = p[key]
    return out


def pick(points: list[dict[str, Any]], min_recall: float = 0.95, k: int = 10) -> dict[str, Any] | None:
    """The fastest point with recall@k >= ``min_recall`` (None if no point reaches it)."""
    ok = [p for p in points if p[f"recall@{k}"] >= min_recall]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def query_grid(bundle: IndexBundle, grid: Mapping[str, list]) -> dict[str, list]:
    """The part of ``grid`` the bundle's index has knobs for, ``nprobe`` values capped
    at the index's number of lists; refused when nothing is left to tune."""
    out = {kn: list(v) for kn, v in grid.items() if kn in bundle.params and v}
    if not out:
        raise RecsysError(f"{bundle.directory}: index {bundle.manifest['index_spec']['factory']} has no query-time "
                          f"knob to tune (knobs: nprobe for IVF, efSearch for HNSW, k_factor_rf for refine)")
    if "nprobe" in out:
        nlist = faiss.extract_index_ivf(bundle.index).nlist
        out["nprobe"] = [v for v in out["nprobe"] if v <= nlist] or [nlist]
    return out


def reference_queries(bundle: IndexBundle, n: int, k: int, seed: int = 0) -> tuple[np.ndarray, str, np.ndarray]:
    """(held-out queries, what they are, their exact top-``k`` rows) to measure recall on."""
    vectors = bundle.all_vectors()
    queries, source = held_out_queries(vectors, bundle.user_vectors, n, seed=seed, metric=bundle.metric)
    _, exact_rows = exact_search(vectors, queries, k, bundle.metric)
    return queries, source, exact_rows
