"""Write a two-tower run's retrieval embeddings (the contract ``recsys index build`` reads)::

    <run>/embeddings/
      items.parquet   item_idx int64 (1..n), item_id string, embedding fixed_size_list<float32>[D],
                      category string (optional)
      users.parquet   user_idx int64, user_id string, embedding fixed_size_list<float32>[D]
      seen.parquet    user_id, item_id of the training interactions
      meta.json       {"metric": "ip" | "cos", "dim": D, "model": "TwoTower", "data_fingerprint", "run"}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.utils.errors import DataError
from recsys.utils.io import atomic_dir, write_json_atomic


def _embedding_array(x: np.ndarray) -> pa.FixedSizeListArray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _write(table: pa.Table, path: Path) -> None:
    pq.write_table(table, str(path))


def write_embeddings(directory: str | Path, *, item_ids: Sequence[str], item_vectors: np.ndarray,
                     user_ids: Sequence[str], user_vectors: np.ndarray, seen_user_ids: Sequence[str],
                     seen_item_ids: Sequence[str], metric: str, data_fingerprint: str, run: str,
                     item_categories: Sequence[str | None] | None = None, model: str = "TwoTower") -> dict[str, Any]:
    """Vectors of items ``1..n`` and users ``1..m`` (row ``r`` = index ``r + 1``)."""
    if metric not in ("ip", "cos"):
        raise DataError(None, f"metric must be 'ip' or 'cos', got {metric!r}")
    if item_vectors.ndim != 2 or user_vectors.ndim != 2 or item_vectors.shape[1] != user_vectors.shape[1]:
        raise DataError(None, f"item/user embeddings must be 2-D with the same width, got "
                              f"{item_vectors.shape} and {user_vectors.shape}")
    if len(item_ids) != len(item_vectors) or len(user_ids) != len(user_vectors):
        raise DataError(None, "one id per embedding row is required")
    if not (np.isfinite(item_vectors).all() and np.isfinite(user_vectors).all()):
        raise DataError(None, "embeddings contain NaN or inf")
    with atomic_dir(directory) as d:  # the whole folder appears at once (or not at all)
        meta = _write_all(d, item_ids, item_vectors, user_ids, user_vectors, seen_user_ids, seen_item_ids, metric,
                          data_fingerprint, run, item_categories, model)
    return {"directory": str(directory), **meta}


def _write_all(d: Path, item_ids, item_vectors, user_ids, user_vectors, seen_user_ids, seen_item_ids, metric,
               data_fingerprint, run, item_categories, model) -> dict[str, Any]:
    dim = int(item_vectors.shape[1])
    items = {"item_idx": pa.array(np.arange(1, len(item_ids) + 1, dtype=np.int64)),
             "item_id": pa.array([str(i) for i in item_ids], pa.string()),
             "embedding": _embedding_array(item_vectors)}
    if item_categories is not None:
        items["category"] = pa.array(list(item_categories), pa.string())
    _write(pa.table(items), d / "items.parquet")
    _write(pa.table({"user_idx": pa.array(np.arange(1, len(user_ids) + 1, dtype=np.int64)),
                     "user_id": pa.array([str(u) for u in user_ids], pa.string()),
                     "embedding": _embedding_array(user_vectors)}), d / "users.parquet")
    _write(pa.table({"user_id": pa.array(list(seen_user_ids), pa.string()),
                     "item_id": pa.array(list(seen_item_ids), pa.string())}), d / "seen.parquet")
    meta = {"metric": metric, "dim": dim, "model": model, "data_fingerprint": data_fingerprint, "run": run,
            "n_items": len(item_ids), "n_users": len(user_ids)}
    write_json_atomic(d / "meta.json", meta)
    return meta
