"""Item / user embedding files: the contract between a trained model and the index.

A run directory that supports retrieval holds::

    <run>/embeddings/
      items.parquet   item_idx int64 (1..n, 0 = padding, absent), item_id string,
                      embedding fixed_size_list<float32>[D], category string (optional)
      users.parquet   user_idx int64, user_id string, embedding fixed_size_list<float32>[D]
                      (the user tower's output on the user's training history,
                      precomputed at train time: "query by user id" looks it up here)
      seen.parquet    user_id, item_id (optional; what ``exclude_seen`` removes)
      meta.json       {"metric": "ip"|"l2"|"cos", "dim": D, "model": ..., "data_fingerprint": ...}

      manifest.json + manifest.sha256   (format recsys.embeddings/1: every file's sha256)

This module is the one reader/writer of that folder: training runs (sequence models,
two-tower) write it with :func:`write_embedding_dir` / :func:`write_run_embeddings`
(atomic: the whole folder appears at once or not at all, sealed as a bundle);
``recsys index build`` reads it with :func:`read_item_embeddings` /
:func:`read_user_embeddings` / :func:`read_seen`, which accept a run directory, the
``embeddings/`` folder or a Parquet file. A folder is verified (manifest checksum,
every file's sha256) before anything in it is read; a folder without a manifest is
refused (give its Parquet file directly to use it as plain user input). Bad input
raises :class:`~recsys.utils.errors.DataError` naming the file and column.

Example::

    write_embedding_dir(run_dir, {"item_id": ids, "embedding": V, "category": cats},
                        users={"user_id": uids, "embedding": U},
                        meta={"metric": "ip", "model": "two_tower", "data_fingerprint": fp})
    items = read_item_embeddings(run_dir)          # ItemEmbeddings: ids (n,), vectors (n, D)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.artifacts.bundle import seal, verify_bundle
from recsys.utils.errors import DataError
from recsys.utils.io import atomic_dir, json_text

METRICS = ("ip", "l2", "cos")
EMBEDDINGS_DIR = "embeddings"
EMBEDDINGS_FORMAT = "recsys.embeddings/1"


@dataclass
class Embeddings:
    """Rows of one embedding file: raw ids (n,) str, vectors (n, D) float32."""

    ids: np.ndarray
    vectors: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    categories: np.ndarray | None = None  # (n,) str, items only

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)


# ----------------------------------------------------------------------------- writing

def _embedding_array(vectors: Any, where: str) -> pa.FixedSizeListArray:
    v = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if v.ndim != 2 or v.shape[1] == 0:
        raise DataError(where, f"embedding must be a 2-D (n, D) array, got shape {v.shape}", column="embedding")
    if not np.isfinite(v).all():
        row = int(np.argmin(np.isfinite(v).all(axis=1)))
        raise DataError(where, f"NaN or infinite value in row {row}", column="embedding")
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])


def _table(rows: Mapping[str, Any] | pa.Table, kind: str, where: str) -> pa.Table:
    if isinstance(rows, pa.Table):
        rows = {c: rows.column(c) for c in rows.column_names}
    id_col, idx_col = f"{kind}_id", f"{kind}_idx"
    for c in (id_col, "embedding"):
        if c not in rows:
            raise DataError(where, f"missing column (have {sorted(rows)})", column=c)
    emb = rows["embedding"]
    if isinstance(emb, (pa.ChunkedArray, pa.Array)):
        emb = _vectors_from_arrow(emb, where)
    ids = pa.array(np.asarray(rows[id_col]).astype(str), pa.string()) if not isinstance(
        rows[id_col], (pa.Array, pa.ChunkedArray)) else pa.array(rows[id_col]).cast(pa.string())
    n = len(ids)
    idx = rows.get(idx_col)
    idx = np.arange(1, n + 1, dtype=np.int64) if idx is None else np.asarray(idx, dtype=np.int64)
    cols = {idx_col: pa.array(idx, pa.int64()), id_col: ids, "embedding": _embedding_array(emb, where)}
    if kind == "item" and rows.get("category") is not None:  # None stays null
        cols["category"] = pa.array([None if c is None else str(c) for c in list(rows["category"])], pa.string())
    lens = {k: len(v) for k, v in cols.items()}
    if len(set(lens.values())) != 1:
        raise DataError(where, f"columns have different lengths: {lens}")
    return pa.table(cols)


def write_embedding_dir(out_dir: str | Path, items: Mapping[str, Any] | pa.Table, *,
                        meta: Mapping[str, Any], users: Mapping[str, Any] | pa.Table | None = None,
                        seen: Mapping[str, Any] | pa.Table | None = None, folder: bool = False) -> Path:
    """Write ``<out_dir>/embeddings/`` (``folder=True``: ``out_dir`` itself) atomically
    and sealed; returns that folder.

    Args:
        out_dir: the run directory (or the embeddings folder itself with ``folder=True``).
        items: ``item_id`` (n,), ``embedding`` (n, D) float32, optional ``item_idx``
            (default 1..n) and ``category`` (n,) str; a dict of arrays or a pyarrow Table.
        meta: must hold ``metric`` (ip | l2 | cos); ``dim`` is filled in; ``model`` and
            ``data_fingerprint`` are recorded in every index built from it.
        users: ``user_id`` (m,), ``embedding`` (m, D), optional ``user_idx``.
        seen: ``user_id``, ``item_id`` pairs (training interactions) for exclude-seen.
    """
    out = Path(out_dir) if folder else Path(out_dir) / EMBEDDINGS_DIR
    metric = meta.get("metric")
    if metric not in METRICS:
        raise DataError(out / "meta.json", f"metric {metric!r}, expected one of {METRICS}")
    item_t = _table(items, "item", str(out / "items.parquet"))
    dim = item_t.schema.field("embedding").type.list_size
    tables = {"items.parquet": item_t}
    if users is not None:
        user_t = _table(users, "user", str(out / "users.parquet"))
        if user_t.schema.field("embedding").type.list_size != dim:
            raise DataError(out / "users.parquet", f"user embeddings have dimension "
                            f"{user_t.schema.field('embedding').type.list_size}, items have {dim}", column="embedding")
        tables["users.parquet"] = user_t
    if seen is not None:
        get = (lambda c: seen.column(c)) if isinstance(seen, pa.Table) else (lambda c: seen[c])
        tables["seen.parquet"] = pa.table({c: pa.array(np.asarray(get(c)).astype(str), pa.string())
                                           for c in ("user_id", "item_id")})
    with atomic_dir(out) as tmp:
        for name, t in tables.items():
            pq.write_table(t, tmp / name)
        (tmp / "meta.json").write_text(json_text({**meta, "dim": int(dim)}))
        seal(tmp, {"format": EMBEDDINGS_FORMAT, "kind": "embeddings"})
    return out


def write_run_embeddings(directory: str | Path, *, item_ids: Sequence[str], item_vectors: np.ndarray,
                         user_ids: Sequence[str], user_vectors: np.ndarray, seen_user_ids: Sequence[str],
                         seen_item_ids: Sequence[str], metric: str, data_fingerprint: str, run: str,
                         item_categories: Sequence[str | None] | None = None, model: str = "TwoTower") -> dict[str, Any]:
    """A training run's ``embeddings/`` folder (``directory``): vectors of items ``1..n``
    and users ``1..m`` (row ``r`` = index ``r + 1``), the seen pairs, and the meta."""
    if metric not in ("ip", "cos"):
        raise DataError(None, f"metric must be 'ip' or 'cos', got {metric!r}")
    if item_vectors.ndim != 2 or user_vectors.ndim != 2 or item_vectors.shape[1] != user_vectors.shape[1]:
        raise DataError(None, f"item/user embeddings must be 2-D with the same width, got "
                              f"{item_vectors.shape} and {user_vectors.shape}")
    if len(item_ids) != len(item_vectors) or len(user_ids) != len(user_vectors):
        raise DataError(None, "one id per embedding row is required")
    meta = {"metric": metric, "model": model, "data_fingerprint": data_fingerprint, "run": run,
            "n_items": len(item_ids), "n_users": len(user_ids)}
    items: dict[str, Any] = {"item_id": [str(i) for i in item_ids], "embedding": item_vectors}
    if item_categories is not None:
        items["category"] = list(item_categories)
    write_embedding_dir(directory, items, meta=meta, folder=True,
                        users={"user_id": [str(u) for u in user_ids], "embedding": user_vectors},
                        seen={"user_id": list(seen_user_ids), "item_id": list(seen_item_ids)})
    return {"directory": str(directory), **meta, "dim": int(item_vectors.shape[1])}


# ----------------------------------------------------------------------------- reading

def _vectors_from_arrow(col: pa.ChunkedArray | pa.Array, where: str) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    t = col.type
    if col.null_count:
        raise DataError(where, f"{col.null_count} null embeddings", column="embedding")
    if pa.types.is_fixed_size_list(t):
        d = t.list_size
        flat = col.flatten()
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        lens = np.asarray(col.value_lengths())
        if len(lens) and (lens != lens[0]).any():
            row = int(np.argmax(lens != lens[0]))
            raise DataError(where, f"row {row} has {lens[row]} values, row 0 has {lens[0]} "
                            "(embeddings must have one fixed dimension)", column="embedding")
        d = int(lens[0]) if len(lens) else 0
        flat = col.flatten()
    else:
        raise DataError(where, f"type {t}, expected fixed_size_list<float32>[D]", column="embedding")
    if not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type)):
        raise DataError(where, f"values of type {flat.type}, expected float32", column="embedding")
    if flat.null_count:
        raise DataError(where, "null values inside embeddings", column="embedding")
    v = flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(col), d)
    if not np.isfinite(v).all():
        row = int(np.argmin(np.isfinite(v).all(axis=1)))
        raise DataError(where, f"NaN or infinite value in row {row}", column="embedding")
    return v


def verify_embedding_dir(folder: str | Path) -> dict[str, Any]:
    """The verified manifest of an ``embeddings/`` folder (refused without one)."""
    d = Path(folder)
    if not (d / "manifest.json").is_file():
        raise DataError(d, "embeddings folder without manifest.json (not written by this version of recsys, or "
                           "tampered with); re-train, or pass one of its Parquet files directly")
    return verify_bundle(d, format=EMBEDDINGS_FORMAT, kind="embeddings")


def _locate(path: str | Path, name: str) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    for folder in (p / EMBEDDINGS_DIR, p):
        if (folder / name).is_file():
            verify_embedding_dir(folder)  # before anything in it is read
            return folder / name
    if not p.exists():
        raise DataError(p, "no such file or directory")
    raise DataError(p, f"no {name} (expected a run directory with {EMBEDDINGS_DIR}/{name}, "
                       f"an {EMBEDDINGS_DIR}/ folder or a Parquet file)")


def read_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` beside an embedding file ({} when absent)."""
    p = Path(path)
    folder = p.parent if p.is_file() else (p / EMBEDDINGS_DIR if (p / EMBEDDINGS_DIR).is_dir() else p)
    f = folder / "meta.json"
    if not f.is_file():
        return {}
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f, f"not valid JSON ({e.msg})", line=e.lineno) from None
    if meta.get("metric") is not None and meta["metric"] not in METRICS:
        raise DataError(f, f"metric {meta['metric']!r}, expected one of {METRICS}")
    return meta


