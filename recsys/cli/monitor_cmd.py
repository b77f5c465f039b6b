"""``recsys monitor``: alerts on sudden drops and rises of CTR, conversion, latency p99,
fallback and error rate, from the service's logs (``logs=``) and/or its ``/metrics``
scraped over loopback (``metrics_url=``). Detection: :mod:`recsys.evaluation.anomaly`;
reading the service's logs and metrics: :mod:`recsys.service.monitor`."""
from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import write_summary
from recsys.evaluation.anomaly import DetectorOptions, detect_all
from recsys.service.monitor import metric_series, read_log_series, scrape, write_alerts
from recsys.utils.errors import RecsysError


def monitor(cfg: DictConfig) -> dict:
    t0 = time.perf_counter()
    if not cfg.get("logs") and not cfg.get("metrics_url"):
        raise RecsysError("recsys monitor needs logs=<joined log file or decision log folder> and/or "
                          "metrics_url=http://127.0.0.1:<port>/metrics")
    det = OmegaConf.to_container(cfg.detector, resolve=True)
    assert isinstance(det, dict)
    unknown = sorted(set(det) - set(DetectorOptions.__dataclass_fields__))
    if unknown:
        raise RecsysError(f"unknown key detector.{unknown[0]} (valid: {', '.join(DetectorOptions.__dataclass_fields__)})")
    try:
        opts = DetectorOptions(**det)
    except ValueError as e:
        raise RecsysError(str(e)) from None
    directions = dict(cfg.get("directions") or {})
    levels = list(cfg.primary_levels)
    alerts, sources = [], {}
    if cfg.get("logs"):
        series = read_log_series(cfg.logs, float(cfg.window_s), levels, str(cfg.click_event), str(cfg.conversion_event))
        alerts += detect_all(series, opts, directions, source=f"logs:{cfg.logs}")
        sources["logs"] = {"path": str(cfg.logs), "windows": len(series[0].times) if series else 0,
                           "metrics": [s.metric for s in series]}
    if cfg.get("metrics_url"):
        snaps = scrape(str(cfg.metrics_url), int(cfg.scrape.n), float(cfg.scrape.interval_s),
                       primary_levels=levels)
        series = metric_series(snaps)
        alerts += detect_all(series, opts, directions, source=f"metrics:{cfg.metrics_url}")
        sources["metrics"] = {"url": str(cfg.metrics_url), "scrapes": len(snaps),
                              "metrics": [s.metric for s in series]}
    out_path = Path(cfg.out) if cfg.get("out") else Path(cfg.paths.output_dir) / "alerts.jsonl"
    write_alerts(out_path, alerts)
    for a in alerts:
        print(f"ALERT {a.severity:8s} {a.metric:15s} {a.direction} at t={a.time:.0f} (detected {a.detected_time:.0f}, "
              f"{a.detector}): {a.value:.4g} vs baseline {a.baseline:.4g}, z={a.score:.1f}  [{a.source}]")
    print(f"{len(alerts)} alert(s) -> {out_path}")
    out = {"command": "monitor", "alerts": len(alerts), "alerts_path": str(out_path), "sources": sources,
           "by_metric": {m: sum(a.metric == m for a in alerts) for m in sorted({a.metric for a in alerts})},
           "timings": {"total_s": time.perf_counter() - t0}}
    print(f"summary: {write_summary(cfg, out)}")
    return out
