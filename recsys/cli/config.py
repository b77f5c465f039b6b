"""Where the config tree lives and the resolvers it uses."""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def project_root() -> Path:
    """The source checkout (editable install), else the working directory."""
    if (_PACKAGE_ROOT / "configs").is_dir():
        return _PACKAGE_ROOT
    return Path.cwd()


def config_dir() -> Path:
    env = os.environ.get("RECSYS_CONFIG_DIR")
    return Path(env).resolve() if env else project_root() / "configs"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("recsys_root"):
        OmegaConf.register_new_resolver("recsys_root", lambda: str(project_root()))
