"""Build an index from item embeddings and save it as a bundle.

Plain functions on numpy arrays (faiss ``contrib`` style): :func:`build_index`
(factory string -> trained, filled faiss index), :func:`exact_search`,
:func:`recall_at_k`, and :func:`build_bundle` (run dir or embedding Parquet ->
bundle with manifest, recall@10 vs exact measured on held-out queries).

Example::

    spec = IndexSpec(name="hnsw", factory="HNSW32", search_params={"efSearch": 64})
    info = build_bundle("runs/train/two_tower", "export/items_index", spec)
    info["recall@10"]                    # vs exact search, on up to 1,000 user vectors
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recsys.retrieval.bundle import METRIC_TYPES, load_manifest, normalize_rows, set_search_params, write_bundle
from recsys.artifacts.embeddings import read_item_embeddings, read_seen, read_user_embeddings
from recsys.retrieval.gpu import TorchExactIndex, gpu_supports, select_backend, to_faiss_gpu
from recsys.utils.errors import DataError, RecsysError
from recsys.utils.progress import progress


@dataclass
class IndexSpec:
    """What to build.

    Args:
        name: a label (``flat``, ``hnsw``, ...).
        factory: a faiss factory string (``Flat``, ``IVF4096,Flat``, ``IVF{nlist},PQ{pq_m}np,RFlat``,
            ``HNSW32``); ``{nlist}`` and ``{pq_m}`` are filled from the data when not given.
        search_params: query-time defaults stored in the bundle (``nprobe``, ``efSearch``, ``k_factor_rf``).
        nlist: IVF lists for ``{nlist}`` (None: ~4 sqrt(n), a power of two, >= 39 points per list).
        train_size: vectors sampled to train IVF / PQ (None: all, capped at 256 per list).
        sweep: knob -> values that ``recsys index tune`` tries.
        hnsw_ef_construction: ``efConstruction`` for HNSW builds.
    """

    name: str = "flat"
    factory: str = "Flat"
    search_params: dict[str, Any] = field(default_factory=dict)
    nlist: int | None = None
    train_size: int | None = None
    sweep: dict[str, list] = field(default_factory=dict)
    hnsw_ef_construction: int = 40

    def resolve(self, n: int, d: int) -> str:
        """The concrete factory string for n vectors of dimension d."""
        nlist = self.nlist or auto_nlist(n)
        pq_m = d // 4 if d % 4 == 0 else d
        return self.factory.format(nlist=nlist, pq_m=pq_m)

    @property
    def exact(self) -> bool:
        return self.factory.strip() == "Flat"


def auto_nlist(n: int) -> int:
    """~4 sqrt(n) rounded to a power of two, with >= 39 training points per list."""
    nlist = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(n)))))
    while nlist > 1 and n / nlist < 39:
        nlist //= 2
    return nlist


def _metric(metric: str) -> int:
    if metric not in METRIC_TYPES:
        raise RecsysError(f"metric={metric!r}, expected one of {sorted(METRIC_TYPES)}")
    return METRIC_TYPES[metric]


def build_index(vectors: np.ndarray, spec: IndexSpec, metric: str = "ip", *, backend: str = "faiss-cpu",
                seed: int = 0, add_batch: int = 65536) -> tuple[faiss.Index, dict[str, Any]]:
    """A trained, filled CPU faiss index over ``vectors`` (n, D) (already normalised for
    ``cos``), and build info (factory, seconds, backend used). On ``faiss-gpu`` the
    training and adding run on the GPU where faiss supports the index type."""
    n, d = vectors.shape
    factory = spec.resolve(n, d)
    t0 = time.perf_counter()
    try:
        index = faiss.index_factory(d, factory, _metric(metric))
    except RuntimeError as e:
        raise RecsysError(f"index factory {factory!r}: {str(e).splitlines()[-1][:160]}") from None
    hnsw = faiss.downcast_index(index)
    if isinstance(hnsw, faiss.IndexHNSW):
        hnsw.hnsw.efConstruction = int(spec.hnsw_ef_construction)
    used = "faiss-cpu"
    gpu_res = None
    if backend == "faiss-gpu" and gpu_supports(factory):
        index, gpu_res = to_faiss_gpu(index)
        used = "faiss-gpu"
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        ivf_cap = 256 * (spec.nlist or auto_nlist(n)) if "IVF" in factory else n
        m = min(n, spec.train_size or ivf_cap, ivf_cap)
        sample = vectors if m >= n else vectors[np.sort(rng.choice(n, m, replace=False))]
        index.train(np.ascontiguousarray(sample))
    for s in progress(range(0, n, add_batch), f"index add ({factory})", total=-(-n // add_batch)):
        index.add(np.ascontiguousarray(vectors[s:s + add_batch]))
    if gpu_res is not None:
        index = faiss.index_gpu_to_cpu(index)
    set_search_params(index, spec.search_params)
    return index, {"factory": factory, "build_s": time.perf_counter() - t0, "build_backend": used}


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip",
                 backend: str = "faiss-cpu") -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k (D, I): torch on the GPU for ``torch``, faiss Flat otherwise."""
    if backend == "torch":
        return TorchExactIndex(vectors, metric).search(queries, k)
    flat = faiss.IndexFlat(vectors.shape[1], _metric(metric))
    flat.add(vectors)
    return flat.search(queries, k)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k."""
    a, e = approx_rows[:, :k], exact_rows[:, :k]
    nq = len(a)
    qa = np.arange(nq)[:, None] * (int(max(a.max(), e.max())) + 2) + a
    qe = np.arange(nq)[:, None] * (int(max(a.max(), e.max())) + 2) + e
    hit = np.isin(qa, qe) & (a >= 0)
    return float(hit.sum() / (nq * k))


def index_bytes(index: faiss.Index) -> int:
    """Serialized size of an index (what it takes in memory, to a few percent)."""
    return int(faiss.serialize_index(index).nbytes)


def _seen_csr(seen: tuple[np.ndarray, np.ndarray], user_ids: np.ndarray, item_ids: np.ndarray,
              where: Path) -> tuple[np.ndarray, np.ndarray]:
    u_sorted = np.argsort(user_ids)
    i_sorted = np.argsort(item_ids)
    su, si = seen
    upos = np.searchsorted(user_ids, su, sorter=u_sorted)
    ipos = np.searchsorted(item_ids, si, sorter=i_sorted)
    upos_c, ipos_c = np.minimum(upos, len(user_ids) - 1), np.minimum(ipos, len(item_ids) - 1)
    urow, irow = u_sorted[upos_c], i_sorted[ipos_c]
    bad_i = item_ids[irow] != si
    if bad_i.any():
        raise DataError(where, f"item id {si[bad_i][0]!r} is not among the item embeddings", column="item_id")
    keep = user_ids[urow] == su  # users without a vector cannot be queried: their rows are dropped
    urow, irow = urow[keep], irow[keep]
    order = np.lexsort((irow, urow))
    counts = np.bincount(urow, minlength=len(user_ids))
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, irow[order].astype(np.int64)


def held_out_queries(item_vectors: np.ndarray, user_vectors: np.ndarray | None, n: int, *, seed: int = 0,
                     metric: str = "ip") -> tuple[np.ndarray, str]:
    """Queries for measuring recall: a sample of user vectors (the real query
    distribution) when there are users, else item vectors plus Gaussian noise of 10%
    of each dimension's spread (item-to-item queries that are not themselves indexed)."""
    rng = np.random.default_rng(seed)
    if user_vectors is not None and len(user_vectors):
        pick = np.sort(rng.choice(len(user_vectors), min(n, len(user_vectors)), replace=False))
        q, source = user_vectors[pick], "user vectors"
    else:
        pick = np.sort(rng.choice(len(item_vectors), min(n, len(item_vectors)), replace=False))
        noise = rng.standard_normal((len(pick), item_vectors.shape[1])).astype(np.float32)
        q, source = item_vectors[pick] + noise * item_vectors.std(0) * 0.1, "item vectors + 10% noise"
    q = normalize_rows(q) if metric == "cos" else np.ascontiguousarray(q, dtype=np.float32)
    return q, source


