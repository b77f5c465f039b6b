"""``recsys serve simulate``: the synthetic world's users as traffic for the decision
service, judged by the world's true click model (recsys.bench.simulate) -> print ->
summary.json."""
from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from recsys.cli.common import load_data, write_summary
from recsys.utils.errors import RecsysError


def simulate(cfg: DictConfig) -> dict:
    """``recsys serve simulate``: per arm, the true online value of what the service serves."""
    from recsys.bench.simulate import simulate_service, simulate_traffic
    from recsys.data.synthetic_source import load_world
    from recsys.ope.served_policies import read_serving_config

    t0 = time.perf_counter()
    data, _ = load_data(cfg)
    world = load_world(data.extras_dir, data.extras)
    if world is None:
        raise RecsysError(f"data={data.name}: `recsys serve simulate` needs the synthetic world (data=synthetic)")
    out_dir = Path(cfg.paths.output_dir)
    kw = dict(k=cfg.k, channel=str(cfg.channel), seed=int(cfg.seed), post_events=bool(cfg.post_events),
              timeout_s=float(cfg.timeout_s))
    if cfg.url:
        res = simulate_traffic(str(cfg.url), world, int(cfg.n_requests), out_dir=out_dir, **kw)
    elif cfg.serve_config:
        res = simulate_service(read_serving_config(str(cfg.serve_config)), world, int(cfg.n_requests), out_dir, **kw)
    else:
        raise RecsysError("give url=<running service> or serve_config=<serve.yaml> (a service to start)")
    for arm, a in res["arms"].items():
        v, c = a["true_value"], a["clicks_per_slate"]
        print(f"arm {arm:<14} requests {a['requests']:>6}  true value {v['mean']:.4f} "
              f"[{v['ci_low']:.4f}, {v['ci_high']:.4f}]  sampled clicks/slate {c['mean']:.4f}  CTR {a['ctr']:.4f}  "
              f"levels {a['levels']}")
    print(f"{res['requests']} requests in {res['wall_s']:.1f}s ({res['requests_per_s']:.0f}/s); "
          f"{res['clicks_posted']} clicks posted")
    out = {"command": "serve simulate", **res, "timings": {"total_s": time.perf_counter() - t0}}
    print(f"summary: {write_summary(cfg, out)}")
    return out
