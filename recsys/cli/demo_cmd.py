"""``recsys demo`` (what ``make demo`` runs): synthetic data -> fit every model
that exists (baselines, then a SASRec trained with Lightning) -> exact
full-ranking evaluation -> results table -> off-policy evaluation of a policy on
the world's logged impressions -> summary.json."""
from __future__ import annotations

import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from recsys.cli.common import data_lineage, format_table, load_data, write_summary
from recsys.utils.seed import seed_everything

TABLE = ["test/hr@10", "test/ndcg@10", "test/recall@20", "test/mrr", "test/coverage@10", "test/novelty@10"]


def _ope_stage(cfg: DictConfig) -> dict:
    """Run ``recsys ope`` for ``cfg.ope_policy`` with the policies and estimator
    settings of ``configs/ope.yaml`` on the demo's data."""
    from omegaconf import OmegaConf

    from recsys.cli.config import config_dir
    from recsys.cli.ope_cmd import evaluate_policy

    base = OmegaConf.load(config_dir() / "ope.yaml")
    merged = cfg.copy()
    OmegaConf.set_struct(merged, False)  # add the ope keys to the demo's config
    merged = OmegaConf.merge(merged, {"policy": cfg.ope_policy, "policies": base.policies, "ope": base.ope})
    return evaluate_policy(merged)


def demo(cfg: DictConfig) -> dict:
    from recsys.data.stats import dataset_stats
    from recsys.training.baselines import evaluate_split

    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    data, prep_s = load_data(cfg)
    stats = dataset_stats(data)
    print(f"[1/5] data '{data.name}': {stats['n_users']} users, {stats['n_items']} items, "
          f"{stats['n_interactions']} interactions (fingerprint {data.fingerprint[:12]}, {prep_s:.1f}s)")
    split = instantiate(cfg.split).split(data)
    print(f"[2/5] split: {split.info}")
    opts = instantiate(cfg.evaluation)
    results, timings = {}, {"prepare_s": prep_s}
    for name, model_cfg in cfg.models.items():
        res = evaluate_split(instantiate(model_cfg), data, split, opts)
        timings[name] = res.pop("timings")
        results[name] = res
        print(f"      {name:<12} test ndcg@10={res['test/ndcg@10']:.4f} ({sum(timings[name].values()):.1f}s)")
    if cfg.get("train_sequence_model", True):
        import pytorch_lightning as L

        from recsys.cli.train_cmd import fit_sequence_model

        L.seed_everything(cfg.seed, verbose=False)
        print(f"[3/5] training SASRec (Lightning, up to {cfg.trainer.max_epochs} epochs, early stopping on val/ndcg@10)")
        info = fit_sequence_model(cfg, data, split, Path(cfg.paths.output_dir))
        results["sasrec"] = info["metrics"]
        timings["sasrec"] = info["timings"]
        print(f"      sasrec       test ndcg@10={info['metrics']['test/ndcg@10']:.4f} "
              f"({info['timings']['fit_s']:.1f}s, {info['timings']['epochs']} epochs)")
    print("[4/5] results (exact full ranking, history excluded, leave-one-out test):")
    print(format_table(results, TABLE))
    ope_out = None
    if cfg.get("ope_policy"):
        print(f"[5/5] off-policy evaluation of '{cfg.ope_policy}' on the world's logged impressions:")
        ope_out = _ope_stage(cfg)
        timings["ope_s"] = ope_out["timings"]["total_s"]
    timings["total_s"] = time.perf_counter() - t0
    path = write_summary(cfg, {"command": "demo", "results": results, "data": data_lineage(data),
                               "data_stats": stats, "split": split.info, "timings": timings,
                               "ope": None if ope_out is None else {
                                   k: ope_out[k] for k in ("policy", "estimates", "true_value", "diagnostics")
                                   if k in ope_out}})
    print(f"summary: {path}")
    return results
