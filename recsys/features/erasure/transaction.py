"""All or nothing: new versions are staged beside their targets, swapped in
together (old versions kept aside), and the old versions are deleted only once
the result is checked; any failure puts every old version back."""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path


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
                remove_path(new)
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
                remove_path(backup)
        self.done, self.ops = [], []


def remove_path(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """Unchanged files of a rewritten folder: a hard link (never modified in place) or a copy."""
    if src.is_dir():
        shutil.copytree(src, dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
