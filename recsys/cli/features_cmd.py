"""``recsys features build|bench|drift|skew`` and ``recsys data erase`` (no torch import)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import write_summary
from recsys.utils.errors import DataError


def _feature_set(cfg: DictConfig):
    return instantiate(cfg.features)


def _events_frame(cfg: DictConfig):
    """The events (and items) a command reads: ``events=`` or the synthetic world."""
    import polars as pl

    if cfg.get("events"):  # cfg["items"]: ``cfg.items`` is DictConfig's own items() method
        return str(cfg.events), (str(cfg["items"]) if cfg.get("items") else None)
    world = instantiate(cfg.data.loader).load().extras["world"]
    return pl.from_arrow(world.events), pl.from_arrow(world.items).select("item_id", "category")


def build(cfg: DictConfig) -> dict[str, Any]:
    import polars as pl

    from recsys.features import batch
    from recsys.features.identity import resolve_identities
    from recsys.features.online import OnlineFeatures
    from recsys.features.retention import apply_ttl
    from recsys.utils.io import write_json_atomic

    t0 = time.perf_counter()
    fs = _feature_set(cfg)
    events, items = _events_frame(cfg)
    label = events if isinstance(events, str) else "<synthetic events>"
    lf = batch.scan_events(events, items=items, name=label)
    identity = None
    if cfg.resolve_identities and isinstance(events, (str, pl.DataFrame)):
        raw = pl.read_parquet(events) if isinstance(events, str) else events
        if "device_id" in raw.columns and (raw["event_type"] == "login").any():
            resolved, identity = resolve_identities(raw)
            lf = batch.scan_events(resolved, items=items, name=label)
    info = batch.check_events(lf, label)
    as_of = float(cfg.as_of) if cfg.as_of is not None else float(info["t_max"]) + 1.0
    lf = apply_ttl(lf, as_of, cfg.ttl)
    frames, params = batch.snapshot_and_params(lf, fs, as_of, "fit", label=label)
    out = Path(str(cfg.out))
    files = batch.write_features(frames, out)
    # settings: everything `recsys data erase` needs to rebuild these very features
    settings = {"events": label, "items": str(Path(items).resolve()) if isinstance(items, str) else (
                    None if items is None else "<synthetic items>"),
                "resolve_identities": identity is not None, "ttl": cfg.ttl, "as_of": as_of,
                "as_of_given": cfg.as_of is not None, "params": "fit"}
    manifest = {"feature_set": fs.version, "as_of": as_of, "ttl": cfg.ttl, "params": params,
                "events": label, "settings": settings,
                "rows": {e: f.height for e, f in frames.items()}, "files": files,
                "definitions": fs.describe(), "identity": identity,
                "config": OmegaConf.to_container(cfg.features, resolve=True)}
    write_json_atomic(out / "manifest.json", manifest)
    if cfg.online_state:
        online = OnlineFeatures(fs, params)
        ordered = lf.filter(pl.col("timestamp") < as_of).sort("timestamp", maintain_order=True).collect()
        for s in range(0, ordered.height, 8192):
            online.update(ordered.slice(s, 8192))
        online.save(out / "online_state")
    rows = manifest["rows"]
    print(f"features {fs.version} as of {as_of:.0f}: " + ", ".join(f"{e} {n} rows" for e, n in rows.items())
          + f" -> {out}")
    path = write_summary(cfg, {"command": "features build", "feature_set": fs.version, "as_of": as_of,
                               "rows": rows, "out": str(out), "identity": identity,
                               "timings": {"total_s": time.perf_counter() - t0}})
    print(f"summary: {path}")
    return manifest


def bench(cfg: DictConfig) -> dict[str, Any]:
    from recsys.features.bench import run_bench

    fs = _feature_set(cfg)
    out = Path(cfg.paths.output_dir)
    work = out / "bench_data"
    try:
        res = run_bench(fs, work, n_events=int(cfg.n_events), n_online=int(cfg.n_online),
                        micro_batch=int(cfg.micro_batch), n_reads=int(cfg.n_reads),
                        baseline_rows=cfg.baseline_rows, n_users=int(cfg.n_users), n_items=int(cfg.n_items),
                        seed=int(cfg.seed), read_every=int(cfg.get("read_every", 100)),
                        buffer_size=int(cfg.get("buffer_size", 1024)))
    finally:
        if not cfg.keep_data:
            shutil.rmtree(work, ignore_errors=True)
    res.pop("batch_files", None)
    print(f"batch {res['batch_events_per_s']:,.0f} events/s vs pandas {res['baseline_events_per_s']:,.0f} "
          f"({res['batch_vs_baseline']:.1f}x); online {res['online_events_per_s']:,.0f} events/s, "
          f"(per-event API {res['online_per_event_api_events_per_s']:,.0f} events/s), read p99 "
          f"{res['online_read_p99_ms']:.3f} ms wall / {res['online_read_p99_cpu_ms']:.3f} ms CPU; "
          f"load avg {res['loadavg_before'][0]:.1f}")
    path = write_summary(cfg, {"command": "features bench", **res})
    print(f"summary: {path}")
    return res


def _read_parquet(path: str):
    from recsys.features.store import read_parquet_frame

    return read_parquet_frame(path)


def drift(cfg: DictConfig) -> dict[str, Any]:
    from recsys.features.drift import drift_report

    ref, cur = _read_parquet(str(cfg.reference)), _read_parquet(str(cfg.current))
    out = Path(cfg.paths.output_dir)
    res = drift_report(ref, cur, out, OmegaConf.to_container(cfg.thresholds, resolve=True),
                       list(cfg.features) if cfg.get("features") else None,
                       labels=(str(cfg.reference), str(cfg.current)))
    for name, r in res["features"].items():
        stat = f"KS {r['ks']:.3f}" if r["kind"] == "numeric" else f"chi2 p {r['chi2_pvalue']:.2g}"
        print(f"{'DRIFT' if r['drift'] else 'ok   '} {name:<32} PSI {r['psi']:.3f}  {stat}")
    print(f"{res['n_drifted']} of {res['n_features']} features drifted")
    path = write_summary(cfg, {"command": "features drift", **res})
    print(f"summary: {path}")
    return res


def skew(cfg: DictConfig) -> dict[str, Any]:
    from recsys.features import batch
    from recsys.features.skew import skew_report

    fs = _feature_set(cfg)
    logged = _read_parquet(str(cfg.logged))
    params = None
    if cfg.get("params"):
        p = Path(str(cfg.params))
        if not p.is_file():
            raise DataError(p, "no such file")
        manifest = json.loads(p.read_text())
        params = manifest.get("params", manifest)
    lf = batch.scan_events(str(cfg.events), items=str(cfg["items"]) if cfg.get("items") else None)
    res = skew_report(logged, lf, fs, params, str(cfg.entity), rtol=float(cfg.rtol), atol=float(cfg.atol),
                      label=str(cfg.logged))
    for name, r in res["features"].items():
        print(f"{'SKEW ' if r['mismatches'] else 'ok   '} {name:<32} {r['mismatches']}/{r['rows']} mismatched, "
              f"max |diff| {r['max_abs_diff']:.3g}")
    path = write_summary(cfg, {"command": "features skew", **res})
    print(f"summary: {path}")
    return res


def _paths(value: Any) -> list[str]:
    """A path or a list of paths from a config value (``run=a`` or ``run=[a,b]``)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return [str(v) for v in value]
    return [str(value)]


