"""Bundles named on the command line (not a command: commands import it)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recsys.utils.errors import RecsysError


def bundle_dir(cfg: DictConfig, ref: str) -> Path:
    """A bundle name under ``paths.export_dir``, or a path (refused when it is neither)."""
    from recsys.artifacts.bundle import resolve_bundle_ref

    return resolve_bundle_ref(ref, cfg.paths.export_dir)


def embedding_versions(cfg: DictConfig, refs: Any) -> list[str]:
    """The embedding version each bundle in ``refs`` declares (``compatible_with=[a,b]``),
    each bundle verified; a bad one is refused naming the option."""
    from recsys.serving.bundle import BundleError, declared_embedding_version

    out = []
    for ref in refs or []:
        try:
            out.append(declared_embedding_version(bundle_dir(cfg, str(ref)))[0])
        except BundleError as e:
            raise RecsysError(f"compatible_with={ref}: {e}") from None
    return out
