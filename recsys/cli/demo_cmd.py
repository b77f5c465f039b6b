"""``recsys demo`` (what ``make demo`` runs): synthetic data -> fit every model
that exists (baselines, then a SASRec trained with Lightning) -> exact
full-ranking evaluation -> results table -> off-policy evaluation of a policy on
the world's logged impressions -> the ranker of ``configs/rank_train.yaml``
exported -> an HNSW index over the SASRec items -> the decision service on those
bundles, asked over HTTP -> summary.json."""
from __future__ import annotations

import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import build_sequence_model, build_trainer, data_lineage, format_table, load_data, write_summary
from recsys.utils.seed import seed_everything

TABLE = ["test/hr@10", "test/ndcg@10", "test/recall@20", "test/mrr", "test/coverage@10", "test/novelty@10"]


def _ope_stage(cfg: DictConfig) -> dict:
    """Estimate ``cfg.ope_policy`` (``configs/policy/<name>.yaml``) on the world's logged
    impressions with the estimator and warm-up settings of ``configs/ope.yaml``; print its table."""
    from omegaconf import OmegaConf

    from recsys.cli.config import config_dir
    from recsys.data.synthetic_source import load_world
    from recsys.evaluation.ope_report import policy_report
    from recsys.ope import EstimatorOptions, build_policy, build_setup, evaluate_policy
    from recsys.utils.errors import RecsysError

    t0 = time.perf_counter()
    policy = config_dir() / "policy" / f"{cfg.ope_policy}.yaml"
    if not policy.is_file():
        raise RecsysError(f"unknown ope_policy {cfg.ope_policy!r}; choose one of "
                          f"{sorted(p.stem for p in policy.parent.glob('*.yaml'))}")
    base = OmegaConf.load(config_dir() / "ope.yaml")
    data, _ = load_data(cfg)
    s = build_setup(data, instantiate(cfg.split).split(data), load_world(data.extras_dir, data.extras))
    pol, info = build_policy(s, instantiate(OmegaConf.load(policy)), cfg.seed, base.warmup.n_requests,
                             base.warmup.batch_size)
    out = evaluate_policy(s, pol, {"policy": cfg.ope_policy, **info}, EstimatorOptions(**{**base.ope, **cfg.get("ope_options", {})}), cfg.seed,
                          Path(cfg.paths.output_dir) / "ope.png")
    print(policy_report(out))
    out["timings"]["total_s"] = time.perf_counter() - t0
    return out


def demo(cfg: DictConfig) -> dict:
    from recsys.cli.demo_stages import loop_stage, ranker_stage, retrieval_stage, service_stage
    from recsys.data.stats import dataset_stats
    from recsys.training.baselines import evaluate_split

    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    out = Path(cfg.paths.output_dir)
    with_ranker = bool(cfg.get("ranker_stage", True)) and cfg.get("data", {}).get("name") == "synthetic"
    with_index = bool(cfg.get("retrieval_stage", True)) and bool(cfg.get("train_sequence_model", True))
    with_service = with_ranker and with_index and bool(cfg.get("service_stage", True))
    loop = cfg.get("loop_stage") or {}
    with_loop = with_service and bool(loop.get("enabled", False))
    N = 5 + int(with_ranker) + int(with_index) + int(with_service) + int(with_loop)  # noqa: N806 - the stage count in the progress lines
    data, prep_s = load_data(cfg)
    stats = dataset_stats(data)
    print(f"[1/{N}] data '{data.name}': {stats['n_users']} users, {stats['n_items']} items, "
          f"{stats['n_interactions']} interactions (fingerprint {data.fingerprint[:12]}, {prep_s:.1f}s)")
    split = instantiate(cfg.split).split(data)
    print(f"[2/{N}] split: {split.info}")
    opts = instantiate(cfg.evaluation)
    results, timings = {}, {"prepare_s": prep_s}
    for name, model_cfg in cfg.models.items():
        res = evaluate_split(instantiate(model_cfg), data, split, opts)
        timings[name] = res.pop("timings")
        results[name] = res
        print(f"      {name:<12} test ndcg@10={res['test/ndcg@10']:.4f} ({sum(timings[name].values()):.1f}s)")
    if cfg.get("train_sequence_model", True):  # the groups and the fit of `recsys train`
        import pytorch_lightning as L

        from recsys.training.sequence.fit import fit

        L.seed_everything(cfg.seed, verbose=False)
        print(f"[3/{N}] training SASRec (Lightning, up to {cfg.trainer.max_epochs} epochs, early stopping on val/ndcg@10)")
        dm, module = build_sequence_model(cfg, data, split)
        info = fit(build_trainer(cfg, out), module, dm, data, split, out,
                   net_args=OmegaConf.to_container(cfg.net, resolve=True))
        results["sasrec"], timings["sasrec"] = info["metrics"], info["timings"]
        print(f"      sasrec       test ndcg@10={info['metrics']['test/ndcg@10']:.4f} "
              f"({info['timings']['fit_s']:.1f}s, {info['timings']['epochs']} epochs)")
    print(f"[4/{N}] results (exact full ranking, history excluded, leave-one-out test):")
    print(format_table(results, TABLE))
    ope_out = None
    if cfg.get("ope_policy"):
        print(f"[5/{N}] off-policy evaluation of '{cfg.ope_policy}' on the world's logged impressions:")
        ope_out = _ope_stage(cfg)
        timings["ope_s"] = ope_out["timings"]["total_s"]
    ranker_out = index_out = None
    if with_ranker:
        ranker_out = ranker_stage(cfg, data, split, out, f"[6/{N}]")
        timings["ranker_s"] = ranker_out["total_s"]
    if with_index:
        index_out = retrieval_stage(out, f"[{N - int(with_service) - int(with_loop)}/{N}]")
        timings["retrieval_s"] = index_out["total_s"]
    service_out = None
    if with_service:
        service_out = service_stage(out, data, f"[{N - int(with_loop)}/{N}]")
        timings["service_s"] = service_out["total_s"]
    loop_out = None
    if with_loop:
        loop_out = loop_stage(out, data, f"[{N}/{N}]", int(loop.n_explore), int(loop.n_canary), int(loop.n_bootstrap))
        timings["loop_s"] = loop_out["total_s"]
    timings["total_s"] = time.perf_counter() - t0
    path = write_summary(cfg, {"command": "demo", "results": results, "ranker_export": ranker_out,
                               "retrieval": index_out, "service": service_out, "online_loop": loop_out, "data": data_lineage(data), "data_stats": stats,
                               "split": split.info, "timings": timings,
                               "ope": None if ope_out is None else {
                                   k: ope_out[k] for k in ("policy", "estimates", "true_value", "diagnostics")
                                   if k in ope_out}})
    print(f"summary: {path}")
    return results