def _override_text(key: str) -> str | None:
    """The text of ``key=...`` as typed on the command line (None outside Hydra or when not given)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - not running under Hydra (library call, tests)
        return None
    for o in overrides:
        if o.lstrip("+~").startswith(key + "="):
            return o.split("=", 1)[1]
    return None


def erase_user_id(cfg: DictConfig) -> str:
    """The user id exactly as typed: a string, never a number. Hydra reads
    ``user_id=1_0`` as the int 10 and ``user_id=1e3`` as 1000.0; an id that the
    parser changed is refused (one line, exit 2) instead of erasing someone else."""
    value = cfg.get("user_id")
    if value is None or value == "":
        raise DataError(None, "user_id= is required (the id as it appears in the events' user_id column)")
    text = _override_text("user_id")
    if text is not None:
        typed = text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text
        if typed != str(value) or not isinstance(value, str):
            raise DataError(None, f"user_id={text} was read as {value!r} ({type(value).__name__}), not the id "
                                  f"as typed: quote it, e.g. user_id=\"'{typed}'\" (nothing erased)")
    if not isinstance(value, str):  # from a config file: ids are strings, refuse a parsed number
        raise DataError(None, f"user_id {value!r} is a {type(value).__name__}: user ids are strings, quote it")
    return value


def erase(cfg: DictConfig) -> dict[str, Any]:
    from recsys.features.erasure import Targets, erase_user, report_lines, verify_erased

    user = erase_user_id(cfg)
    targets = Targets(events=str(cfg.events), features_dir=cfg.get("features_dir"),
                      online_state=cfg.get("online_state"), runs=_paths(cfg.get("run")),
                      indexes=_paths(cfg.get("index_bundle")), cache_dir=cfg.get("cache_dir"),
                      items=str(cfg["items"]) if cfg.get("items") else None)
    verify = bool(cfg.get("verify", False))
    res = verify_erased(user, targets) if verify else erase_user(user, targets)
    for line in report_lines(res, verify=verify):
        print(line)
    path = write_summary(cfg, {"command": "data erase --verify" if verify else "data erase", **res})
    print(f"summary: {path}")
    if verify and res["traces"]:
        first = res["traces"][0]
        raise DataError(first["path"], f"{len(res['traces'])} traces of user {user!r} remain "
                                       f"(first: column {first['column']})")
    return res


def find_user(user: str, paths: list[str]) -> list[str]:
    """``file:column`` for every file under ``paths`` that still holds ``user``
    (user columns of Parquet files, ``*user*.npy`` id arrays)."""
    from recsys.features.erasure import Trace, scan

    return [f"{h['path']}:{h['column']}" for h in scan([Path(p) for p in paths], Trace({str(user)}))]
