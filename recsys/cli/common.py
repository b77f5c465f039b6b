"""Helpers shared by the commands: build data from config, write summaries."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.data.prepare import PreparedData, prepare
from recsys.utils.io import write_json_atomic
from recsys.utils.lineage import environment


def load_data(cfg: DictConfig) -> tuple[PreparedData, float]:
    """Instantiate ``cfg.data.loader`` and prepare (or reuse the cache)."""
    t0 = time.perf_counter()
    loader = instantiate(cfg.data.loader)
    events = list(cfg.data.event_types) if cfg.data.get("event_types") else None
    data = prepare(loader, cfg.paths.cache_dir, cfg.data.name, event_types=events,
                   min_value=cfg.data.get("min_value"))
    return data, time.perf_counter() - t0


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


def format_table(rows: dict[str, dict[str, float]], columns: list[str], label: str = "model") -> str:
    """A plain-text table: one row per model, one column per metric."""
    name_w = max([len(label), *(len(r) for r in rows)])
    head = f"{label:<{name_w}}  " + "  ".join(f"{c:>12}" for c in columns)
    lines = [head, "-" * len(head)]
    for name, vals in rows.items():
        cells = "  ".join(f"{vals.get(c, float('nan')):>12.4f}" for c in columns)
        lines.append(f"{name:<{name_w}}  {cells}")
    return "\n".join(lines)
