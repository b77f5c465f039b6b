"""Erasure from training runs (``embeddings/`` folders), index bundles and the
prepared-data cache: each staged as a new version in a :class:`Transaction`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.artifacts.bundle import INDEX_FORMAT, MANIFEST_FILE, restage, verify_bundle
from recsys.artifacts.embeddings import verify_embedding_dir
from recsys.features.erasure.targets import Trace, scan
from recsys.features.erasure.transaction import Transaction, link_or_copy
from recsys.utils.io import json_text


def embedding_dirs(run: Path) -> list[Path]:
    out = []
    for users in sorted(run.rglob("users.parquet")):
        d = users.parent
        try:
            names = pq.read_schema(users).names
        except Exception:  # noqa: BLE001 - reported by the scan as unreadable
            continue
        if "embedding" in names and "user_id" in names:
            out.append(d)
    return out


def bundle_dirs(root: Path) -> list[Path]:
    out = []
    cands = [root / MANIFEST_FILE] if (root / MANIFEST_FILE).is_file() else []
    cands += sorted(root.rglob(MANIFEST_FILE)) if root.is_dir() else []
    for m in dict.fromkeys(cands):
        try:
            if json.loads(m.read_text()).get("format") == INDEX_FORMAT:
                out.append(m.parent)
        except (OSError, ValueError, AttributeError):
            continue
    return out


def stage_embeddings(d: Path, trace: Trace, tx: Transaction) -> dict[str, int] | None:
    """``users.parquet`` / ``seen.parquet`` of an embeddings folder without the user's rows
    (a sealed folder is verified first and resealed)."""
    sealed = verify_embedding_dir(d) if (d / MANIFEST_FILE).is_file() else None
    ids = pa.array(sorted(trace.user_ids), pa.string())
    tables, removed = {}, {}
    for name in ("users.parquet", "seen.parquet"):
        p = d / name
        if not p.is_file():
            continue
        t = pq.read_table(p)
        if "user_id" not in t.column_names:
            continue
        keep = pc.invert(pc.is_in(t.column("user_id").cast(pa.string()), value_set=ids))
        kept = t.filter(keep)
        if kept.num_rows < t.num_rows:
            tables[name], removed[name] = kept, t.num_rows - kept.num_rows
    if not tables:
        return None
    new = tx.new_dir(d)
    replace: dict[str, Any] = {name: (lambda t: lambda path: pq.write_table(t, path))(t) for name, t in tables.items()}
    if (d / "meta.json").is_file():
        meta = json.loads((d / "meta.json").read_text())
        if "n_users" in meta and "users.parquet" in tables:
            meta["n_users"] = tables["users.parquet"].num_rows
        replace["meta.json"] = lambda path: path.write_text(json_text(meta))
    if sealed is not None:  # a sealed folder (recsys.embeddings/1): a resealed copy
        restage(d, new, sealed, replace)
        return removed
    for child in d.iterdir():
        if child.name not in replace:
            link_or_copy(child, new / child.name)
    for name, write in replace.items():
        write(new / name)
    return removed


def verify_index_bundle(d: Path) -> dict[str, Any]:
    """The verified manifest of an index bundle (refused, never re-sealed, when modified)."""
    return verify_bundle(d, format=INDEX_FORMAT, kind="index")


def rewrite_index_bundle(src: Path, dst: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray],
                         patch: dict[str, Any]) -> dict[str, Any]:
    """A resealed copy of bundle ``src`` in ``dst`` with ``arrays`` replaced (``.npy``, no pickle)."""
    def writer(a: np.ndarray) -> Any:
        def write(path: Path) -> None:
            with open(path, "wb") as fh:
                np.save(fh, a, allow_pickle=False)
        return write

    return restage(src, dst, manifest, {name: writer(a) for name, a in arrays.items()}, patch)


def stage_index_bundle(d: Path, trace: Trace, tx: Transaction) -> dict[str, int] | None:
    """An index bundle without the user's rows (user ids, vectors, seen items)."""
    m = verify_index_bundle(d)
    if "user_ids.npy" not in m["files"]:
        return None
    uids = np.load(d / "user_ids.npy", allow_pickle=False)
    keep = ~np.isin(uids.astype(str), sorted(trace.user_ids))
    if keep.all():
        return None
    arrays = {"user_ids.npy": uids[keep]}
    if "user_vectors.npy" in m["files"]:
        arrays["user_vectors.npy"] = np.ascontiguousarray(np.load(d / "user_vectors.npy", allow_pickle=False)[keep])
    removed = {"users": int((~keep).sum())}
    if "seen_indptr.npy" in m["files"]:
        indptr = np.load(d / "seen_indptr.npy", allow_pickle=False)
        items = np.load(d / "seen_items.npy", allow_pickle=False)
        lens = np.diff(indptr)
        arrays["seen_items.npy"] = items[np.repeat(keep, lens)]
        arrays["seen_indptr.npy"] = np.concatenate([[0], np.cumsum(lens[keep])]).astype(indptr.dtype)
        removed["seen_items"] = int(lens[~keep].sum())
    new = tx.new_dir(d)
    rewrite_index_bundle(d, new, m, arrays, {"erasures": int(m.get("erasures", 0)) + 1,
                                             "n_users": int(keep.sum())})
    return removed


def stage_cache(cache_dir: Path, trace: Trace, tx: Transaction) -> list[str]:
    """Delete every cached dataset folder holding the user (it is rebuilt on next use)."""
    deleted = []
    for child in sorted(cache_dir.iterdir()):
        if child.is_dir() and scan([child], trace):
            tx.delete(child)
            deleted.append(child.name)
    return deleted


def _json_field(path: Path, *keys: str) -> Any:
    try:
        v: Any = json.loads(path.read_text())
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return v
    except (OSError, ValueError):
        return None


def cache_fingerprints(cache_dir: Path, trace: Trace) -> list[str]:
    """Data fingerprints (``meta.json``) of the cached datasets holding the user: a
    model whose lineage names one was trained on the user's data."""
    out = []
    for child in sorted(cache_dir.iterdir()):
        if child.is_dir() and scan([child], trace):
            fp = _json_field(child / "meta.json", "fingerprint")
            if isinstance(fp, str):
                out.append(fp)
    return out


def run_fingerprints(runs: list[Path], trace: Trace) -> list[str]:
    """Data fingerprints (``summary.json``) of the runs holding the user."""
    out = []
    for run in runs:
        fp = _json_field(run / "summary.json", "data", "fingerprint")
        if isinstance(fp, str) and scan([run], trace):
            out.append(fp)
    return out
