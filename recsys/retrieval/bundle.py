"""Index bundles: save, verify, load and search. numpy + faiss only (no torch, no
pyarrow), so :mod:`recsys.serving.index` serves these bundles as they are.

Layout (``format: recsys.index_bundle/1``)::

    <bundle>/
      manifest.json        dim, metric, normalize, index spec, search params, n_items,
                           model run + data fingerprint, build time, recall@10 vs exact,
                           sha256 and size of every file below
      index.faiss          the faiss index (CPU form; row r of the index = item r)
      item_ids.npy         (n,) unicode raw item ids, row order of the index
      item_categories.npy  (n,) unicode categories (optional)
      user_ids.npy         (m,) unicode raw user ids (optional: query by user id)
      user_vectors.npy     (m, D) float32 user-tower outputs (optional)
      seen_indptr.npy      (m + 1,) int64 and seen_items.npy (nnz,) int64: the items
                           each user has seen, as index rows (optional: exclude seen)

Arrays are ``.npy`` loaded with ``allow_pickle=False``: nothing is unpickled.

Example::

    b = IndexBundle("export/items_index")
    hits = b.search_users(["u17", "u3"], k=10, exclude_seen=True)
    hits.ids[0], hits.scores[0]          # (10,) raw item ids and scores of user u17
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import faiss
import numpy as np

from recsys.artifacts.bundle import INDEX_FORMAT, MANIFEST_SHA_FILE, verify_bundle
from recsys.artifacts.bundle import write_bundle as write_bundle_dir
from recsys.artifacts.errors import BundleError
from recsys.utils.errors import DataError

BUNDLE_FORMAT = INDEX_FORMAT
__all__ = ["BUNDLE_FORMAT", "MANIFEST_SHA_FILE", "BundleError", "Hits", "IndexBundle", "load_manifest",
           "write_bundle"]
INDEX_FILE = "index.faiss"
SEARCH_PARAMS = ("nprobe", "efSearch", "k_factor_rf")
METRIC_TYPES = {"ip": faiss.METRIC_INNER_PRODUCT, "cos": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


@dataclass
class Hits:
    """Top-k results of B queries: ``scores`` (B, k) float32 (inner product, or
    squared L2 distance for ``l2``), ``rows`` (B, k) int64 index rows (-1 = fewer
    than k results), ``ids`` (B, k) raw item ids ('' where rows is -1)."""

    scores: np.ndarray
    rows: np.ndarray
    ids: np.ndarray


# ----------------------------------------------------------------------------- helpers

def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero), float32, C-contiguous."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def set_search_params(index: faiss.Index, params: Mapping[str, Any]) -> None:
    """Set query-time knobs (``nprobe``, ``efSearch``, ``k_factor_rf``) on an index;
    a knob the index does not have raises DataError."""
    ps = faiss.ParameterSpace()
    for name, value in params.items():
        if value is None:
            continue
        if name not in SEARCH_PARAMS:
            raise DataError(None, f"unknown search parameter {name!r}, expected one of {SEARCH_PARAMS}")
        try:
            ps.set_index_parameter(index, name, float(value))
        except RuntimeError:
            raise DataError(None, f"search parameter {name}={value}: the index "
                                  f"({type(faiss.downcast_index(index)).__name__}) has no such knob") from None


def get_search_params(index: faiss.Index) -> dict[str, int]:
    """The knobs an index has, with their current values."""
    out: dict[str, int] = {}
    top = faiss.downcast_index(index)
    if isinstance(top, (faiss.IndexRefine, faiss.IndexRefineFlat)):
        out["k_factor_rf"] = float(top.k_factor)
        top = faiss.downcast_index(top.base_index)
    ivf = faiss.try_extract_index_ivf(top)
    if ivf is not None:
        out["nprobe"] = int(ivf.nprobe)
    if isinstance(top, faiss.IndexHNSW):
        out["efSearch"] = int(top.hnsw.efSearch)
    return out


def _filtered_params(index: faiss.Index, sel: faiss.IDSelector) -> faiss.SearchParameters:
    """SearchParameters that restrict the search to ``sel`` and keep the index's knobs."""
    top = faiss.downcast_index(index)
    refine = None
    if isinstance(top, (faiss.IndexRefine, faiss.IndexRefineFlat)):
        refine, top = top, faiss.downcast_index(top.base_index)
    ivf = faiss.try_extract_index_ivf(top)
    if ivf is not None:
        p = faiss.SearchParametersIVF(sel=sel, nprobe=int(ivf.nprobe))
    elif isinstance(top, faiss.IndexHNSW):
        p = faiss.SearchParametersHNSW(sel=sel, efSearch=int(top.hnsw.efSearch))
    else:
        p = faiss.SearchParameters(sel=sel)
    if refine is not None:
        p = faiss.IndexRefineSearchParameters(k_factor=float(refine.k_factor), base_index_params=p, sel=sel)
    return p


