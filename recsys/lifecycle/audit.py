"""The registry's append-only audit trail: one JSON object per line, each carrying the
sha256 of the line before it (a hash chain), so a removed, reordered or edited line is
detected by :func:`verify_trail`.

A record::

    {"seq": 7, "time": "2026-12-05T13:04:11.123456+00:00", "who": "alice", "action": "promote",
     "model": "sasrec", "version": "3", "why": "weekly retrain", "outcome": "refused",
     "details": {...}, "prev": "<sha256 of line 6>", "hash": "<sha256 of this record without 'hash'>"}

``outcome`` is ``ok`` or ``refused`` (a refused promotion is recorded too). This is
tamper *evidence*, not tamper proofing: whoever can rewrite the whole file can rewrite
the chain (anchor the last hash elsewhere, e.g. the MLflow tag ``recsys.audit_head``
the registry keeps on each model, to detect that).
"""
from __future__ import annotations

import getpass
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from recsys.utils.errors import RecsysError
from recsys.utils.io import sha256_bytes

GENESIS = "0" * 64


class AuditError(RecsysError):
    """A broken or unreadable audit trail."""


def default_actor() -> str:
    """Who acts when nobody says: ``$RECSYS_ACTOR``, else the login name."""
    env = os.environ.get("RECSYS_ACTOR")
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode())


class AuditTrail:
    """Append-only JSONL file with a hash chain (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AuditError(f"{self.path}:{n}: not a JSON line (the audit trail was edited)") from None
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records())

    def append(self, action: str, model: str, version: str | None = None, *, who: str | None = None,
               why: str = "", outcome: str = "ok", details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append one record (the file is opened in append mode and flushed + fsynced;
        a lock file serialises writers on one machine)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _lock(self.path.with_suffix(self.path.suffix + ".lock")):
            prev = self.records()
            head = prev[-1]["hash"] if prev else GENESIS
            rec = {"seq": len(prev) + 1, "time": datetime.now(timezone.utc).isoformat(), "who": who or default_actor(),
                   "action": action, "model": model, "version": None if version is None else str(version),
                   "why": why, "outcome": outcome, "details": details or {}, "prev": head}
            rec["hash"] = _digest(rec)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, sort_keys=True, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return rec

    def verify(self) -> int:
        """Check the chain; returns the number of records. Raises :class:`AuditError`
        naming the first bad line."""
        head = GENESIS
        recs = self.records()
        for i, rec in enumerate(recs, 1):
            if rec.get("prev") != head or rec.get("seq") != i or _digest(rec) != rec.get("hash"):
                raise AuditError(f"{self.path}: record {i} breaks the hash chain (edited, removed or reordered lines)")
            head = rec["hash"]
        return len(recs)

    def head(self) -> str:
        recs = self.records()
        return recs[-1]["hash"] if recs else GENESIS


class _lock:
    """An exclusive lock file (O_EXCL), waited for up to 30 s; a lock older than 5 min is stale."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        deadline = time.time() + 30
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                return
            except FileExistsError:
                try:
                    if time.time() - self.path.stat().st_mtime > 300:
                        self.path.unlink(missing_ok=True)
                        continue
                except FileNotFoundError:
                    continue
                if time.time() > deadline:
                    raise AuditError(f"{self.path}: held by another process for 30 s") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)
