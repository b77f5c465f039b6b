"""What to erase and how to find the user: the artifacts given (:class:`Targets`),
the ids that identify the user (:class:`Trace`) and :func:`scan`, which lists every
place under some paths that still holds one of them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.utils.errors import DataError

ARTIFACT_TYPES = ("events", "features_dir", "online_state", "run", "index", "cache")
USER_COLUMNS = ("user_id", "raw_user_id")
DEVICE_COLUMNS = ("device_id",)
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".onnx")


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


def files_under(root: Path) -> list[Path]:
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
        for f in files_under(Path(root)):
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


def weight_files(run: Path) -> list[Path]:
    """Model weights under a run folder (they may hold a per-user embedding row)."""
    return sorted(p for p in files_under(run) if p.suffix in WEIGHT_SUFFIXES)


def find_user(user: str, paths: list[str | Path]) -> list[str]:
    """``file:column`` for every file under ``paths`` that still holds ``user``
    (user columns of Parquet files, ``*user*.npy`` id arrays)."""
    return [f"{h['path']}:{h['column']}" for h in scan([Path(p) for p in paths], Trace({str(user)}))]