# ----------------------------------------------------------------------------- writing

def write_bundle(out_dir: str | Path, index: faiss.Index, item_ids: np.ndarray, manifest: Mapping[str, Any], *,
                 categories: np.ndarray | None = None, user_ids: np.ndarray | None = None,
                 user_vectors: np.ndarray | None = None, seen: tuple[np.ndarray, np.ndarray] | None = None,
                 overwrite: bool = False) -> Path:
    """Write a bundle atomically (all files + manifest with sha256, or nothing).

    ``index`` must be a CPU faiss index whose row r is ``item_ids[r]``; ``seen`` is
    ``(indptr (m+1,), items (nnz,))`` over user rows and index rows."""
    out = Path(out_dir)
    n = int(index.ntotal)
    if len(item_ids) != n:
        raise DataError(out, f"{len(item_ids)} item ids for an index of {n} vectors")
    arrays: dict[str, np.ndarray] = {"item_ids.npy": np.asarray(item_ids).astype(str)}
    if categories is not None:
        arrays["item_categories.npy"] = np.asarray(categories).astype(str)
    if user_ids is not None:
        arrays["user_ids.npy"] = np.asarray(user_ids).astype(str)
        arrays["user_vectors.npy"] = np.ascontiguousarray(user_vectors, dtype=np.float32)
    if seen is not None:
        arrays["seen_indptr.npy"] = np.asarray(seen[0], dtype=np.int64)
        arrays["seen_items.npy"] = np.asarray(seen[1], dtype=np.int64)
    with write_bundle_dir(out, format=BUNDLE_FORMAT, kind="index", overwrite=overwrite) as draft:
        faiss.write_index(index, str(draft.path / INDEX_FILE))
        for name, a in arrays.items():
            np.save(draft.path / name, a, allow_pickle=False)
        draft.manifest.update({**manifest, "n_items": n, "dim": int(index.d)})
    return out


# ----------------------------------------------------------------------------- loading