def embedding_version_of(source: str | Path) -> str | None:
    """``"<model class>/<first 16 hex of the weights sha256>"`` when ``source`` is a
    run directory with ``model/model_args.json`` (what a ranker bundle lists as
    compatible), else None."""
    from recsys.artifacts.models import embedding_version

    model_dir = Path(source) / "model"
    if not (model_dir / "model_args.json").is_file():
        return None
    return embedding_version(model_dir)  # the model folder is verified first


def build_bundle(source: str | Path, out_dir: str | Path, spec: IndexSpec, *, metric: str | None = None,
                 backend: str = "auto", recall_queries: int = 1000, k: int = 10, seed: int = 0,
                 include_users: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Read embeddings from ``source`` (run dir, ``embeddings/`` folder or item Parquet),
    build ``spec``, measure recall@k against exact search on held-out queries, and
    write the bundle atomically to ``out_dir``. Returns the manifest."""
    t_start = time.perf_counter()
    items = read_item_embeddings(source)
    meta = items.meta
    metric = metric or meta.get("metric")
    if metric is None:
        raise DataError(items.path, "no metric: give metric=ip|l2|cos (no meta.json beside the embeddings)")
    _metric(metric)
    users_file = Path(items.path).parent / "users.parquet"
    users = read_user_embeddings(users_file) if include_users and users_file.is_file() else None
    if users is not None and users.dim != items.dim:
        raise DataError(users.path, f"user embeddings have dimension {users.dim}, items have {items.dim}",
                        column="embedding")
    vectors = normalize_rows(items.vectors) if metric == "cos" else items.vectors
    backend = select_backend(backend)
    index, info = build_index(vectors, spec, metric, backend=backend, seed=seed)

    queries, query_source = held_out_queries(items.vectors, users.vectors if users is not None else None,
                                             recall_queries, seed=seed, metric=metric)
    kk = min(k, len(items))
    _, exact_rows = exact_search(vectors, queries, kk, metric, backend="torch" if backend == "torch" else "faiss-cpu")
    _, approx_rows = index.search(queries, kk)
    recall = recall_at_k(approx_rows, exact_rows, kk)

    seen = read_seen(source) if users is not None else None
    seen_csr = _seen_csr(seen, users.ids, items.ids, Path(items.path).parent / "seen.parquet") if seen else None
    manifest = {
        "metric": metric,
        "normalize": metric == "cos",
        "index_spec": {"name": spec.name, "factory": info["factory"], "nlist": spec.nlist,
                       "train_size": spec.train_size},
        "search_params": {**spec.search_params},
        "source": str(items.path),
        "model": meta.get("model"),
        "model_run": str(Path(source).resolve()) if Path(source).is_dir() else None,
        "data_fingerprint": meta.get("data_fingerprint"),
        # same rule as query-encoder bundles: "<model class>/<weights sha256[:16]>" of the run's model
        "embedding_version": embedding_version_of(source),
        "build_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_s": round(info["build_s"], 3),
        "build_backend": info["build_backend"],
        f"recall@{k}": round(recall, 4),
        "recall_queries": {"n": len(queries), "source": query_source, "k": kk, "seed": seed},
        "index_bytes": index_bytes(index),
        "has_users": users is not None,
        "has_categories": items.categories is not None,
        "has_seen": seen_csr is not None,
        "versions": {"faiss": faiss.__version__, "numpy": np.__version__},
    }
    write_bundle(out_dir, index, items.ids, manifest, categories=items.categories,
                 user_ids=users.ids if users is not None else None,
                 user_vectors=users.vectors if users is not None else None, seen=seen_csr, overwrite=overwrite)
    full = load_manifest(out_dir, verify=False)
    full["total_s"] = round(time.perf_counter() - t_start, 3)
    return full
