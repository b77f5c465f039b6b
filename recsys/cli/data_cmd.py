"""``recsys data stats`` and ``recsys data validate`` (no torch import)."""
from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import load_data


def stats(cfg: DictConfig) -> None:
    from recsys.data.stats import dataset_stats

    data, _ = load_data(cfg)
    print(json.dumps(dataset_stats(data), indent=2))


def validate(cfg: DictConfig) -> None:
    from recsys.data.loaders import validate_file

    options = OmegaConf.to_container(cfg.options, resolve=True) if cfg.get("options") else {}
    summary = validate_file(str(cfg.path), str(cfg.format), **options)
    print(json.dumps({"valid": True, **summary}, indent=2, default=str))