def load_manifest(bundle_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """``manifest.json`` of an index bundle, verified before anything else is read
    (:func:`recsys.artifacts.bundle.verify_bundle`): its own checksum, format, kind,
    every listed file's size, and with ``verify`` every file's sha256."""
    return verify_bundle(bundle_dir, format=BUNDLE_FORMAT, kind="index", require=[INDEX_FILE], hashes=verify)


class IndexBundle:
    """A loaded index bundle: search by vector, user id or item id.

    Args:
        bundle_dir: a folder written by :func:`write_bundle` (``recsys index build``).
        verify: check every file's sha256 against the manifest (size is always checked).
        search_params: query-time knobs overriding the manifest's (``nprobe``,
            ``efSearch``, ``k_factor_rf``).
        threads: faiss OpenMP threads (None leaves faiss's setting alone).
        gpu: move the index to GPU 0 when the installed faiss has GPU support
            (Flat / IVF; HNSW stays on the CPU). Filters and knobs work on the CPU form.
    """

    def __init__(self, bundle_dir: str | Path, *, verify: bool = True,
                 search_params: Mapping[str, Any] | None = None, threads: int | None = None,
                 gpu: bool = False):
        self.directory = Path(bundle_dir)
        self.manifest = load_manifest(self.directory, verify=verify)
        files = self.manifest["files"]
        idx_path = self.directory / INDEX_FILE
        try:
            self.index = faiss.read_index(str(idx_path))
        except RuntimeError as e:
            raise DataError(idx_path, f"faiss cannot read it ({str(e).splitlines()[-1][:120]})") from None
        self.dim = int(self.manifest["dim"])
        self.metric = str(self.manifest["metric"])
        self.normalize = bool(self.manifest.get("normalize", self.metric == "cos"))
        if self.index.d != self.dim or self.index.ntotal != self.manifest["n_items"]:
            raise DataError(idx_path, f"index has d={self.index.d}, n={self.index.ntotal}; manifest says "
                                      f"d={self.dim}, n={self.manifest['n_items']}")
        self.item_ids = self._array("item_ids.npy")
        self._ids_ext = np.append(self.item_ids, "")  # row -1 -> ''
        self._item_row: dict[str, int] | None = None  # built on first lookup by item id
        self.categories = self._array("item_categories.npy") if "item_categories.npy" in files else None
        self.user_ids = self._array("user_ids.npy") if "user_ids.npy" in files else None
        self.user_vectors = self._array("user_vectors.npy") if self.user_ids is not None else None
        self._user_row = {s: i for i, s in enumerate(self.user_ids.tolist())} if self.user_ids is not None else {}
        if "seen_indptr.npy" in files:
            self.seen_indptr, self.seen_items = self._array("seen_indptr.npy"), self._array("seen_items.npy")
        else:
            self.seen_indptr = self.seen_items = None
        self.exact_subset_max = 50_000  # categories up to this size are searched exactly
        self._subsets: dict[str, tuple[faiss.IndexFlat, np.ndarray]] = {}
        if threads is not None:
            faiss.omp_set_num_threads(int(threads))
        self.set_params({**self.manifest.get("search_params", {}), **(search_params or {})})
        self.device = "cpu"
        if gpu and faiss.get_num_gpus() > 0 and "HNSW" not in self.manifest["index_spec"].get("factory", ""):
            self._gpu_res = faiss.StandardGpuResources()  # must outlive the GPU index
            self.index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self.index)
            self.device = "faiss-gpu"

    def _array(self, name: str) -> np.ndarray:
        p = self.directory / name
        try:
            return np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(p, f"cannot read it ({e})") from None

    # -- knobs
    def set_params(self, params: Mapping[str, Any]) -> None:
        """Query-time knobs: ``nprobe`` (IVF), ``efSearch`` (HNSW), ``k_factor_rf`` (refine)."""
        set_search_params(self.index, params)

    @property
    def params(self) -> dict[str, int]:
        return get_search_params(self.index)

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    # -- lookups
    def item_rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """Index rows of raw item ids; an unknown id raises DataError naming it."""
        if self._item_row is None:
            self._item_row = {s: i for i, s in enumerate(self.item_ids.tolist())}
        try:
            return np.fromiter((self._item_row[str(i)] for i in item_ids), dtype=np.int64)
        except KeyError as e:
            raise DataError(self.directory, f"unknown item id {e.args[0]!r} (not among the bundle's "
                                            f"{self.n_items} items)") from None

    def user_rows(self, user_ids: Iterable[str]) -> np.ndarray:
        if self.user_ids is None:
            raise DataError(self.directory, "the bundle has no user vectors (built from an item-only "
                                            "embedding file): query by item id or by vector")
        try:
            return np.fromiter((self._user_row[str(u)] for u in user_ids), dtype=np.int64)
        except KeyError as e:
            raise DataError(self.directory, f"unknown user id {e.args[0]!r} (not among the bundle's "
                                            f"{len(self.user_ids)} users)") from None

    def item_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of index rows (exact for Flat/HNSW-Flat/IVF-Flat, decoded for PQ)."""
        rows = np.asarray(rows, dtype=np.int64)
        try:
            return self.index.reconstruct_batch(rows)
        except RuntimeError:  # an IVF index without its direct map: build it once
            faiss.extract_index_ivf(self.index).make_direct_map()
            return self.index.reconstruct_batch(rows)

    def all_vectors(self) -> np.ndarray:
        """(n, D) stored vectors of every item (decoded for PQ without refinement)."""
        return self.item_vectors(np.arange(self.n_items, dtype=np.int64))

    def category_rows(self, category: str) -> np.ndarray:
        if self.categories is None:
            raise DataError(self.directory, "the bundle has no item categories: cannot filter by category")
        rows = np.flatnonzero(self.categories == str(category))
        if len(rows) == 0:
            raise DataError(self.directory, f"unknown category {category!r} (no item has it)")
        return rows

    # -- search
    def _prepare(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise DataError(self.directory, f"query vectors have shape {q.shape}, the index expects (batch, {self.dim})")
        if q.dtype.kind not in "fiu":
            raise DataError(self.directory, f"query vectors have dtype {q.dtype}, expected float32 numbers")
        if q.dtype != np.float32 or not q.flags.c_contiguous:
            q = np.ascontiguousarray(q, dtype=np.float32)
        finite = np.isfinite(q).all(axis=1)
        if not finite.all():  # faiss would return empty or arbitrary hits for NaN / inf
            r = int(np.flatnonzero(~finite)[0])
            raise DataError(self.directory, f"query vector row {r} has a non-finite value "
                                            f"({q[r][~np.isfinite(q[r])][0]}); expected finite numbers")
        return normalize_rows(q) if self.normalize else q

    def _check_k(self, k: Any) -> int:
        """``k`` as a positive int (numpy ints accepted; 2.7, True, 0, -3 refused)."""
        ok = isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))
        if not ok and isinstance(k, (float, np.floating)) and float(k).is_integer():
            ok = True  # 10.0 is 10
        shown = repr(k) if isinstance(k, str) else k
        if not ok:
            raise DataError(self.directory, f"k={shown}: must be a positive integer (k >= 1)")
        if int(k) < 1:
            raise DataError(self.directory, f"k={shown}: must be >= 1")
        return int(k)

    def search(self, queries: np.ndarray, k: int = 10) -> Hits:
        """The lean path: (B, D) vectors -> top-k; one faiss call into preallocated
        outputs (the C++ search directly, skipping the Python wrapper's re-checks),
        vectorised id mapping."""
        k = self._check_k(k)
        q = self._prepare(queries)
        n = q.shape[0]
        scores = np.empty((n, k), dtype=np.float32)
        rows = np.empty((n, k), dtype=np.int64)
        self.index.search_c(n, faiss.swig_ptr(q), k, faiss.swig_ptr(scores), faiss.swig_ptr(rows))
        return Hits(scores, rows, self._ids_ext[rows])

    def search_filtered(self, queries: np.ndarray, k: int = 10, *, exclude: tuple[np.ndarray, np.ndarray] | None = None,
                        category: str | None = None) -> Hits:
        """Top-k with filters. ``exclude`` = (indptr (B+1,), rows) CSR of index rows to
        drop per query (seen items, the query item itself); ``category`` keeps only items
        of that category (see :meth:`_category_search`: rare categories still fill k)."""
        k = self._check_k(k)
        q = self._prepare(queries)
        b = len(q)
        extra = 0
        if exclude is not None:
            indptr, ex_rows = exclude
            extra = int(np.diff(indptr).max()) if b else 0
        if category is None:
            kk = min(k + extra, self.n_items)
            scores, rows = self.index.search(q, kk)
        else:
            scores, rows = self._category_search(q, k + extra, category)
        if exclude is not None and extra:
            qid = np.repeat(np.arange(b, dtype=np.int64), np.diff(indptr))
            drop = np.isin(np.arange(b, dtype=np.int64)[:, None] * (self.n_items + 1) + rows,
                           qid * (self.n_items + 1) + ex_rows)
            drop |= rows < 0
            order = np.argsort(drop, axis=1, kind="stable")  # kept first, rank order preserved
            scores = np.take_along_axis(scores, order, axis=1)
            rows = np.where(np.take_along_axis(drop, order, axis=1), -1, np.take_along_axis(rows, order, axis=1))
            scores = np.where(rows < 0, np.float32(np.nan), scores)
        if rows.shape[1] < k:  # fewer allowed items than k: pad
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=np.nan)
        rows, scores = rows[:, :k], scores[:, :k]
        return Hits(scores, rows, self._ids_ext[rows])

    def _category_subset(self, category: str) -> tuple[faiss.IndexFlat, np.ndarray]:
        """An exact index over one category's stored vectors (cached) and its rows."""
        key = str(category)
        if key not in self._subsets:
            rows = self.category_rows(key)
            flat = faiss.IndexFlat(self.dim, self.index.metric_type)
            flat.add(self.item_vectors(rows))
            self._subsets[key] = (flat, rows)
        return self._subsets[key]

    def _category_search(self, q: np.ndarray, kk: int, category: str) -> tuple[np.ndarray, np.ndarray]:
        """Top-kk within a category. Small categories (<= ``exact_subset_max`` items) are
        searched exactly over their own vectors; larger ones through the index with a
        faiss IDSelector, and any query the index leaves short of kk results (graph
        and IVF searches can run out of allowed neighbours) is redone exactly."""
        cat_rows = self.category_rows(category)
        kk = min(kk, len(cat_rows))
        if len(cat_rows) <= self.exact_subset_max:
            flat, cat_rows = self._category_subset(category)
            scores, sub = flat.search(q, kk)
            return scores, np.where(sub >= 0, cat_rows[np.maximum(sub, 0)], -1)
        sel = faiss.IDSelectorBatch(cat_rows)
        scores, rows = self.index.search(q, kk, params=_filtered_params(self.index, sel))
        short = np.flatnonzero((rows >= 0).sum(1) < kk)
        if len(short):
            flat, cat_rows = self._category_subset(category)
            s2, sub = flat.search(q[short], kk)
            scores[short], rows[short] = s2, np.where(sub >= 0, cat_rows[np.maximum(sub, 0)], -1)
        return scores, rows

    def _seen_csr(self, user_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.seen_indptr is None:
            raise DataError(self.directory, "the bundle has no seen items (no seen.parquet at build time): "
                                            "cannot exclude seen")
        starts, ends = self.seen_indptr[user_rows], self.seen_indptr[user_rows + 1]
        lens = ends - starts
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        idx = np.repeat(starts - indptr[:-1], lens) + np.arange(indptr[-1])
        return indptr, self.seen_items[idx]

    def search_users(self, user_ids: Iterable[str], k: int = 10, *, exclude_seen: bool = False,
                     category: str | None = None) -> Hits:
        """Top-k items for users, from their precomputed user-tower vectors."""
        urows = self.user_rows(user_ids)
        q = self.user_vectors[urows]
        if not exclude_seen and category is None:
            return self.search(q, k)
        return self.search_filtered(q, k, exclude=self._seen_csr(urows) if exclude_seen else None, category=category)

    def similar_items(self, item_ids: Iterable[str], k: int = 10, *, category: str | None = None) -> Hits:
        """Top-k most similar items to each item (the item itself excluded)."""
        irows = self.item_rows(item_ids)
        q = self.item_vectors(irows)
        exclude = (np.arange(len(irows) + 1, dtype=np.int64), irows)
        return self.search_filtered(q, k, exclude=exclude, category=category)

