"""``recsys rank train``: impression features -> time split -> ranker (DCN-v2 /
MLP) with Lightning -> best checkpoint -> val/test AUC, log loss, ECE, a
reliability diagram and NDCG of the re-ranked slates -> run directory
(checkpoints/, model/, summary.json, reliability.png). The training itself is
:func:`recsys.training.ranker.fit.fit`.

Two sources of rows:

* the synthetic world's logged impressions (``data=synthetic``): also the
  Bayes-optimal AUC of the same test rows (true click probabilities), a
  position x popularity baseline, and slate NDCG of the model's order vs the
  logged order vs the Bayes-optimal order (true relevance);
* explicit ratings (``data=ml100k``): rating >= threshold is positive, lower
  ratings (shown, not liked) and sampled unrated items negative
  (:func:`recsys.features.ranker.build_rating_features`); NDCG of each test
  user's re-ranked candidate list; no ground truth, so ``bayes_auc`` is null."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import build_ranker, build_trainer, data_lineage, format_table, load_data, write_summary
from recsys.utils.errors import RecsysError

TABLE = ["test/auc", "test/log_loss", "test/ece", "bayes_auc", "baseline_auc"]
SYNTHETIC_ONLY_LOADER_KEYS = ("n_requests",)  # rank_train.yaml sizes the impression log; other loaders lack it


def feature_table(cfg: DictConfig, data: Any, world: Any) -> Any:
    """The synthetic world's impressions (plus point-in-time behavioural features when
    ``cfg.behavioural_features``), else rating events of ``data`` with sampled negatives."""
    from recsys.features import ranker as rf

    if world is not None:
        table = rf.build_ranker_features(world)
        if cfg.get("behavioural_features"):  # point-in-time clickstream features of recsys.features
            bf = cfg.behavioural_features
            table = rf.add_behavioural_features(table, world, feature_set=OmegaConf.to_container(bf, resolve=True)
                                                if not isinstance(bf, bool) else None)
        return table
    if "value" not in data.interactions.column_names or data.interactions.column("value").null_count \
            == data.interactions.num_rows:
        raise RecsysError(f"rank train needs an impression log (data=synthetic) or explicit ratings "
                          f"(e.g. data=ml100k); data={cfg.data.name} has neither")
    ratings = OmegaConf.to_container(cfg.ratings, resolve=True)
    return rf.build_rating_features(data, threshold=float(ratings["threshold"]),
                                    negatives_per_event=int(ratings["negatives_per_event"]), seed=cfg.seed)


def train(cfg: DictConfig) -> dict:
    import pytorch_lightning as L

    from recsys.data.synthetic_source import load_world
    from recsys.evaluation.calibration import reliability_plot
    from recsys.training.ranker.fit import fit, test_report

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(cfg.paths.output_dir)
    t0 = time.perf_counter()
    if "SyntheticLoader" not in str(cfg.data.loader.get("_target_", "")):
        OmegaConf.set_struct(cfg, False)
        for key in SYNTHETIC_ONLY_LOADER_KEYS:
            cfg.data.loader.pop(key, None)
    data, prep_s = load_data(cfg)
    world = load_world(data.extras_dir, data.extras)
    dm, module = build_ranker(cfg, feature_table(cfg, data, world))
    info = fit(build_trainer(cfg, out), module, dm, out, model_args=OmegaConf.to_container(cfg.ranker, resolve=True),
               resume=cfg.get("resume"), parity_rows=int(cfg.parity_rows))
    results: dict[str, Any] = info["metrics"]
    ndcg_k = int(cfg.ndcg_k.slate if world is not None else cfg.ndcg_k.user)
    results.update(test_report(module.net, dm, results["test/auc"], ndcg_k, world))
    results["reliability"] = reliability_plot(dm.split_table("test").label, info["predictions"],
                                              out / "reliability.png", title=f"{type(module.net).__name__} test",
                                              ece=results["test/ece"])
    if info["rank"] != 0:
        return results
    artifacts = {**info["artifacts"], "reliability_plot": str(out / "reliability.png")}
    timings = {"prepare_s": prep_s, **info["timings"], "total_s": time.perf_counter() - t0}
    print(format_table({info["model"]: {k: (np.nan if v is None else v) for k, v in results.items()}},
                       TABLE + sorted(k for k in results if k.startswith("test/slate_ndcg"))))
    path = write_summary(cfg, {"command": "rank train", "model": info["model"], **results,
                               "best_checkpoint": info["best_checkpoint"], "artifacts": artifacts,
                               "data": data_lineage(data), "split": dm.info(), "resumed_from": info["resumed_from"],
                               "n_parameters": sum(p.numel() for p in module.net.parameters()), "timings": timings})
    print(f"summary: {path}")
    return results
