"""Erasure of one user from every artifact this project writes, and the check
that nothing of the user is left (``recsys data erase``).

What belongs to the user: every event whose raw ``user_id`` is the user, and
every event that identity resolution (:mod:`recsys.features.identity`) attributes
to the user - the anonymous pre-login events, the events of the user's devices.
Ids *all* of whose events are the user's (the user id, its anonymous ids, its
devices) are the user's *trace*: none of them may survive anywhere. Ids shared
with other accounts (a shared device) stay with the other accounts' events.

Artifacts (:class:`Targets`), each erased when given:

* ``events`` - the Parquet event store: rewritten without the user's events.
* ``features_dir`` - a ``recsys features build`` output: rebuilt with the build's
  own settings, read from its ``manifest.json`` (as_of, TTL, identity resolution,
  items, fitted params - not refitted), from the original events resolved as the
  build resolved them minus the user's events. Every other user's row is then
  identical to the build's; this is checked before anything is written (a rebuild
  that would change another user's row is refused: the manifest does not say how
  the features were built).
* ``online_state`` - an online store snapshot (default: ``<features_dir>/online_state``):
  replayed from the same events with its own params.
* ``runs`` - training runs: ``embeddings/users.parquet`` and ``seen.parquet`` lose
  the user's rows; index bundles inside the run are rewritten; any other file
  holding the user, and model weights trained on the user's events, are reported
  as *not erased*.
* ``indexes`` - index bundles: ``user_ids.npy`` / ``user_vectors.npy`` / the seen
  CSR lose the user's rows; the bundle is verified first (a modified bundle is
  refused, never re-sealed) and its manifest checksums are rewritten.
* ``cache_dir`` - the prepared-data cache (:mod:`recsys.data.prepare`): every cached
  dataset folder that holds the user is deleted (it is rebuilt on next use).

Everything new is written beside its target first; then every target is swapped
in (the old versions kept aside), the result is scanned for the user's trace, and
only then are the old versions deleted. A failure at any step leaves every
artifact as it was.

The report never claims more than it checked: artifact types not given are
listed (``not_given``), so are files that hold the user but cannot be rewritten
(``not_erased``), and ``complete`` is true only when every artifact type was
given and nothing is left. Copies this command is not told about (other runs,
backups, logs) are outside what it can prove.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.artifacts.bundle import INDEX_FORMAT, MANIFEST_FILE, restage, verify_bundle
from recsys.artifacts.embeddings import verify_embedding_dir
from recsys.utils.io import json_text
from recsys.features import batch
from recsys.features.definitions import build_feature_set
from recsys.features.identity import identity_links, resolve_identities
from recsys.features.retention import apply_ttl
from recsys.features.store import read_parquet_frame
from recsys.utils.errors import DataError

ARTIFACT_TYPES = ("events", "features_dir", "online_state", "run", "index", "cache")
USER_COLUMNS = ("user_id", "raw_user_id")
DEVICE_COLUMNS = ("device_id",)
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".onnx")
_USER_ENTITIES = ("user", "user_item", "user_category")


@dataclass
class Targets:
    """The artifacts to erase from (or to check)."""

    events: Path
    features_dir: Path | None = None
    online_state: Path | None = None
    runs: list[Path] = field(default_factory=list)
    indexes: list[Path] = field(default_factory=list)
    cache_dir: Path | None = None
    items: str | None = None  # item categories, when the build's manifest does not name them

    def __post_init__(self) -> None:
        self.events = Path(self.events)
        self.features_dir = Path(self.features_dir) if self.features_dir else None
        self.online_state = Path(self.online_state) if self.online_state else None
        if self.online_state is None and self.features_dir is not None \
                and (self.features_dir / "online_state" / "meta.json").is_file():
            self.online_state = self.features_dir / "online_state"  # the build's own state
        self.runs = [Path(p) for p in self.runs]
        self.indexes = [Path(p) for p in self.indexes]
        self.cache_dir = Path(self.cache_dir) if self.cache_dir else None

    def given(self) -> dict[str, list[Path]]:
        """Artifact type -> the paths given (types not given are absent)."""
        out = {"events": [self.events], "features_dir": [self.features_dir] if self.features_dir else [],
               "online_state": [self.online_state] if self.online_state else [], "run": self.runs,
               "index": self.indexes, "cache": [self.cache_dir] if self.cache_dir else []}
        return {k: v for k, v in out.items() if v}

    def not_given(self) -> list[str]:
        g = self.given()
        return [t for t in ARTIFACT_TYPES if t not in g]

    def check_exist(self) -> None:
        if not self.events.is_file():
            raise DataError(self.events, "no such file")
        for kind, paths in self.given().items():
            for p in paths:
                if kind != "events" and not p.is_dir():
                    raise DataError(p, f"no such directory (given as {kind})")


@dataclass
class Trace:
    """The ids that identify the user: user ids and device ids."""

    user_ids: set[str]
    device_ids: set[str] = field(default_factory=set)

    def ids_for(self, column: str) -> set[str]:
        if column in USER_COLUMNS:
            return self.user_ids
        if column in DEVICE_COLUMNS:
            return self.device_ids
        return set()


# ---------------------------------------------------------------- scanning


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file())


def _skipped(p: Path, skip: set[Path]) -> bool:
    return p in skip or any(a in skip for a in p.parents)


def scan(roots: Iterable[Path], trace: Trace, skip: Iterable[Path] = ()) -> list[dict[str, Any]]:
    """Every place under ``roots`` that still holds the user: ``{"path", "column", "rows"}``
    for each Parquet column named ``user_id`` / ``raw_user_id`` / ``device_id`` and each
    ``*user*.npy`` string array holding one of the trace's ids. Hidden files are
    scanned too (a leftover temp file is a copy). A file that cannot be read is
    reported as a trace (``column: "<unreadable>"``): its absence cannot be proved."""
    skip = {Path(s) for s in skip}
    hits: list[dict[str, Any]] = []
    for root in roots:
        for f in _files(Path(root)):
            if _skipped(f, skip):
                continue
            if f.name.endswith(".parquet") or ".parquet." in f.name:
                hits += _scan_parquet(f, trace)
            elif f.suffix == ".npy" and "user" in f.stem:
                hits += _scan_npy(f, trace)
    return hits


def _scan_parquet(f: Path, trace: Trace) -> list[dict[str, Any]]:
    try:
        names = pq.read_schema(f).names
    except Exception:  # noqa: BLE001 - any unreadable file is reported, not skipped
        if f.name.endswith(".parquet"):
            return [{"path": str(f), "column": "<unreadable>", "rows": None}]
        return []  # a partial temp file of another name: not Parquet at all
    cols = [c for c in names if trace.ids_for(c)]
    if not cols:
        return []
    t = pq.read_table(f, columns=cols)
    out = []
    for c in cols:
        ids = pa.array(sorted(trace.ids_for(c)), pa.string())
        n = pc.sum(pc.is_in(t.column(c).cast(pa.string()), value_set=ids)).as_py() or 0
        if n:
            out.append({"path": str(f), "column": c, "rows": int(n)})
    return out


def _scan_npy(f: Path, trace: Trace) -> list[dict[str, Any]]:
    try:
        a = np.load(f, allow_pickle=False)
    except (ValueError, OSError):
        return [{"path": str(f), "column": "<unreadable>", "rows": None}]
    if a.dtype.kind not in "US":
        return []
    n = int(np.isin(a.astype(str), sorted(trace.user_ids)).sum())
    return [{"path": str(f), "column": "user_ids", "rows": n}] if n else []


# ---------------------------------------------------------------- staging (all-or-nothing)


class Transaction:
    """New versions staged beside their targets; :meth:`commit` swaps them all in
    (old versions kept aside until :meth:`finish`), :meth:`rollback` restores."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(4)
        self.ops: list[tuple[Path, Path | None]] = []  # (target, staged new version or None = delete)
        self.done: list[tuple[Path, Path | None, Path | None]] = []  # (target, new, backup)

    def _aside(self, target: Path, what: str) -> Path:
        return target.parent / f".{target.name}.erase-{what}-{self.token}"

    def new_file(self, target: Path) -> Path:
        p = self._aside(target, "new")
        self.ops.append((target, p))
        return p

    def new_dir(self, target: Path) -> Path:
        p = self._aside(target, "new")
        p.mkdir()
        self.ops.append((target, p))
        return p

    def delete(self, target: Path) -> None:
        self.ops.append((target, None))

    @property
    def backups(self) -> set[Path]:
        return {b for _, _, b in self.done if b is not None}

    def abort(self) -> None:
        for _, new in self.ops:
            if new is not None:
                _remove(new)
        self.ops = []

    def commit(self) -> None:
        try:
            for target, new in self.ops:
                backup = None
                if target.exists():
                    backup = self._aside(target, "old")
                    os.replace(target, backup)
                self.done.append((target, new, backup))
                if new is not None:
                    os.replace(new, target)
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> None:
        for target, new, backup in reversed(self.done):
            if new is not None and target.exists() and not new.exists():
                os.replace(target, new)  # the new version goes back aside, then away
            if backup is not None:
                os.replace(backup, target)
        self.done = []
        self.abort()

    def finish(self) -> None:
        for _, _, backup in self.done:
            if backup is not None:
                _remove(backup)
        self.done, self.ops = [], []


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Unchanged files of a rewritten folder: a hard link (never modified in place) or a copy."""
    if src.is_dir():
        shutil.copytree(src, dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---------------------------------------------------------------- features and online state


def read_build_manifest(directory: Path, what: str) -> dict[str, Any]:
    path = directory / "manifest.json"
    if not path.is_file():
        raise DataError(path, f"no such file ({what} must come from `recsys features build`, "
                              "whose manifest.json records how to rebuild it)")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e.msg})", line=e.lineno) from None
    for key in ("feature_set", "as_of", "config"):
        if key not in m:
            raise DataError(path, f"no {key!r} (not a `recsys features build` manifest)")
    return m


def build_settings(manifest: dict[str, Any], items: str | None) -> dict[str, Any]:
    """How the build computed its features: recorded ``settings`` (newer builds) or
    inferred from the manifest (older ones: identity resolution ran iff it reported)."""
    s = dict(manifest.get("settings") or {})
    s.setdefault("resolve_identities", manifest.get("identity") is not None)
    s.setdefault("ttl", manifest.get("ttl"))
    s["as_of"] = float(manifest["as_of"])
    if items is not None:
        s["items"] = items
    s.setdefault("items", None)
    return s


def feature_set_of(manifest: dict[str, Any], where: Path) -> Any:
    fs = build_feature_set(manifest["config"])
    if fs.version != manifest["feature_set"]:
        raise DataError(where, f"the manifest's config gives feature set {fs.version}, it records "
                               f"{manifest['feature_set']}")
    return fs


def counted_events(events: pl.DataFrame, mask: np.ndarray, settings: dict[str, Any], label: str) -> pl.LazyFrame:
    """The events a build with ``settings`` counts, minus the erased ones (``mask``).

    Identities are resolved on the *original* events, as the build resolved them,
    then the user's events are dropped: every other event keeps the attribution
    it had in the build (removing the user's events cannot re-attribute them)."""
    ev = events
    if settings["resolve_identities"]:
        ev = resolve_identities(events)[0]
    ev = ev.filter(pl.Series(~mask))
    items = settings.get("items")
    if isinstance(items, str) and not Path(items).is_file():
        raise DataError(items, "no such file (the items= the features were built with; pass items=<path>)")
    lf = batch.scan_events(ev, items=items, name=label)
    batch.check_events(lf, label)
    return apply_ttl(lf, settings["as_of"], settings.get("ttl"))


def _sorted(df: pl.DataFrame) -> pl.DataFrame:
    keys = [c for c in ("user_id", "item_id", "category") if c in df.columns]
    return df.sort(keys) if keys else df


def _rows_differ(old: pl.DataFrame, new: pl.DataFrame) -> int:
    """Rows of ``old`` / ``new`` without an identical row in the other (0: same rows)."""
    if old.columns != new.columns:
        return max(old.height, new.height, 1)
    if old.height == new.height and _sorted(old).equals(_sorted(new)):
        return 0
    both = old.join(new, on=old.columns, how="semi", nulls_equal=True).height
    return old.height + new.height - 2 * both


def rebuild_features(fdir: Path, events: pl.DataFrame, mask: np.ndarray, links: dict[str, Any],
                     items: str | None, label: str) -> dict[str, Any]:
    """New feature frames of a build folder without the erased events, and a check
    that every other user's rows are exactly the build's."""
    manifest = read_build_manifest(fdir, "features_dir")
    fs = feature_set_of(manifest, fdir / "manifest.json")
    settings = build_settings(manifest, items)
    lf = counted_events(events, mask, settings, label)
    frames, _ = batch.snapshot_and_params(lf, fs, settings["as_of"], manifest.get("params"), label=label)
    exclude = set(links["affected_ids"]) | set(links["user_ids"])
    removed, changed_others, changed = {}, {}, False
    for entity, new in frames.items():
        path = fdir / f"{entity}.parquet"
        if not path.is_file():
            raise DataError(path, "missing (the manifest's features_dir is incomplete)")
        old = pl.read_parquet(path)
        if _rows_differ(old, new):
            changed = True
        if "user_id" in new.columns:
            keep = ~pl.col("user_id").is_in(sorted(exclude))
            removed[entity] = old.height - old.filter(keep).height
            n = _rows_differ(old.filter(keep), new.filter(keep))
            if n:
                changed_others[entity] = n
    if changed_others:
        raise DataError(fdir, f"rebuilding with the manifest's settings ({_describe_settings(settings)}) would "
                              f"change other users' features ({changed_others} rows): the manifest does not say "
                              "how these features were built (pass items= if the build had it, or rebuild them "
                              "with `recsys features build`); nothing was changed")
    return {"frames": frames, "manifest": manifest, "settings": settings, "fs": fs, "lf": lf,
            "rows_removed": removed, "changed": changed}


def _describe_settings(s: dict[str, Any]) -> str:
    return (f"as_of {s['as_of']:.0f}, ttl {s.get('ttl')}, identity resolution "
            f"{'on' if s['resolve_identities'] else 'off'}, items {s.get('items')}")


def replay_online(fs: Any, params: Any, lf: pl.LazyFrame, as_of: float) -> Any:
    """A fresh online store fed the events before ``as_of`` in time order (what the build does)."""
    from recsys.features.online import OnlineFeatures

    online = OnlineFeatures(fs, params)
    ordered = lf.filter(pl.col("timestamp") < as_of).sort("timestamp", maintain_order=True).collect()
    for s in range(0, ordered.height, 8192):
        online.update(ordered.slice(s, 8192))
    return online


def _state_manifest(sdir: Path, features_manifest: Path | None) -> Path:
    beside = sdir.parent
    if (beside / "manifest.json").is_file():
        return beside
    if features_manifest is not None:
        return features_manifest
    raise DataError(sdir, "cannot tell how this online state was built (no `features build` manifest.json "
                          "beside it): pass features_dir=<the build folder>")


# ---------------------------------------------------------------- runs, index bundles, cache


def _embedding_dirs(run: Path) -> list[Path]:
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


def _bundle_dirs(root: Path) -> list[Path]:
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
            _link_or_copy(child, new / child.name)
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


# ---------------------------------------------------------------- erase / verify


def _user_trace(user_id: str, events: pl.DataFrame) -> tuple[np.ndarray, dict[str, Any], Trace]:
    mask, links = identity_links(events, user_id)
    return mask, links, Trace(set(links["user_ids"]) | {user_id}, set(links["device_ids"]))


def _public_links(links: dict[str, Any]) -> dict[str, Any]:
    """Counts only: the report must not list the user's other ids."""
    return {"linked_user_ids": len(links["user_ids"]) - 1, "linked_device_ids": len(links["device_ids"]),
            "shared_user_ids_kept": links["shared_user_ids"], "shared_device_ids_kept": links["shared_device_ids"],
            "events": links["n_events"], "events_through_identity_links": links["n_events_through_links"],
            "events_through_shared_devices": links["n_events_through_shared_devices"],
            "identity_resolution": links["resolved_through_logins"]}


def erase_user(user_id: str, targets: Targets) -> dict[str, Any]:
    """Erase ``user_id`` from every artifact in ``targets`` (all or nothing); see the module doc."""
    if not isinstance(user_id, str) or not user_id:
        raise DataError(None, f"user id must be a non-empty string, got {user_id!r}")
    targets.check_exist()
    label = str(targets.events)
    events = read_parquet_frame(targets.events, allow_empty=True)
    if "user_id" not in events.columns:
        raise DataError(targets.events, "no user id column", column="user_id")
    mask, links, trace = _user_trace(user_id, events)
    n_events = int(mask.sum())
    others = [p for kind, paths in targets.given().items() if kind != "events" for p in paths]
    if not n_events and not scan(others, trace):
        raise DataError(targets.events, f"unknown user id {user_id!r}: no events and no trace in the artifacts "
                                        "given (nothing erased)", column="user_id")
    res: dict[str, Any] = {"user_id": user_id, "identity": _public_links(links), "events_removed": n_events,
                           "artifacts": {}, "not_erased": []}
    arts = res["artifacts"]
    tx = Transaction()
    handled: list[Path] = []  # every path a new version (or a deletion) is staged for
    try:
        if n_events:
            events.filter(pl.Series(~mask)).write_parquet(tx.new_file(targets.events))
            handled.append(targets.events)
            arts["events"] = {"path": label, "status": "erased", "events_removed": n_events,
                              "events_removed_through_identity_links": links["n_events_through_links"],
                              "events_kept": events.height - n_events}
        else:
            arts["events"] = {"path": label, "status": "no trace", "events_removed": 0}

        rebuilt = None
        if targets.features_dir is not None:
            fdir = targets.features_dir
            rebuilt = rebuild_features(fdir, events, mask, links, targets.items, label)
            if rebuilt["changed"]:
                for entity, frame in rebuilt["frames"].items():
                    frame.write_parquet(tx.new_file(fdir / f"{entity}.parquet"), compression="lz4", statistics=False)
                    handled.append(fdir / f"{entity}.parquet")
                m = dict(rebuilt["manifest"])
                m.update(rows={e: f.height for e, f in rebuilt["frames"].items()},
                         erasures=int(m.get("erasures", 0)) + 1, last_erasure=time.time())
                tx.new_file(fdir / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True, default=str)
                                                               + "\n")
            arts["features_dir"] = {"path": str(fdir), "status": "erased" if rebuilt["changed"] else "no trace",
                                    "user_rows_removed": rebuilt["rows_removed"],
                                    "rebuilt_with": _describe_settings(rebuilt["settings"]),
                                    "other_users_rows": "identical to the build's (checked)"}

        if targets.online_state is not None:
            arts["online_state"] = _stage_online(targets, events, mask, trace, rebuilt, n_events, label, tx)
            if arts["online_state"]["status"] == "erased":
                handled.append(targets.online_state)

        for run in targets.runs:
            info: dict[str, Any] = {"path": str(run), "embeddings": {}, "index_bundles": {}}
            held = bool(scan([run], trace))
            for d in _embedding_dirs(run):
                if r := stage_embeddings(d, trace, tx):
                    info["embeddings"][str(d)] = r
                    handled.append(d)
            for d in _bundle_dirs(run):
                if r := stage_index_bundle(d, trace, tx):
                    info["index_bundles"][str(d)] = r
                    handled.append(d)
            if held:
                for w in sorted(p for p in _files(run) if p.suffix in WEIGHT_SUFFIXES):
                    res["not_erased"].append({"artifact": "run", "path": str(w), "column": None, "rows": None,
                                              "why": "model weights trained on the user's events (may hold a "
                                                     "per-user embedding row): retrain without the user"})
            info["status"] = "erased" if info["embeddings"] or info["index_bundles"] else "no trace"
            arts.setdefault("run", []).append(info)

        for d in targets.indexes:
            r = stage_index_bundle(d, trace, tx)
            if r:
                handled.append(d)
            arts.setdefault("index", []).append({"path": str(d), "status": "erased" if r else "no trace",
                                                 "removed": r or {}})

        if targets.cache_dir is not None:
            deleted = stage_cache(targets.cache_dir, trace, tx)
            handled += [targets.cache_dir / name for name in deleted]
            arts["cache"] = {"path": str(targets.cache_dir), "status": "erased" if deleted else "no trace",
                             "datasets_deleted": deleted}

        # what still holds the user outside everything staged: reported, never claimed erased
        staged = {new for _, new in tx.ops if new is not None}
        seen = {(h["path"], h["column"]) for h in res["not_erased"]}
        for kind, paths in targets.given().items():
            for h in scan(paths, trace, skip=set(handled) | staged):
                if (h["path"], h["column"]) not in seen:
                    seen.add((h["path"], h["column"]))
                    res["not_erased"].append({"artifact": kind, **h, "why": "holds the user but is not a file "
                                              "this command rewrites: delete it or rebuild it without the user"})
    except BaseException:
        tx.abort()
        raise

    tx.commit()
    try:
        left = scan(handled, trace, skip=tx.backups)
        if left:
            raise DataError(left[0]["path"], f"user {user_id!r} still present after erasure "
                                             f"(column {left[0]['column']}); every artifact was restored")
    except BaseException:
        tx.rollback()
        raise
    tx.finish()
    return _finish(res, targets)


