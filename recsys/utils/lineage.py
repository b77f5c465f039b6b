"""Provenance recorded in every summary.json: git commit, library versions, host."""
from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = ("recsys", "numpy", "pyarrow", "torch", "pytorch-lightning", "hydra-core", "faiss-cpu", "onnxruntime")


def git_commit(cwd: str | Path | None = None) -> str | None:
    cwd = cwd or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def environment() -> dict[str, object]:
    return {
        "git_commit": git_commit(),
        "versions": versions(),
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
    }
