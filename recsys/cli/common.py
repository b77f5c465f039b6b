"""Helpers shared by the commands: build data from config, write summaries."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.data.prepare import PreparedData, prepare
from recsys.utils.io import write_json_atomic
from recsys.utils.tables import format_table  # noqa: F401  (re-exported for the commands)
from recsys.utils.lineage import environment


def load_data(cfg: DictConfig) -> tuple[PreparedData, float]:
    """Instantiate ``cfg.data.loader`` and prepare (or reuse the cache)."""
    t0 = time.perf_counter()
    loader = instantiate(cfg.data.loader)
    events = list(cfg.data.event_types) if cfg.data.get("event_types") else None
    data = prepare(loader, cfg.paths.cache_dir, cfg.data.name, event_types=events,
                   min_value=cfg.data.get("min_value"))
    return data, time.perf_counter() - t0


def split_data(cfg: DictConfig, data: PreparedData) -> Any:
    """``cfg.split`` applied to ``data``; a leave-one-out split of data with real
    timestamps prints one ``warning:`` line on stderr naming the temporal preset of
    the chosen experiment (``<experiment>_temporal`` where it exists, else
    ``split=temporal``) and records it in ``split.info["warnings"]``."""
    from recsys.data.splits import loo_leakage_warning

    split = instantiate(cfg.split).split(data)
    msg = loo_leakage_warning(data, split.info, _temporal_choice())
    if msg:
        print(f"warning: {msg}", file=sys.stderr)
        split.info["warnings"] = [*split.info.get("warnings", []), msg]
    return split


def _temporal_choice() -> str:
    """``experiment=<chosen>_temporal`` when that preset exists, else ``split=temporal``."""
    from hydra.core.hydra_config import HydraConfig

    from recsys.cli.config import config_dir

    exp = HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None
    if exp and (config_dir() / "experiment" / f"{exp}_temporal.yaml").is_file():
        return f"experiment={exp}_temporal"
    return "split=temporal"


def data_lineage(data: PreparedData) -> dict[str, Any]:
    return {
        "name": data.name,
        "fingerprint": data.fingerprint,
        "cache_dir": str(data.directory) if data.directory else None,
        "n_users": data.n_users,
        "n_items": data.n_items,
        "n_interactions": data.interactions.num_rows,
        "sources": data.meta.get("sources", []),
    }


def write_summary(cfg: DictConfig, summary: dict[str, Any]) -> Path:
    out = Path(cfg.paths.output_dir) / "summary.json"
    summary = {**summary, "environment": environment(),
               "config": OmegaConf.to_container(cfg, resolve=True)}
    write_json_atomic(out, summary)
    return out


def build_trainer(cfg: DictConfig, out: Path) -> Any:
    """``cfg.trainer`` with the callbacks of ``cfg.callbacks`` and ``cfg.logger``
    (none when absent or null), its default root at ``out``."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    return instantiate(cfg.trainer, _partial_=True)(callbacks=callbacks, logger=logger, default_root_dir=str(out))


def build_sequence_model(cfg: DictConfig, data: PreparedData, split: Any) -> tuple[Any, Any]:
    """``(datamodule, module)`` of the sequence wing from ``cfg.datamodule``, ``cfg.net``,
    ``cfg.loss`` and ``cfg.module`` (``recsys train`` and ``recsys demo``)."""
    # objects are passed through partials: hydra would turn a dataclass argument into a config
    dm = instantiate(cfg.datamodule, _partial_=True)(split=split, n_items=data.n_items)
    net = instantiate(cfg.net, n_items=data.n_items)
    return dm, instantiate(cfg.module, _partial_=True)(net=net, loss=instantiate(cfg.loss))


def build_ranker(cfg: DictConfig, table: Any) -> tuple[Any, Any]:
    """``(datamodule, module)`` of the ranker wing over a feature ``table`` from
    ``cfg.datamodule``, ``cfg.ranker`` (sized by the table) and ``cfg.optimizer``
    (``configs/rank_train.yaml``: ``recsys rank train`` and the demo's ranker stage)."""
    from recsys.training.ranker.module import RankerModule

    dm = instantiate(cfg.datamodule, _partial_=True)(table=table)
    net = instantiate(cfg.ranker, _partial_=True)(vocab_sizes=dm.table.vocab_sizes, dense_features=dm.table.dense)
    return dm, RankerModule(net, optimizer=instantiate(cfg.optimizer), input_names=net.input_names)
