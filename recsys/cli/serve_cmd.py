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
        uvicorn.run(create_app(scfg), host=str(cfg.host), port=int(cfg.port), log_level=str(cfg.log_level))
    else:  # each worker process builds its own app from the same config
        os.environ[CONFIG_ENV] = json.dumps(data)
        uvicorn.run("recsys.service.app:app_from_env", factory=True, host=str(cfg.host), port=int(cfg.port),
                    workers=workers, log_level=str(cfg.log_level))
    return info
