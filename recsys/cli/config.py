"""Where the config tree lives and the resolvers it uses."""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
#: the config tree ships inside the package (``recsys/configs``), so a wheel finds it
PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def project_root() -> Path:
    """The source checkout (editable install), else the working directory: where
    ``runs/``, ``.cache/`` and ``export/`` go by default."""
    if (_PACKAGE_ROOT / "pyproject.toml").is_file() and (_PACKAGE_ROOT / "recsys").is_dir():
        return _PACKAGE_ROOT
    return Path.cwd()


def config_dir() -> Path:
    """``RECSYS_CONFIG_DIR`` when set, else the package's own config tree."""
    env = os.environ.get("RECSYS_CONFIG_DIR")
    return Path(env).resolve() if env else PACKAGE_CONFIGS


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("recsys_root"):
        OmegaConf.register_new_resolver("recsys_root", lambda: str(project_root()))


def config_header(name: str) -> list[str]:
    """The comment lines at the top of ``configs/<name>.yaml`` (without ``#``)."""
    path = config_dir() / f"{name}.yaml"
    lines: list[str] = []
    if not path.is_file():
        return lines
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip() if not line.startswith("# ") else line[2:].rstrip())
    return lines


def config_entries(name: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """From the text of ``configs/<name>.yaml``: the defaults list's groups as
    ``(group, default option)`` and the top-level keys as ``(key, default, comment)``
    (a block of nested keys shows as ``key.*``). Comments are kept, hence no YAML parser."""
    import re

    path = config_dir() / f"{name}.yaml"
    groups: list[tuple[str, str]] = []
    keys: list[tuple[str, str, str]] = []
    if not path.is_file():
        return groups, keys
    section = ""
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_][\w]*):\s*(.*)$", line)
        if m:
            section = m.group(1)
            if section in ("defaults", "hydra"):
                continue
            value, _, comment = m.group(2).partition(" #")
            if value.startswith("#"):
                value, comment = "", value[1:]
            keys.append((section if value.strip() else f"{section}.*", value.strip(), comment.strip()))
            continue
        g = re.match(r"^\s*-\s*(?:override\s+)?([\w/]+):\s*([\w\-]+|null)", line)
        if section == "defaults" and g and g.group(1) not in ("hydra", "paths"):
            groups.append((g.group(1), g.group(2)))
    return groups, keys