def _read(path: str | Path, kind: str) -> Embeddings:
    f = _locate(path, f"{kind}s.parquet")
    try:
        t = pq.read_table(f)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None
    id_col = f"{kind}_id"
    for c in (id_col, "embedding"):
        if c not in t.column_names:
            raise DataError(f, f"missing column (have {t.column_names})", column=c)
    if t.column(id_col).null_count:
        raise DataError(f, "null ids", column=id_col)
    ids = np.asarray(t.column(id_col).cast(pa.string()).to_numpy(zero_copy_only=False)).astype(str)
    if len(ids) == 0:
        raise DataError(f, "no rows")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f, f"duplicate id {str(uniq[counts > 1][0])!r}", column=id_col)
    vectors = _vectors_from_arrow(t.column("embedding"), str(f))
    meta = read_meta(f)
    if meta.get("dim") is not None and int(meta["dim"]) != vectors.shape[1]:
        raise DataError(f, f"embeddings have dimension {vectors.shape[1]}, meta.json says {meta['dim']}",
                        column="embedding")
    cats = None
    if kind == "item" and "category" in t.column_names:
        c = t.column("category").cast(pa.string())
        cats = np.asarray(c.fill_null("").to_numpy(zero_copy_only=False)).astype(str)
    return Embeddings(ids=ids, vectors=vectors, meta=meta, path=f, categories=cats)


def read_item_embeddings(path: str | Path) -> Embeddings:
    """Items of a run directory, an ``embeddings/`` folder or an item-embedding Parquet file."""
    return _read(path, "item")


def read_user_embeddings(path: str | Path) -> Embeddings:
    """Users of a run directory, an ``embeddings/`` folder or a user-embedding Parquet file."""
    return _read(path, "user")


def read_seen(path: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(user_id, item_id) string arrays from ``seen.parquet`` beside the embeddings, or None."""
    p = Path(path)
    folder = p.parent if p.is_file() else (p / EMBEDDINGS_DIR if (p / EMBEDDINGS_DIR).is_dir() else p)
    f = folder / "seen.parquet"
    if not f.is_file():
        return None
    if not p.is_file():
        verify_embedding_dir(folder)
    t = pq.read_table(f)
    for c in ("user_id", "item_id"):
        if c not in t.column_names:
            raise DataError(f, f"missing column (have {t.column_names})", column=c)
    users, items = (np.asarray(t.column(c).cast(pa.string()).to_numpy(zero_copy_only=False)).astype(str)
                    for c in ("user_id", "item_id"))
    return users, items
