"""``recsys features build|bench|drift|skew`` and ``recsys data erase`` (no torch import)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import write_summary
from recsys.cli.erase_args import as_paths, erase_user_id
from recsys.utils.errors import DataError


def _events_frame(cfg: DictConfig):
    """The events (and items) a command reads: ``events=`` or the synthetic world."""
    import polars as pl

    if cfg.get("events"):  # cfg["items"]: ``cfg.items`` is DictConfig's own items() method
        return str(cfg.events), (str(cfg["items"]) if cfg.get("items") else None)
    world = instantiate(cfg.data.loader).load().extras["world"]
    return pl.from_arrow(world.events), pl.from_arrow(world.items).select("item_id", "category")


def build(cfg: DictConfig) -> dict[str, Any]:
    from recsys.features.build import build_features

    t0 = time.perf_counter()
    fs = instantiate(cfg.features)
    consent = None
    if cfg.get("consent"):
        from recsys.features.consent import read_consent_list

        consent = read_consent_list(str(cfg.consent), default=bool(cfg.consent_default))
    events, items = _events_frame(cfg)
    out = Path(str(cfg.out))
    manifest = build_features(events, items, fs, out, label=events if isinstance(events, str) else "<synthetic events>",
                              config=OmegaConf.to_container(cfg.features, resolve=True), as_of=cfg.as_of, ttl=cfg.ttl,
                              resolve=bool(cfg.resolve_identities), online_state=bool(cfg.online_state),
                              threads=cfg.get("threads"), consent=consent)
    rows, as_of = manifest["rows"], manifest["as_of"]
    if manifest.get("consent"):
        c = manifest["consent"]
        print(f"consent list {c['path']}: {c['rows_dropped']} events of {c['users_dropped']} users without consent "
              f"dropped")
    print(f"features {fs.version} as of {as_of:.0f}: " + ", ".join(f"{e} {n} rows" for e, n in rows.items())
          + f" -> {out}")
    path = write_summary(cfg, {"command": "features build", "feature_set": fs.version, "as_of": as_of,
                               "rows": rows, "out": str(out), "identity": manifest["identity"],
                               "consent": manifest.get("consent"),
                               "timings": {"total_s": time.perf_counter() - t0}})
    print(f"summary: {path}")
    return manifest


def bench(cfg: DictConfig) -> dict[str, Any]:
    from recsys.bench.features import run_bench, summary_line

    work = Path(cfg.paths.output_dir) / "bench_data"
    try:
        res = run_bench(instantiate(cfg.features), work, n_events=int(cfg.n_events), n_online=int(cfg.n_online),
                        micro_batch=int(cfg.micro_batch), n_reads=int(cfg.n_reads),
                        baseline_rows=cfg.baseline_rows, n_users=int(cfg.n_users), n_items=int(cfg.n_items),
                        seed=int(cfg.seed), read_every=int(cfg.get("read_every", 100)),
                        buffer_size=int(cfg.get("buffer_size", 1024)), threads=cfg.get("threads"))
    finally:
        if not cfg.keep_data:
            shutil.rmtree(work, ignore_errors=True)
    res.pop("batch_files", None)
    print(summary_line(res))
    path = write_summary(cfg, {"command": "features bench", **res})
    print(f"summary: {path}")
    return res


def drift(cfg: DictConfig) -> dict[str, Any]:
    from recsys.features.drift import drift_report, report_lines
    from recsys.features.store import read_parquet_frame

    res = drift_report(read_parquet_frame(str(cfg.reference)), read_parquet_frame(str(cfg.current)),
                       Path(cfg.paths.output_dir), OmegaConf.to_container(cfg.thresholds, resolve=True),
                       list(cfg.features) if cfg.get("features") else None,
                       labels=(str(cfg.reference), str(cfg.current)))
    print("\n".join(report_lines(res)))
    path = write_summary(cfg, {"command": "features drift", **res})
    print(f"summary: {path}")
    return res


def skew(cfg: DictConfig) -> dict[str, Any]:
    from recsys.features.events import scan_events
    from recsys.features.skew import read_params, report_lines, skew_report
    from recsys.features.store import read_parquet_frame

    fs = instantiate(cfg.features)
    logged = read_parquet_frame(str(cfg.logged))
    params = read_params(str(cfg.params)) if cfg.get("params") else None
    lf = scan_events(str(cfg.events), items=str(cfg["items"]) if cfg.get("items") else None)
    res = skew_report(logged, lf, fs, params, str(cfg.entity), rtol=float(cfg.rtol), atol=float(cfg.atol),
                      label=str(cfg.logged))
    for line in report_lines(res):
        print(line)
    path = write_summary(cfg, {"command": "features skew", **res})
    print(f"summary: {path}")
    return res


def erase(cfg: DictConfig) -> dict[str, Any]:
    from recsys.features.erasure import (Targets, add_external, add_traces, erase_user, report_lines, user_trace,
                                         verify_erased)

    user = erase_user_id(cfg)
    state_url = str(cfg.state_url) if cfg.get("state_url") else None
    targets = Targets(events=str(cfg.events), features_dir=cfg.get("features_dir"),
                      online_state=cfg.get("online_state"), runs=as_paths(cfg.get("run")),
                      indexes=as_paths(cfg.get("index_bundle")), cache_dir=cfg.get("cache_dir"),
                      items=str(cfg["items"]) if cfg.get("items") else None, identity=cfg.get("identity"),
                      decision_logs=as_paths(cfg.get("decision_logs")), ab_archives=as_paths(cfg.get("ab_archives")),
                      state_url=state_url, registry=cfg.get("model_registry"))
    verify = bool(cfg.get("verify", False))
    receipt = Path(str(cfg.receipt)) if cfg.get("receipt") else None
    if receipt is None and not verify:
        receipt = Path(str(cfg.paths.output_dir)) / "erasure_receipt.json"
    prefix, uri = str(cfg.state_prefix), cfg.get("model_registry_uri")
    trace = user_trace(user, targets, receipt if verify else None)
    if verify:
        res = verify_erased(user, targets, receipt)
        if state_url:
            from recsys.service.erase import scan_state

            add_traces(res, "state", scan_state(state_url, lambda v: trace.has("user_id", v),
                                                lambda v: trace.has("session_id", v), prefix))
        if targets.registry is not None:
            from recsys.lifecycle.erasure import list_retrain_due

            res["retrain_due"] = list_retrain_due(targets.registry, uri)
    else:
        res = erase_user(user, targets, receipt)
        if state_url:
            from recsys.service.erase import erase_state

            add_external(res, "state", erase_state(state_url, trace.user_ids, trace.session_ids, prefix))
        if targets.registry is not None:
            from recsys.lifecycle.erasure import flag_trained_on

            add_external(res, "registry", flag_trained_on(targets.registry, res["user_data"], trace, uri))
    for line in report_lines(res, verify=verify):
        print(line)
    path = write_summary(cfg, {"command": "data erase --verify" if verify else "data erase", **res})
    print(f"summary: {path}")
    if verify and not res["clean"]:
        first = (res["traces"] or res["cannot_change"])[0]
        raise DataError(first["path"], f"{len(res['traces'])} traces of user {user!r} remain, "
                                       f"{len(res['cannot_change'])} in copies this command cannot change "
                                       f"(first: column {first['column']})")
    return res
