"""Queries of an index bundle as ``recsys index query`` runs them: by user ids
(given, or read from a Parquet file) or by item ids; the top-k written to a
Parquet file, one row per hit. What is printed: :mod:`recsys.retrieval.report`."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.retrieval.bundle import Hits, IndexBundle
from recsys.utils.errors import DataError, RecsysError
from recsys.utils.io import atomic_path


def query_bundle(bundle: IndexBundle, k: int, users: list[str] | None = None, items: list[str] | None = None,
                 users_file: str | Path | None = None, exclude_seen: bool = False,
                 category: str | None = None) -> tuple[str, list[str], Hits, float]:
    """``(key name, query keys, hits, search seconds)`` for exactly one of ``users`` (top-k items from
    their user vectors, optionally without the items they have seen), ``items`` (most
    similar items, the item itself excluded) or ``users_file`` (a Parquet file with
    a ``user_id`` column); ``category`` keeps only items of that category."""
    given = [n for n, v in (("user", users), ("item", items), ("users_file", users_file)) if v]
    if len(given) != 1:
        raise RecsysError(f"give exactly one of user=<id>, item=<id>, users_file=<parquet> (got {given or 'none'})")
    if items:
        if exclude_seen:
            raise RecsysError("exclude_seen applies to queries by user, not by item")
        t0 = time.perf_counter()
        hits = bundle.similar_items(items, k, category=category)
        return "item_id", items, hits, time.perf_counter() - t0
    keys = read_user_ids(Path(users_file)) if users_file else list(users or [])
    t0 = time.perf_counter()
    hits = bundle.search_users(keys, k, exclude_seen=exclude_seen, category=category)
    return "user_id", keys, hits, time.perf_counter() - t0


def read_user_ids(path: Path) -> list[str]:
    """The ``user_id`` column of a Parquet file, as strings (one-line error naming the file)."""
    if not path.is_file():
        raise DataError(path, "no such file")
    try:
        t = pq.read_table(path, columns=["user_id"])
    except (pa.ArrowInvalid, KeyError, OSError) as e:
        raise DataError(path, f"cannot read a 'user_id' column ({str(e).splitlines()[0]})", column="user_id") from None
    return [str(u) for u in t.column("user_id").to_pylist()]


def write_hits(path: Path, key_name: str, keys: list[str], hits: Hits) -> None:
    """One row per hit: the query key (``key_name``), its rank (1-based), ``rec_item_id``
    and ``score`` (float32); written atomically."""
    b, k = hits.rows.shape  # queries, k
    keep = (hits.rows >= 0).reshape(-1)
    table = pa.table({
        key_name: pa.array(np.repeat(np.asarray(keys, dtype=str), k)[keep], pa.string()),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), b)[keep]),
        "item": pa.array(hits.ids.reshape(-1)[keep], pa.string()),
        "score": pa.array(hits.scores.reshape(-1)[keep].astype(np.float32)),
    }).rename_columns([key_name, "rank", "rec_item_id", "score"])
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
