"""The one on-disk bundle format: a folder written atomically, ``manifest.json``,
``manifest.sha256`` and the sha256 and size of every file.

::

    <bundle>/
      manifest.json       {"format": ..., "kind": ..., ..., "files": {name: {"sha256", "bytes"}}}
      manifest.sha256     "<sha256 of manifest.json's bytes>  manifest.json" (sha256sum format)
      <files listed in the manifest>

Every kind of artifact uses it: export bundles (``recsys.export_bundle/1``: rankers,
query encoders), index bundles (``recsys.index_bundle/1``) and model folders of
training runs (``recsys.model/1``). Writers go through :func:`write_bundle`; readers
call :func:`verify_bundle` **before reading anything else** from the folder: the
manifest's own checksum first, then its format and kind, then every listed file's
size and sha256. This is integrity checking, not signing: whoever can rewrite every
file can rewrite the checksums too (see ``docs/security.md``).

Outputs never replace a folder that is not a bundle of the same kind unless the caller
passes ``overwrite=True`` (:func:`check_output_target`); bundle names given by a user
are names, not paths (:func:`bundle_name`).

Example::

    with write_bundle("export/r1", format=EXPORT_FORMAT, kind="ranker") as b:
        save_onnx(b.path / "ranker.onnx")
        b.manifest.update(model={"file": "ranker.onnx"})
    manifest = verify_bundle("export/r1", format=EXPORT_FORMAT, kind="ranker", require=["ranker.onnx"])
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from recsys.artifacts.errors import BundleError
from recsys.utils.io import atomic_dir, json_text, sha256_bytes, sha256_file

MANIFEST_FILE = "manifest.json"
MANIFEST_SHA_FILE = "manifest.sha256"
EXPORT_FORMAT = "recsys.export_bundle/1"
INDEX_FORMAT = "recsys.index_bundle/1"
MODEL_FORMAT = "recsys.model/1"
#: format -> kind assumed when a manifest has no ``kind`` key (bundles written before kinds)
DEFAULT_KIND = {EXPORT_FORMAT: "ranker", INDEX_FORMAT: "index", MODEL_FORMAT: "model"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def seal(directory: str | Path, manifest: dict[str, Any], files: Iterable[str] | None = None) -> dict[str, Any]:
    """Write ``manifest.json`` (with the sha256 and size of ``files``, default: every
    file in the folder) and ``manifest.sha256`` into ``directory``. Returns the
    manifest as written. Used inside a folder being written atomically."""
    d = Path(directory)
    names = sorted(files) if files is not None else sorted(
        p.relative_to(d).as_posix() for p in d.rglob("*")
        if p.is_file() and p.name not in (MANIFEST_FILE, MANIFEST_SHA_FILE))
    full = {**manifest, "files": {n: file_entry(d / n) for n in names}}
    text = json_text(full)
    (d / MANIFEST_FILE).write_text(text)
    (d / MANIFEST_SHA_FILE).write_text(f"{sha256_bytes(text.encode())}  {MANIFEST_FILE}\n")
    return full


def _manifest_kind(directory: Path) -> tuple[str | None, str | None]:
    """``(format, kind)`` of a folder's manifest, read without trusting it (used only
    to decide whether an output may replace the folder)."""
    try:
        m = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(m, dict):
        return None, None
    fmt = m.get("format")
    return fmt, m.get("kind", DEFAULT_KIND.get(fmt) if isinstance(fmt, str) else None)


def check_output_target(out_dir: str | Path, *, format: str, kind: str, overwrite: bool = False) -> None:
    """Refuse to replace ``out_dir`` unless it is absent, an empty folder, a bundle
    of the same format and kind, or ``overwrite`` is set."""
    d = Path(out_dir)
    if not d.exists() and not d.is_symlink():
        return
    if d.is_symlink() or not d.is_dir():
        if overwrite and d.is_file():
            raise BundleError(f"{d}: exists and is a file; refusing to replace a file with a bundle folder")
        if not overwrite:
            raise BundleError(f"{d}: exists and is not a folder; choose another output (or overwrite=true)")
    if overwrite or not any(d.iterdir()):
        return
    fmt, got = _manifest_kind(d)
    if fmt == format and got == kind:
        return
    what = f"a {got!r} bundle" if fmt else "not a bundle"
    raise BundleError(f"{d}: exists and is {what}; refusing to replace it with a {kind!r} bundle "
                      f"(choose another name, or pass overwrite=true)")


def bundle_name(name: Any, key: str = "name") -> str:
    """A bundle name given by a user: a plain name (letters, digits, ``._-``), never
    a path (``/``, ``..``, absolute)."""
    s = str(name)
    if not _NAME_RE.match(s) or s in (".", "..") or ".." in s:
        raise BundleError(f"{key}={s!r}: a bundle name must be a plain name (letters, digits, '.', '_', '-'; "
                          f"no '/', no '..'), e.g. {key}=ranker_v1")
    return s


@dataclass
class BundleDraft:
    """A bundle being written: put files under ``path``, fill ``manifest``."""

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    files: list[str] | None = None  # None: list every file written under path


@contextlib.contextmanager
def write_bundle(out_dir: str | Path, *, format: str, kind: str, overwrite: bool = False,
                 check_target: bool = True) -> Iterator[BundleDraft]:
    """Write a bundle atomically: all files + checksummed manifest appear at once, or
    nothing (and no temp folder) is left. ``check_target`` refuses to replace a
    folder that is not a bundle of this format and kind (see :func:`check_output_target`)."""
    out = Path(out_dir)
    if check_target:
        check_output_target(out, format=format, kind=kind, overwrite=overwrite)
    with atomic_dir(out) as tmp:
        draft = BundleDraft(tmp)
        yield draft
        draft.manifest.update(seal(tmp, {**draft.manifest, "format": format, "kind": kind}, draft.files))


def read_manifest_verified(bundle_dir: str | Path) -> dict[str, Any]:
    """``manifest.json`` after checking it against ``manifest.sha256`` (nothing else
    is read from the folder before this)."""
    d = Path(bundle_dir)
    path, sha_path = d / MANIFEST_FILE, d / MANIFEST_SHA_FILE
    if not d.is_dir():
        raise BundleError(f"{d}: no such bundle folder")
    if not path.is_file():
        raise BundleError(f"{d}: no {MANIFEST_FILE} (not a bundle)")
    if not sha_path.is_file():
        raise BundleError(f"{d}: no {MANIFEST_SHA_FILE} (written by an older version or tampered with; rebuild it)")
    raw = path.read_bytes()
    want = (sha_path.read_text(errors="replace").split() or [""])[0]
    if sha256_bytes(raw) != want:
        raise BundleError(f"{path}: sha256 does not match {MANIFEST_SHA_FILE} (modified manifest)")
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    return manifest


def verify_files(bundle_dir: str | Path, manifest: dict[str, Any], *, hashes: bool = True) -> None:
    """Every listed file exists with the listed size (and sha256 when ``hashes``);
    listed names must stay inside the folder."""
    d = Path(bundle_dir)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{d / MANIFEST_FILE}: no 'files' table")
    root = d.resolve()
    for name, info in files.items():
        f = d / str(name)
        if not isinstance(info, dict) or not {"sha256", "bytes"} <= set(info) or \
                Path(str(name)).is_absolute() or ".." in Path(str(name)).parts or root not in f.resolve().parents:
            raise BundleError(f"{d / MANIFEST_FILE}: bad files entry {name!r}")
        if not f.is_file():
            raise BundleError(f"{f}: listed in the manifest but missing")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise BundleError(f"{f}: {size} bytes, manifest says {info['bytes']} (truncated or modified)")
        if hashes and sha256_file(f) != info["sha256"]:
            raise BundleError(f"{f}: sha256 differs from the manifest (modified file)")


def verify_bundle(bundle_dir: str | Path, *, format: str | Iterable[str], kind: str | Iterable[str] | None = None,
                  require: Iterable[str] = (), hashes: bool = True) -> dict[str, Any]:
    """The verified manifest of a bundle: its own checksum, its ``format``, its
    ``kind`` (when given), the ``require``d files listed, every listed file's size and
    sha256 (``hashes=False`` checks sizes only). Raises :class:`BundleError`."""
    d = Path(bundle_dir)
    manifest = read_manifest_verified(d)
    path = d / MANIFEST_FILE
    formats = {format} if isinstance(format, str) else set(format)
    fmt = manifest.get("format")
    if fmt not in formats:
        raise BundleError(f"{path}: format {fmt!r}, expected {' or '.join(map(repr, sorted(formats)))}")
    got = manifest.get("kind", DEFAULT_KIND.get(fmt))
    if kind is not None:
        kinds = {kind} if isinstance(kind, str) else set(kind)
        if got not in kinds:
            raise BundleError(f"{path}: a {got!r} bundle, expected a {' or '.join(map(repr, sorted(kinds)))} bundle")
    missing = [r for r in require if r not in (manifest.get("files") or {})]
    if missing:
        raise BundleError(f"{path}: lists no {', '.join(missing)}")
    verify_files(d, manifest, hashes=hashes)
    return manifest


def resolve_bundle_ref(ref: Any, bundle_root: str | Path) -> Path:
    """Where a user's ``bundle=`` points, by one rule for every command: a value
    with a path separator (``exports/x``, ``./x``, ``/abs/x``) is a path; a plain name
    is a folder under ``bundle_root`` (the export dir)."""
    s = str(ref)
    if "/" in s or s.startswith("."):
        return Path(s)
    return Path(bundle_root) / bundle_name(s, key="bundle")


def restage(src: str | Path, dst: str | Path, manifest: dict[str, Any], replace: dict[str, Any],
            patch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write into the empty folder ``dst`` a copy of the verified bundle ``src`` with
    the files in ``replace`` (name -> ``writer(path)``) rewritten, ``patch`` merged
    into the manifest, and every checksum resealed. Unchanged files are hard-linked
    (copied across file systems). The caller swaps ``dst`` into place."""
    import os
    import shutil

    s, d = Path(src), Path(dst)
    for name in manifest["files"]:
        if name not in replace:
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(s / name, d / name)
            except OSError:
                shutil.copy2(s / name, d / name)
    for name, writer in replace.items():
        writer(d / name)
    body = {k: v for k, v in manifest.items() if k != "files"}
    return seal(d, {**body, **(patch or {})}, list(manifest["files"]) + [n for n in replace if n not in manifest["files"]])
