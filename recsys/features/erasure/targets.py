"""What to erase and how to find the user: the artifacts given (:class:`Targets`),
the ids that identify the user (:class:`Trace`) and :func:`scan`, which lists every
place under some paths that still holds one of them."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.utils.errors import DataError

ARTIFACT_TYPES = ("events", "identity", "features_dir", "online_state", "run", "index", "cache", "decision_log",
                  "ab_archive", "state", "registry")
#: types the features package does not rewrite itself: the service's live state
#: (recsys.service.erase) and the model registry (recsys.lifecycle.erasure)
EXTERNAL_TYPES = ("state", "registry")
USER_COLUMNS = ("user_id", "raw_user_id")
DEVICE_COLUMNS = ("device_id",)
SESSION_COLUMNS = ("session_id",)
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
    identity: Path | None = None  # an identity link file (recsys.features.identity.read_link_file)
    decision_logs: list[Path] = field(default_factory=list)  # decision service log folders
    ab_archives: list[Path] = field(default_factory=list)  # A/B archive folders, or folders of them
    state_url: str | None = None  # the service's live state (erased by recsys.service.erase)
    registry: Path | None = None  # the model registry folder (flagged by recsys.lifecycle.erasure)

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
        self.identity = Path(self.identity) if self.identity else None
        self.decision_logs = [Path(p) for p in self.decision_logs]
        self.ab_archives = [Path(p) for p in self.ab_archives]
        self.registry = Path(self.registry) if self.registry else None

    def given(self) -> dict[str, list[Path]]:
        """Artifact type -> the paths given (types not given are absent; ``state`` has no path)."""
        out = {"events": [self.events], "identity": [self.identity] if self.identity else [],
               "features_dir": [self.features_dir] if self.features_dir else [],
               "online_state": [self.online_state] if self.online_state else [], "run": self.runs,
               "index": self.indexes, "cache": [self.cache_dir] if self.cache_dir else [],
               "decision_log": self.decision_logs, "ab_archive": self.ab_archives,
               "registry": [self.registry] if self.registry else []}
        return {k: v for k, v in out.items() if v}

    def not_given(self) -> list[str]:
        g = set(self.given()) | ({"state"} if self.state_url else set())
        return [t for t in ARTIFACT_TYPES if t not in g]

    def check_exist(self) -> None:
        for kind in ("events", "identity"):
            p = getattr(self, kind)
            if p is not None and not p.is_file():
                raise DataError(p, f"no such file (given as {kind}=)")
        for kind, paths in self.given().items():
            for p in paths:
                if kind not in ("events", "identity") and not p.is_dir():
                    raise DataError(p, f"no such directory (given as {kind})")


@dataclass
class Trace:
    """The ids that identify the user: user ids, device ids and session ids, and
    (after an erasure, from its receipt) salted digests of ids no longer linked
    anywhere: a column value whose digest is listed is the user's too."""

    user_ids: set[str]
    device_ids: set[str] = field(default_factory=set)
    session_ids: set[str] = field(default_factory=set)
    digests: dict[str, set[str]] = field(default_factory=dict)  # "user" / "device" / "session" -> sha256 hex
    salt: str = ""

    def kind_of(self, column: str) -> str | None:
        if column in USER_COLUMNS:
            return "user"
        if column in DEVICE_COLUMNS:
            return "device"
        if column in SESSION_COLUMNS:
            return "session"
        return None

    def ids_for(self, column: str, values: Iterable[Any] = ()) -> set[str]:
        """The ids to look for in ``column``; with ``values`` (the column's distinct
        values) plus those whose salted digest the receipt lists."""
        kind = self.kind_of(column)
        if kind is None:
            return set()
        ids = {"user": self.user_ids, "device": self.device_ids, "session": self.session_ids}[kind]
        want = self.digests.get(kind)
        if not want:
            return ids
        return ids | {str(v) for v in values if v is not None and digest(self.salt, str(v)) in want}

    def has(self, column: str, value: str) -> bool:
        """Whether ``value`` in ``column`` is one of the user's ids (or its digest is in the receipt)."""
        return value in self.ids_for(column, (value,))

    def all_ids(self) -> set[str]:
        return self.user_ids | self.device_ids | self.session_ids

    def receipt(self, salt: str) -> dict[str, Any]:
        """Salted sha256 digests of every id of the trace (no id in clear): what
        ``verify`` needs to find the linked ids once the identity file no longer links them."""
        return {"salt": salt, "digests": {k: sorted(digest(salt, i) for i in ids) for k, ids in
                                          (("user", self.user_ids), ("device", self.device_ids),
                                           ("session", self.session_ids))}}

    def with_receipt(self, receipt: dict[str, Any]) -> "Trace":
        return Trace(set(self.user_ids), set(self.device_ids), set(self.session_ids),
                     {k: set(v) for k, v in receipt["digests"].items()}, str(receipt["salt"]))


