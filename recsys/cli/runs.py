"""A `recsys train` run's data, rebuilt from the resolved config in its
summary.json (not a command: commands import it, it imports no command).

The export's parity checks need real users' inputs: the run's data split and,
for multi-input encoders, its datamodule (feature encoders). They are rebuilt
here, in the CLI layer, with Hydra's ``instantiate`` on the run's own config:
``recsys.export`` itself never imports hydra or lightning. The config comes
from disk, so every ``_target_`` in it must be one the project's own configs use.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from recsys.artifacts.targets import check_targets, shipped_targets
from recsys.cli.common import load_data
from recsys.cli.config import config_dir
from recsys.utils.errors import RecsysError


def run_split(run_dir: Path) -> tuple[Any, Any, Any]:
    """``(run config, data, split)`` of a `recsys train` run, rebuilt from the
    resolved config in its summary.json."""
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise RecsysError(f"{summary_path}: missing (the encoder parity check rebuilds the run's data split from it)")
    try:
        raw = json.loads(summary_path.read_text()).get("config") or {}
    except (ValueError, AttributeError):
        raise RecsysError(f"{summary_path}: not a JSON object with a 'config'") from None
    # the run's config is read from disk: every _target_ in it must be one the project's own configs use
    check_targets(raw, shipped_targets(str(config_dir())), summary_path)
    run_cfg = OmegaConf.create(raw)
    if "data" not in run_cfg or "split" not in run_cfg:
        raise RecsysError(f"{summary_path}: its config has no data/split (not a `recsys train` run?)")
    data, _ = load_data(run_cfg)
    split = instantiate(run_cfg.split).split(data)
    return run_cfg, data, split


def run_histories(run_dir: Path) -> Any:
    """The parity data of a single-input (sequence) encoder: the test-split user
    histories of the data a `recsys train` run was trained on, with the raw item ids."""
    from recsys.export.adapters import EncoderData

    _, data, split = run_split(run_dir)
    return EncoderData(split.test.history, source=f"test-split histories of data={data.name} ({split.info.get('split')})",
                       fingerprint=data.fingerprint, item_ids=data.raw_item_ids())


def encoder_parity_data(run_dir: Path, adapter: Any) -> Any:
    """Real users' inputs for a multi-input encoder's parity check: the run's
    datamodule (its feature encoders) rebuilt from the run's config."""
    from recsys.export.onnx_ranker import rebuild_net

    run_cfg, data, split = run_split(run_dir)
    dm = instantiate(run_cfg.datamodule, _partial_=True)(data=data, split=split)
    return adapter.parity_data(run_dir, dm, data, split, rebuild_net(run_dir / "model")[0])

