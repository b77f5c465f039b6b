"""Atomic writes (temp file + rename), checksums and JSON helpers.

Temporary files and folders are named ``.<name>.<pid>.<random>.tmp`` next to their
target. A build killed with ``kill -9`` leaves one behind; the next folder write to
the same target (:func:`atomic_dir`) removes the temp folders of processes that no
longer exist (:func:`clean_stale_temps`), so they never accumulate. Single-file
writes (:func:`atomic_path`) do not scan their folder: they are frequent and a killed
one leaves at most one small temp file. Finished files and folders get the usual
permissions (``0666`` / ``0777`` minus the umask), not the private ones
``mkstemp`` / ``mkdtemp`` start with.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

#: temp folders of unknown owners (older naming) are removed after this many seconds
STALE_TEMP_AGE_S = 3600.0
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_permissions(path: Path) -> None:
    """Give a finished file or folder tree the permissions of a normal ``open`` /
    ``mkdir`` (``0666`` / ``0777`` minus the umask) instead of mkstemp's private ones."""
    mask = _umask()
    if path.is_dir():
        for p in path.rglob("*"):
            if not p.is_symlink():
                p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
        path.chmod(0o777 & ~mask)
    elif path.exists():
        path.chmod(0o666 & ~mask)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(target: str | Path) -> list[Path]:
    """Remove temp files/folders left next to ``target`` by killed writers: those
    whose writer process is gone, and ``.<name>.old`` leftovers of an interrupted
    swap. Returns what was removed."""
    target = Path(target)
    parent = target.parent
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    prefix = f".{target.name}."
    for p in parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        m = _TEMP_RE.match(p.name)
        stale = False
        if p.name == f".{target.name}.old":
            stale = True
        elif m and m.group("name") == target.name:
            stale = not _pid_alive(int(m.group("pid")))
        elif p.name.endswith(".tmp"):  # older naming without a pid: only when clearly abandoned
            with contextlib.suppress(OSError):
                stale = time.time() - p.stat().st_mtime > STALE_TEMP_AGE_S
        if stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place on success,
    remove it on failure, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        publish_permissions(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; rename it to ``path`` on
    success, delete it on failure.

    ``replace=True`` swaps out an existing ``path``; ``replace=False`` keeps an
    existing one and discards the new folder (for content-addressed folders such as
    the data cache, where two writers produce the same content: readers never see
    the folder disappear)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        publish_permissions(tmp)
        if path.exists():
            if not replace:
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, path)
            except OSError:
                if replace or not path.exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another writer finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_text(obj: Any) -> str:
    """The project's one JSON layout for files on disk (sorted keys, 2-space indent)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json_text(obj))


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
