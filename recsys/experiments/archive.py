"""The audit archive: one folder per analysed experiment, JSON only.

``<root>/<experiment>-<UTC timestamp>/`` holds

* ``config.json``      the resolved analysis config,
* ``assignment.json``  the design: salt, arms and shares, traffic, holdback,
* ``data.json``        input path, sha256 of the input file, row count, columns,
* ``results.json``     the analysis results,
* ``manifest.json``    format version, creation time and the sha256 of each file above.

The folder is written to a temporary directory and renamed into place
(:func:`recsys.utils.io.atomic_dir`), so an audit never sees half an archive;
:func:`load_archive` verifies every checksum.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Mapping

from recsys.utils.errors import RecsysError
from recsys.utils.io import atomic_dir, sha256_file, write_json_atomic

FORMAT = "recsys.ab_archive/1"
PARTS = ("config", "assignment", "data", "results")


class ArchiveError(RecsysError):
    """An archive folder that is missing, incomplete or fails its checksums."""


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


def write_archive(root: str | Path, experiment: str, *, config: Mapping[str, Any], assignment: Mapping[str, Any],
                  data: Mapping[str, Any], results: Mapping[str, Any], now: float | None = None) -> Path:
    """Write one archive folder under ``root`` and return its path.

    The folder name is ``<experiment>-<YYYYmmddTHHMMSSZ>``; a suffix ``-2``, ``-3``
    ... keeps two analyses in the same second apart.
    """
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    root = Path(root)
    base = f"{_slug(experiment)}-{stamp}"
    path, k = root / base, 1
    while path.exists():
        k += 1
        path = root / f"{base}-{k}"
    parts = {"config": config, "assignment": assignment, "data": data, "results": results}
    with atomic_dir(path) as tmp:
        for name, obj in parts.items():
            write_json_atomic(tmp / f"{name}.json", obj)
        write_json_atomic(tmp / "manifest.json", {
            "format": FORMAT, "experiment": experiment, "created_utc": stamp, "created_unix": now,
            "files": {f"{n}.json": sha256_file(tmp / f"{n}.json") for n in parts}})
    return path


def load_archive(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read an archive folder back: ``{"manifest", "config", "assignment", "data",
    "results", "path"}``. With ``verify`` every file's sha256 must match the manifest.

    Raises:
        ArchiveError: missing folder or file, unknown format, checksum mismatch.
    """
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ArchiveError(f"{path}: not an A/B archive (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ArchiveError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    out: dict[str, Any] = {"manifest": manifest, "path": str(path)}
    for name in PARTS:
        f = path / f"{name}.json"
        if not f.is_file():
            raise ArchiveError(f"{f}: missing")
        if verify and sha256_file(f) != manifest["files"].get(f.name):
            raise ArchiveError(f"{f}: sha256 does not match manifest.json (modified after archiving?)")
        out[name] = json.loads(f.read_text())
    return out


def list_archives(root: str | Path, experiment: str | None = None) -> list[Path]:
    """Archive folders under ``root`` (optionally of one experiment), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").is_file()]
    manifests = {p: json.loads((p / "manifest.json").read_text()) for p in found}
    if experiment is not None:
        found = [p for p in found if manifests[p].get("experiment") == experiment]
    return sorted(found, key=lambda p: (manifests[p].get("created_unix", 0), p.name))
