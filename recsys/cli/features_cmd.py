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

    if cfg.get("events"):
        return str(cfg.events), (str(cfg.items) if cfg.get("items") else None)
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
    manifest = {"feature_set": fs.version, "as_of": as_of, "ttl": cfg.ttl, "params": params,
                "events": label, "rows": {e: f.height for e, f in frames.items()}, "files": files,
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
    lf = batch.scan_events(str(cfg.events), items=str(cfg.items) if cfg.get("items") else None)
    res = skew_report(logged, lf, fs, params, str(cfg.entity), rtol=float(cfg.rtol), atol=float(cfg.atol),
                      label=str(cfg.logged))
    for name, r in res["features"].items():
        print(f"{'SKEW ' if r['mismatches'] else 'ok   '} {name:<32} {r['mismatches']}/{r['rows']} mismatched, "
              f"max |diff| {r['max_abs_diff']:.3g}")
    path = write_summary(cfg, {"command": "features skew", **res})
    print(f"summary: {path}")
    return res


def erase(cfg: DictConfig) -> dict[str, Any]:
    from recsys.features import batch
    from recsys.features.online import OnlineFeatures
    from recsys.features.retention import erase_user_events
    from recsys.utils.io import write_json_atomic

    user = str(cfg.user_id)
    fs = _feature_set(cfg)
    res: dict[str, Any] = {"user_id": user, **erase_user_events(str(cfg.events), user)}
    lf = batch.scan_events(str(cfg.events))
    if cfg.get("features_dir"):
        fdir = Path(str(cfg.features_dir))
        mpath = fdir / "manifest.json"
        if not mpath.is_file():
            raise DataError(mpath, "no such file (features_dir= must be a `features build` output folder)")
        manifest = json.loads(mpath.read_text())
        frames, params = batch.snapshot_and_params(lf, fs, float(manifest["as_of"]), "fit")
        batch.write_features(frames, fdir)
        manifest.update(params=params, rows={e: f.height for e, f in frames.items()}, erased=True)
        write_json_atomic(mpath, manifest)
        res["features_rebuilt"] = manifest["rows"]
    if cfg.get("online_state"):
        sdir = Path(str(cfg.online_state))
        old = OnlineFeatures.load(sdir, fs)
        online = OnlineFeatures(fs, old.params)
        ordered = lf.sort("timestamp", maintain_order=True).collect()
        for s in range(0, ordered.height, 8192):
            online.update(ordered.slice(s, 8192))
        online.save(sdir)
        res["online_state_rebuilt"] = {e: len(t) for e, t in online.tables.items()}
    res["remaining"] = find_user(user, [str(cfg.events), *( [str(cfg.features_dir)] if cfg.get("features_dir") else []),
                                        *([str(cfg.online_state)] if cfg.get("online_state") else [])])
    if res["remaining"]:
        raise DataError(res["remaining"][0], f"user {user!r} still present after erasure")
    print(f"erased user {user!r}: {res['events_removed']} events removed; nothing of the user remains")
    path = write_summary(cfg, {"command": "data erase", **res})
    print(f"summary: {path}")
    return res


def find_user(user: str, paths: list[str]) -> list[str]:
    """``file:column`` for every Parquet file under ``paths`` whose user columns
    (``user_id``, ``raw_user_id``; entity keys and state tables use these names)
    still hold ``user``."""
    import polars as pl

    hits = []
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
    for f in files:
        df = pl.read_parquet(f)
        for c, dt in df.schema.items():
            if c in ("user_id", "raw_user_id") and (df[c].cast(pl.String) == user).any():
                hits.append(f"{f}:{c}")
    return hits