def _stage_online(targets: Targets, events: pl.DataFrame, mask: np.ndarray, trace: Trace, rebuilt: Any,
                  n_events: int, label: str, tx: Transaction) -> dict[str, Any]:
    sdir = targets.online_state
    meta_path = sdir / "meta.json"
    if not meta_path.is_file():
        raise DataError(sdir, "not an online feature state folder (no meta.json)")
    hits = scan([sdir], trace)
    if not n_events and not hits:
        return {"path": str(sdir), "status": "no trace"}
    mdir = _state_manifest(sdir, targets.features_dir)
    if rebuilt is not None and mdir == targets.features_dir:
        fs, lf, settings = rebuilt["fs"], rebuilt["lf"], rebuilt["settings"]
    else:
        manifest = read_build_manifest(mdir, "online_state")
        fs = feature_set_of(manifest, mdir / "manifest.json")
        settings = build_settings(manifest, targets.items)
        lf = counted_events(events, mask, settings, label)
    meta = json.loads(meta_path.read_text())
    if meta.get("feature_set") != fs.version:
        raise DataError(sdir, f"state built for feature set {meta.get('feature_set')}, the build manifest says "
                              f"{fs.version}")
    online = replay_online(fs, meta.get("params"), lf, settings["as_of"])
    staged = tx.new_dir(sdir)
    staged.rmdir()  # OnlineFeatures.save writes the folder atomically itself
    online.save(staged)
    return {"path": str(sdir), "status": "erased", "replayed_events": int(online.n_events)}