def digest(salt: str, value: str) -> str:
    import hashlib

    return hashlib.sha256(f"{salt}\x1f{value}".encode()).hexdigest()


def files_under(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file())


def _skipped(p: Path, skip: set[Path]) -> bool:
    return p in skip or any(a in skip for a in p.parents)


def scan(roots: Iterable[Path], trace: Trace, skip: Iterable[Path] = (), json_ids: bool = False
         ) -> list[dict[str, Any]]:
    """Every place under ``roots`` that still holds the user: ``{"path", "column", "rows"}``
    for each Parquet column named ``user_id`` / ``raw_user_id`` / ``device_id`` /
    ``session_id`` and each ``*user*.npy`` string array holding one of the trace's
    ids; with ``json_ids`` also every ``.json`` file with a string (value or key)
    equal to one of them. Hidden files are scanned too (a leftover temp file is a
    copy). A file that cannot be read is reported as a trace (``column:
    "<unreadable>"``): its absence cannot be proved."""
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
            elif json_ids and (f.suffix == ".json" or ".json." in f.name):
                hits += _scan_json(f, trace)
    return hits


def _scan_parquet(f: Path, trace: Trace) -> list[dict[str, Any]]:
    try:
        names = pq.read_schema(f).names
    except Exception:  # noqa: BLE001 - any unreadable file is reported, not skipped
        if f.name.endswith(".parquet"):
            return [{"path": str(f), "column": "<unreadable>", "rows": None}]
        return []  # a partial temp file of another name: not Parquet at all
    cols = [c for c in names if trace.kind_of(c)]
    if not cols:
        return []
    t = pq.read_table(f, columns=cols)
    out = []
    for c in cols:
        col = t.column(c).cast(pa.string())
        ids = pa.array(sorted(trace.ids_for(c, pc.unique(col).to_pylist() if trace.digests else ())), pa.string())
        n = pc.sum(pc.is_in(col, value_set=ids)).as_py() or 0
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
    vals = a.astype(str)
    n = int(np.isin(vals, sorted(trace.ids_for("user_id", np.unique(vals) if trace.digests else ()))).sum())
    return [{"path": str(f), "column": "user_ids", "rows": n}] if n else []


def json_strings(obj: Any) -> Iterable[str]:
    """Every string (keys included) in a JSON value."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from json_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from json_strings(v)


def json_matches(obj: Any, trace: Trace) -> set[str]:
    """The strings of ``obj`` that are one of the trace's ids (or whose digest the receipt lists)."""
    strings = set(json_strings(obj))
    ids = trace.all_ids()
    if trace.digests:
        want = set().union(*trace.digests.values())
        ids = ids | {s for s in strings if digest(trace.salt, s) in want}
    return strings & ids


def _scan_json(f: Path, trace: Trace) -> list[dict[str, Any]]:
    try:
        obj = json.loads(f.read_text())
    except (OSError, ValueError):
        return [{"path": str(f), "column": "<unreadable>", "rows": None}]
    n = len(json_matches(obj, trace))
    return [{"path": str(f), "column": "<json value>", "rows": n}] if n else []


def weight_files(run: Path) -> list[Path]:
    """Model weights under a run folder (they may hold a per-user embedding row)."""
    return sorted(p for p in files_under(run) if p.suffix in WEIGHT_SUFFIXES)


def find_user(user: str, paths: list[str | Path]) -> list[str]:
    """``file:column`` for every file under ``paths`` that still holds ``user``
    (user columns of Parquet files, ``*user*.npy`` id arrays)."""
    return [f"{h['path']}:{h['column']}" for h in scan([Path(p) for p in paths], Trace({str(user)}))]
