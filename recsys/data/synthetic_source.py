"""The synthetic world as a data source (the default ``data`` config)."""
from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from recsys.data.base import LoadedData
from recsys.data.synthetic import SyntheticConfig, SyntheticWorld, generate_world
from recsys.utils.errors import RecsysError


class SyntheticLoader:
    """Generate a :class:`~recsys.data.synthetic.SyntheticWorld`; every
    :class:`~recsys.data.synthetic.SyntheticConfig` field is a keyword argument.

    ``LoadedData.extras["world"]`` holds the world (impression logs and ground
    truth); the prepared cache stores it under ``extras/world``.
    """

    def __init__(self, **overrides: Any):
        names = {f.name for f in fields(SyntheticConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise RecsysError(f"unknown synthetic data option(s) {unknown}; valid: {sorted(names)}")
        if "channels" in overrides:
            overrides["channels"] = tuple(overrides["channels"])
        try:
            self.config = SyntheticConfig(**overrides)
        except (TypeError, ValueError) as e:
            raise RecsysError(f"bad synthetic data config: {e}") from None

    def load(self) -> LoadedData:
        world = generate_world(self.config)
        return LoadedData(world.events, items=world.items, users=world.users, extras={"world": world})

    def source_files(self) -> list[Path]:
        return []

    def fingerprint_config(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        if not cfg["weak_signal_strength"]:  # off: existing fingerprints (and caches) stay valid
            cfg.pop("weak_signal_users")
            cfg.pop("weak_signal_strength")
        return {"synthetic": cfg}


def load_world(extras_dir: Path | None, loaded_extras: dict[str, Any]) -> SyntheticWorld | None:
    """The world of a prepared synthetic dataset, fresh or from the cache."""
    if "world" in loaded_extras:
        return loaded_extras["world"]
    if extras_dir is not None and (extras_dir / "world").is_dir():
        return SyntheticWorld.load(extras_dir / "world")
    return None