def _finish(res: dict[str, Any], targets: Targets) -> dict[str, Any]:
    arts = res["artifacts"]

    def status(v: Any) -> list[str]:
        return [x["status"] for x in v] if isinstance(v, list) else [v["status"]]

    res["changed"] = [k for k in ARTIFACT_TYPES if k in arts and "erased" in status(arts[k])]
    res["checked_no_trace"] = [k for k in ARTIFACT_TYPES if k in arts and k not in res["changed"]]
    res["not_given"] = targets.not_given()
    res["complete"] = not res["not_given"] and not res["not_erased"]
    return res


def verify_erased(user_id: str, targets: Targets) -> dict[str, Any]:
    """Every remaining trace of ``user_id`` (its id and the ids the given events
    still link to it) in the artifacts given."""
    if not isinstance(user_id, str) or not user_id:
        raise DataError(None, f"user id must be a non-empty string, got {user_id!r}")
    targets.check_exist()
    events = read_parquet_frame(targets.events, allow_empty=True)
    _, links, trace = _user_trace(user_id, events)
    roots = [p for paths in targets.given().values() for p in paths]
    traces = list({(h["path"], h["column"]): h for h in scan(roots, trace)}.values())  # nested roots: once
    for run in targets.runs:
        if any(Path(h["path"]).is_relative_to(run) for h in traces):
            traces += [{"path": str(w), "column": "<model weights>", "rows": None}
                       for w in sorted(p for p in _files(run) if p.suffix in WEIGHT_SUFFIXES)]
    return {"user_id": user_id, "identity": _public_links(links), "checked": list(targets.given()),
            "not_given": targets.not_given(), "traces": traces, "clean": not traces}


