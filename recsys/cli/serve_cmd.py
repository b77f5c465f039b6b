"""``recsys serve``: the HTTP decision service (FastAPI on uvicorn) over the bundles
``configs/serve.yaml`` names. Compose -> check the serving config and load the
bundle set (pairing checks; a mismatched set stops here with one line) -> run."""
from __future__ import annotations

import json
import os

from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import write_summary
from recsys.utils.errors import RecsysError

CONFIG_ENV = "RECSYS_SERVE_CONFIG"


def serve(cfg: DictConfig) -> dict:
    from recsys.service.app import create_app
    from recsys.service.bundles import load_bundle_set
    from recsys.service.config import serve_config

    data = OmegaConf.to_container(cfg.serve, resolve=True)
    scfg = serve_config(data)
    workers = int(cfg.workers)
    if workers > 1 and scfg.state != "redis":
        raise RecsysError(f"workers={workers} needs serve.state=redis (caps, consent and online state must be "
                          f"shared by every worker)")
    bundles = load_bundle_set(scfg.bundles)  # refuse a bad set before binding the port
    info = {"command": "serve", "host": cfg.host, "port": int(cfg.port), "workers": workers,
            "versions": bundles.versions, "state": scfg.state, "decision_log": scfg.decision_log.directory}
    print(f"summary: {write_summary(cfg, info)}")
    print(f"bundles: {json.dumps(bundles.versions)}; state: {scfg.state}; decision log: "
          f"{scfg.decision_log.directory}")
    if cfg.dry_run:
        return info
    import uvicorn

    print(f"serving on http://{cfg.host}:{cfg.port} (API: /openapi.json, docs: /docs, metrics: /metrics)")
    if workers == 1:
        uvicorn.run(create_app(scfg), host=str(cfg.host), port=int(cfg.port), log_level=str(cfg.log_level),
                    access_log=bool(cfg.access_log))
    else:  # each worker process builds its own app from the same config
        os.environ[CONFIG_ENV] = json.dumps(data)
        uvicorn.run("recsys.service.app:app_from_env", factory=True, host=str(cfg.host), port=int(cfg.port),
                    workers=workers, log_level=str(cfg.log_level), access_log=bool(cfg.access_log))
    return info


def _flat(prefix: str, node: object) -> list[str]:
    """Hydra overrides ``prefix.key=value`` for every leaf of a nested mapping."""
    if isinstance(node, dict):
        return [o for k, v in node.items() for o in _flat(f"{prefix}.{k}", v)]
    return [f"{prefix}={json.dumps(node) if isinstance(node, (list, bool)) or node is None else node}"]


def bench(cfg: DictConfig) -> dict:
    """``recsys serve bench``: open-loop load on ``recsys serve`` (recsys.bench.serve)."""
    import sys
    from pathlib import Path

    from hydra import compose

    from recsys.bench.serve import BenchPlan, FixtureSpec, fixtures, given_bundles, report_lines, run_bench

    out = Path(cfg.paths.output_dir)
    plan = BenchPlan(**OmegaConf.to_container(cfg.load, resolve=True))
    bundles = given_bundles(**OmegaConf.to_container(cfg.bundles, resolve=True))  # a named path that is missing stops here
    if bundles is None:
        spec = FixtureSpec(**OmegaConf.to_container(cfg.fixtures, resolve=True))
        bundles = fixtures(spec, out, Path(cfg.paths.cache_dir) if cfg.cache else None)
    overrides = [f"serve.bundles.{k}={bundles[k]}" for k in ("index", "ranker", "catalogue", "users") if bundles[k]]
    overrides += _flat("serve", OmegaConf.to_container(cfg.serve, resolve=True)) + list(cfg.serve_overrides)
    try:  # the service's own config, composed the way `recsys serve` composes it, for the in-process pipeline
        scfg = compose("serve", overrides=[*overrides, f"serve.decision_log.directory={out / 'inprocess_log'}"])
    except Exception as e:  # hydra's override / composition errors
        raise RecsysError(f"serve / serve_overrides: {str(e).splitlines()[0]}") from None
    res = run_bench(plan, bundles, overrides, OmegaConf.to_container(scfg.serve, resolve=True), out,
                    redis_url=cfg.redis_url)
    print("\n".join(report_lines(res)))
    argv = " ".join(["recsys", "serve", "bench", *sys.argv[1:]])
    path = write_summary(cfg, {"command": "serve bench", "argv": argv, **res})
    print(f"summary: {path}")
    return res
