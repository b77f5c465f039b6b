"""Erasure from the decision service's logs, A/B archives and the identity link
file: each staged as a new version in a :class:`Transaction`.

* A decision-log folder (``recsys.service.decision_log``: ``decisions-*.parquet``
  and ``feedback-*.parquet`` parts, and any joined log beside them): every
  Parquet file with a user / device / session column loses the user's rows; the
  ``request_id`` / ``decision_id`` of those rows are then removed from every file
  that names decisions (feedback rows carry no user id: they are the user's
  through their decision). Opted-out users were logged as ``anon:<decision id>``
  and cannot be linked (nothing to erase).
* An A/B archive (``recsys.experiments.archive``, JSON only): verified against its
  manifest first (a modified archive is refused, never re-sealed); records (list
  elements) holding one of the user's ids and keys equal to one are dropped, and
  the manifest's checksums are rewritten. Aggregates (means, counts) computed
  with the user stay as they are: they hold no row of the user.
* The identity link file: rows naming one of the user's ids are dropped.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.features.erasure.targets import Trace
from recsys.features.erasure.transaction import Transaction
from recsys.utils.errors import DataError
from recsys.utils.io import json_text, sha256_file

AB_ARCHIVE_FORMAT = "recsys.ab_archive/1"  # recsys.experiments.archive.FORMAT (a layer above features)
DECISION_ID_COLUMNS = ("request_id", "decision_id")


def _visible_parquet(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*.parquet") if not any(part.startswith(".") for part in p.relative_to(d).parts))


def stage_decision_log(d: Path, trace: Trace, tx: Transaction) -> dict[str, Any] | None:
    """The log folder's part files without the user's decisions and their feedback."""
    tables: dict[Path, pa.Table] = {}
    decisions: set[str] = set()
    removed: dict[str, int] = {}
    files = _visible_parquet(d)
    for f in files:  # rows with one of the user's ids
        try:
            t = pq.read_table(f)
        except Exception as e:  # noqa: BLE001 - one line naming the file
            raise DataError(f, f"unreadable Parquet part in a decision log ({type(e).__name__}); nothing erased") \
                from None
        drop = None
        for c in t.column_names:
            ids = trace.ids_for(c)
            if ids:
                hit = pc.fill_null(pc.is_in(t.column(c).cast(pa.string()), value_set=pa.array(sorted(ids), pa.string())),
                                   False)
                drop = hit if drop is None else pc.or_(drop, hit)
        if drop is not None and pc.any(drop).as_py():
            for c in DECISION_ID_COLUMNS:
                if c in t.column_names:
                    decisions |= {v for v in t.filter(drop).column(c).to_pylist() if v is not None}
            tables[f] = t.filter(pc.invert(drop))
            removed[f.name] = t.num_rows - tables[f].num_rows
    if decisions:  # rows of the user's decisions: feedback, joined rows
        keyset = pa.array(sorted(decisions), pa.string())
        for f in files:
            t = tables.get(f)
            if t is None:
                t = pq.read_table(f)
            cols = [c for c in DECISION_ID_COLUMNS if c in t.column_names]
            if not cols:
                continue
            drop = None
            for c in cols:
                hit = pc.fill_null(pc.is_in(t.column(c).cast(pa.string()), value_set=keyset), False)
                drop = hit if drop is None else pc.or_(drop, hit)
            if pc.any(drop).as_py():
                kept = t.filter(pc.invert(drop))
                removed[f.name] = removed.get(f.name, 0) + t.num_rows - kept.num_rows
                tables[f] = kept
    if not tables:
        return None
    for f, t in tables.items():
        pq.write_table(t, tx.new_file(f))
    return {"files_rewritten": len(tables), "rows_removed": sum(removed.values()), "decisions_removed": len(decisions)}


def archive_dirs(root: Path) -> list[Path]:
    """A/B archive folders: ``root`` itself or the archives under it."""
    cands = [root] if (root / "manifest.json").is_file() else sorted(p for p in root.iterdir() if p.is_dir()
                                                                      and not p.name.startswith("."))
    out = []
    for d in cands:
        try:
            if json.loads((d / "manifest.json").read_text()).get("format") == AB_ARCHIVE_FORMAT:
                out.append(d)
        except (OSError, ValueError, AttributeError):
            continue
    return out


def scrub(obj: Any, ids: set[str]) -> Any:
    """``obj`` without the user: list elements that are (or directly hold) one of
    ``ids`` are dropped, so are dict entries keyed by one; other values are kept."""
    def holds(v: Any) -> bool:
        if isinstance(v, str):
            return v in ids
        if isinstance(v, dict):
            return any(isinstance(x, str) and x in ids for x in v.values()) or any(k in ids for k in v)
        if isinstance(v, list):
            return any(isinstance(x, str) and x in ids for x in v)
        return False

    if isinstance(obj, dict):
        return {k: scrub(v, ids) for k, v in obj.items() if k not in ids and not (isinstance(v, str) and v in ids)}
    if isinstance(obj, list):
        return [scrub(v, ids) for v in obj if not holds(v)]
    return obj


def stage_ab_archive(d: Path, trace: Trace, tx: Transaction) -> dict[str, Any] | None:
    """An archive without the user's records, its checksums rewritten (verified first)."""
    mpath = d / "manifest.json"
    manifest = json.loads(mpath.read_text())
    files = manifest.get("files") or {}
    ids = trace.all_ids()
    new_text: dict[str, str] = {}
    for name, sha in sorted(files.items()):
        f = d / name
        if not f.is_file():
            raise DataError(f, "missing from the A/B archive its manifest describes; nothing erased")
        if sha256_file(f) != sha:
            raise DataError(f, "sha256 does not match the archive's manifest.json (modified after archiving?): "
                               "refused, never re-sealed; nothing erased")
        obj = json.loads(f.read_text())
        clean = scrub(obj, ids)
        if clean != obj:
            new_text[name] = json_text(clean)
    if not new_text:
        return None
    new = tx.new_dir(d)
    for child in d.iterdir():
        if child.name not in new_text and child.name != "manifest.json":
            (shutil.copytree if child.is_dir() else shutil.copy2)(child, new / child.name)
    for name, text in new_text.items():
        (new / name).write_text(text)
    m = dict(manifest)
    m["files"] = {name: sha256_file(new / name) for name in files}
    m["erasures"] = int(m.get("erasures", 0)) + 1
    (new / "manifest.json").write_text(json_text(m))
    return {"files_rewritten": sorted(new_text)}


def stage_identity(path: Path, rows: Any, tx: Transaction) -> int:
    """The identity link file without the rows naming the user's ids (same format)."""
    import numpy as np

    keep = ~np.asarray(rows, dtype=bool)
    if keep.all():
        return 0
    csv = path.suffix.lower() == ".csv"
    raw = pl.read_csv(path, infer_schema=False) if csv else pl.read_parquet(path)  # every column kept
    kept = raw.filter(pl.Series(keep))
    new = tx.new_file(path)
    if csv:
        kept.write_csv(new)
    else:
        kept.write_parquet(new)
    return int((~keep).sum())