def report_lines(res: dict[str, Any], verify: bool = False) -> list[str]:
    """What ``recsys data erase`` prints."""
    user = res["user_id"]
    idn = res["identity"]
    linked = f"{idn['linked_user_ids']} linked user ids, {idn['linked_device_ids']} linked devices"
    if verify:
        lines = [f"verify user {user!r} ({linked}): checked {', '.join(res['checked'])}"]
        lines += [f"  TRACE {h['path']}:{h['column']}" + (f" ({h['rows']} rows)" if h["rows"] else "")
                  for h in res["traces"]]
        lines.append(f"{len(res['traces'])} traces of the user remain" if res["traces"] else
                     "no trace of the user in the artifacts checked")
        if res["not_given"]:
            lines.append(f"not checked (not given): {', '.join(res['not_given'])}")
        return lines
    ev = res["artifacts"]["events"]
    lines = [f"erased user {user!r}: {ev['events_removed']} events removed "
             f"({ev.get('events_removed_through_identity_links', 0)} through identity links, "
             f"{idn['events_through_shared_devices']} of them through a device shared with other accounts; {linked}; "
             f"shared ids kept with other accounts: {idn['shared_user_ids_kept']} user ids, "
             f"{idn['shared_device_ids_kept']} devices)"]
    for kind in ARTIFACT_TYPES[1:]:
        v = res["artifacts"].get(kind)
        for a in (v if isinstance(v, list) else [v] if v else []):
            extra = {k: a[k] for k in ("user_rows_removed", "rebuilt_with", "replayed_events", "embeddings",
                                       "index_bundles", "removed", "datasets_deleted") if a.get(k)}
            detail = json.dumps(extra, default=str) if extra else ""
            lines.append(f"  {kind}: {a['status']} {a['path']} {detail}".rstrip())
    lines.append(f"changed: {', '.join(res['changed']) or 'nothing'}")
    for h in res["not_erased"]:
        lines.append(f"  NOT ERASED ({h['artifact']}) {h['path']}" + (f":{h['column']}" if h["column"] else "")
                     + f": {h['why']}")
    if res["complete"]:
        lines.append("erasure complete for every artifact type: no trace of the user in the artifacts given "
                     "(copies this command was not given are not covered)")
    else:
        why = []
        if res["not_given"]:
            why.append(f"not given: {', '.join(res['not_given'])}")
        if res["not_erased"]:
            why.append(f"{len(res['not_erased'])} files not erased")
        lines.append(f"erasure NOT complete ({'; '.join(why)}); no trace of the user is left in what was erased")
    return lines
