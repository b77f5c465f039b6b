"""``recsys logs join``: the service's decision log + feedback -> one logged-feedback
Parquet file that ``recsys ope logs=<file>`` reads (rewards from feedback within
the attribution window)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from recsys.cli.common import write_summary


def join(cfg: DictConfig) -> dict:
    from recsys.service.join import join_logs

    out = Path(cfg.out) if cfg.get("out") else Path(cfg.paths.output_dir) / "ope_log.parquet"
    result = join_logs(cfg.logs, out, window_s=float(cfg.window_s), reward_event=str(cfg.reward_event),
                       slate_size=cfg.get("slate_size"), feedback_dir=cfg.get("feedback"))
    print(f"joined {result['requests']} decisions ({result['rows']} rows, slate size {result['slate_size']}; "
          f"{result['dropped_requests']} dropped: empty or another slate size), {result['clicks']} "
          f"{result['reward_event']} rewards within {result['window_s']:g} s -> {out}")
    print(f"summary: {write_summary(cfg, {'command': 'logs join', **result})}")
    return result
