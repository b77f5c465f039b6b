"""``_target_`` values read from disk (a run's ``summary.json`` config) are checked
against the targets the project's own shipped configs use, before Hydra imports
anything: a crafted ``{"_target_": "os.system"}`` is refused, not called."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from recsys.artifacts.errors import BundleError

_TARGET_RE = re.compile(r"^\s*_target_:\s*['\"]?([A-Za-z_][\w.]*)['\"]?\s*(?:#.*)?$", re.M)


@lru_cache(maxsize=4)
def shipped_targets(config_dir: str) -> frozenset[str]:
    """Every ``_target_`` named in the YAML files under ``config_dir``."""
    out: set[str] = set()
    for p in Path(config_dir).rglob("*.yaml"):
        out.update(_TARGET_RE.findall(p.read_text(errors="replace")))
    return frozenset(out)


def check_targets(cfg: Any, allowed: frozenset[str] | set[str], where: str | Path, _path: str = "") -> None:
    """Walk a plain config (dicts/lists) and refuse any ``_target_`` outside ``allowed``."""
    if isinstance(cfg, dict):
        t = cfg.get("_target_")
        if t is not None and t not in allowed:
            raise BundleError(f"{where}: refused {_path or '<root>'}._target_ {t!r}: not a class or function "
                              f"the project's configs use")
        for k, v in cfg.items():
            check_targets(v, allowed, where, f"{_path}.{k}" if _path else str(k))
    elif isinstance(cfg, (list, tuple)):
        for i, v in enumerate(cfg):
            check_targets(v, allowed, where, f"{_path}[{i}]")
