"""``recsys attribution``: channel credit of conversions by last-touch, first-touch,
linear, position-based, Markov removal effect and Shapley, scored against the truth
on the synthetic journeys (``journeys=<file>``: a user's file, no truth). How the
methods and the truth are defined: :mod:`recsys.evaluation.attribution`,
:mod:`recsys.data.journeys`."""
from __future__ import annotations

import time

from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import write_summary
from recsys.data.journeys import JourneyConfig, JourneyWorld, read_journeys
from recsys.evaluation.attribution import report, study
from recsys.utils.errors import RecsysError


def attribution(cfg: DictConfig) -> dict:
    t0 = time.perf_counter()
    if cfg.get("journeys"):
        samples = [read_journeys(cfg.journeys)]
    else:
        gen = OmegaConf.to_container(cfg.generator, resolve=True)
        assert isinstance(gen, dict)
        valid = set(JourneyConfig.__dataclass_fields__)
        unknown = sorted(set(gen) - valid)
        if unknown:
            raise RecsysError(f"unknown key generator.{unknown[0]} (valid: {', '.join(sorted(valid))})")
        gen = {k: (tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v)
               for k, v in gen.items()}
        if int(cfg.n_seeds) < 1:
            raise RecsysError(f"n_seeds={cfg.n_seeds}: expected >= 1")
        world = JourneyWorld(JourneyConfig(**gen))
        samples = [world.sample(int(cfg.seed) + i) for i in range(int(cfg.n_seeds))]
    out = {"command": "attribution", **study(samples), "journeys": cfg.get("journeys")}
    print(report(out))
    out["timings"] = {"total_s": time.perf_counter() - t0}
    print(f"summary: {write_summary(cfg, out)}")
    return out
