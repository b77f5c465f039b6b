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


def _ranker_stage(cfg: DictConfig, data, split, out: Path, stage: str) -> dict:
    """A small DCN-v2 on the demo world's impressions -> ``ranker.onnx`` bundle
    (and the demo SASRec as a query-encoder bundle) in ``<run>/export/`` ->
    scored through the torch-free runtimes: parity, p50 latency, version pairing."""
    import numpy as np
    import pytorch_lightning as L
    import torch

    from recsys.cli.rank_cmd import save_parity_rows
    from recsys.data.synthetic_source import load_world
    from recsys.evaluation.binary import roc_auc
    from recsys.export.bench import make_request, time_calls
    from recsys.export.onnx_ranker import export_ranker, rebuild_net, torch_scores
    from recsys.models.rankers import DCNv2
    from recsys.serving.ranker import RankerRuntime
    from recsys.artifacts.models import save_model, seal_model_dir
    from recsys.training.ranker_data import RankerDataModule
    from recsys.training.ranker_metrics import slate_ndcg
    from recsys.training.ranker_module import RankerModule
    from recsys.utils.io import write_json_atomic

    t0 = time.perf_counter()
    world = load_world(data.extras_dir, data.extras)
    info: dict = {}
    print(f"{stage} ranker: DCN-v2 on the world's {world.impressions.num_rows} logged impressions -> ONNX -> runtime")
    L.seed_everything(cfg.seed, verbose=False)
    from recsys.features.ranker import add_behavioural_features, build_ranker_features

    t_feat = time.perf_counter()
    table = build_ranker_features(world)
    n_base = len(table.dense)
    table = add_behavioural_features(table, world)  # clickstream features as of each request (point in time)
    info["behavioural_features"] = {"n": len(table.dense) - n_base, "version": table.version,
                                    "build_s": time.perf_counter() - t_feat}
    print(f"      features: {len(table.dense) - n_base} behavioural features joined as of each request's time "
          f"({info['behavioural_features']['build_s']:.1f}s, version {table.version})")
    dm = RankerDataModule(table=table, batch_size=1024, val_fraction=0.1, test_fraction=0.2, seed=cfg.seed)
    args = {"embedding_dim": 8, "n_cross": 2, "deep": [64, 32], "structure": "stacked"}
    net = DCNv2(dm.table.vocab_sizes, dm.table.dense, **args)
    module = RankerModule(net, input_names=net.input_names, optimizer=lambda params: torch.optim.Adam(params, lr=3e-3))
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    test = dm.split_table("test")
    f = test.features
    bayes = roc_auc(test.label, world.click_probability(f["user"], f["item"], f["position"]))
    info.update(test_auc=module.results["test"]["test/auc"], bayes_auc=bayes, train_s=time.perf_counter() - t0)
    rank_run = out / "ranker_run"
    save_model(net, {**args, "vocab_sizes": dm.table.vocab_sizes, "dense_features": dm.table.dense}, rank_run / "model")
    write_json_atomic(rank_run / "model" / "features.json", {
        "feature_set_version": dm.table.version, "inputs": net.input_names, "categorical": list(dm.table.vocab_sizes),
        "dense": dm.table.dense, "vocab_sizes": dm.table.vocab_sizes})
    save_parity_rows(test, 2000, rank_run / "model" / "parity_rows.safetensors")
    seal_model_dir(rank_run / "model")
    write_json_atomic(rank_run / "summary.json", {"data": {"fingerprint": data.fingerprint},
                                                  "test/auc": info["test_auc"], "bayes_auc": bayes})
    encoder = None
    if (out / "model" / "model_args.json").is_file():  # the SASRec of stage 3 as a query encoder
        from recsys.export.onnx_encoder import export_query_encoder
        from recsys.serving.encoder import QueryEncoderRuntime

        t1 = time.perf_counter()
        m = export_query_encoder(out, out / "export" / "query_encoder", split.test.history, name="demo_query",
                                 lengths=(5, 17, 50), data_fingerprint=data.fingerprint,
                                 # the issue's 1,000-user parity floor; tiny demo worlds check every user
                                 min_users=min(1000, len(split.test.users)),
                                 history_source="demo test-split histories")
        encoder = QueryEncoderRuntime(out / "export" / "query_encoder")
        hist = np.stack([np.pad(h[-30:], (30 - len(h[-30:]), 0)) for h in
                         (split.test.history.row(r) for r in range(64))])
        ms = time_calls(lambda x: encoder.top_k(x, k=10), [hist[i:i + 1] for i in range(64)] * 4)
        p = m["parity"]
        info["query_encoder"] = {"max_abs_diff": p["max_abs_diff"], "min_topk_agreement": p["min_topk_agreement"],
                                 "lengths": p["lengths"], "top10_p50_ms": float(np.median(ms)),
                                 "export_s": time.perf_counter() - t1, "embedding_version": m["embedding_version"]}
        print(f"      query encoder: SASRec -> query_encoder.onnx, {p['users']} users at lengths {p['lengths']}: "
              f"max |torch - onnx| {p['max_abs_diff']:.2g}, top-10 identical for {p['min_topk_agreement']:.2%}; "
              f"top-10 of {encoder.n_items} items p50 {np.median(ms):.3f} ms")
    bundle = out / "export" / "ranker"
    m = export_ranker(rank_run, bundle, name="demo_ranker", min_rows=1000,
                      compatible_embedding_versions=[encoder.embedding_version] if encoder else [])
    rt = RankerRuntime(bundle, feature_set_version=dm.table.version, retrieval_bundle=encoder)
    rows = {k: f[k] for k in rt.inputs}
    one = np.flatnonzero(test.request_id == test.request_id[0])  # one logged slate, re-ranked by the runtime
    logits = rt.score({k: v[one] for k, v in rows.items()})
    want = torch_scores(rebuild_net(rank_run / "model")[0], {k: v[one] for k, v in rows.items()})
    rng = np.random.default_rng(cfg.seed)
    reqs = [make_request({k: v[:2000] for k, v in rows.items()}, 100, rng) for _ in range(300)]
    ms = time_calls(rt.score, reqs)
    ndcg = slate_ndcg(test.request_id, test.label, module.predictions["test"], 5)["ndcg"]
    info.update(parity_max_abs_diff=m["parity"]["max_abs_diff"], request_max_abs_diff=float(np.abs(logits - want).max()),
                p50_ms_100_candidates=float(np.median(ms)), slate_ndcg5=ndcg, total_s=time.perf_counter() - t0)
    print(f"      ranker: test AUC {info['test_auc']:.4f} (Bayes {bayes:.4f}), slate NDCG@5 {ndcg:.4f}; "
          f"ranker.onnx parity {m['parity']['max_abs_diff']:.2g} on {m['parity']['rows']} rows; RankerRuntime: "
          f"slate of {len(one)} scored (|torch - onnx| {info['request_max_abs_diff']:.2g}), "
          f"p50 {info['p50_ms_100_candidates']:.3f} ms for 100 candidates ({info['total_s']:.1f}s)")
    return info


def _retrieval_stage(out: Path, stage: str) -> dict:
    """The SASRec run's item table and user states (``<run>/embeddings``) -> an HNSW
    bundle with recall@10 against exact search measured at build -> queried through
    the torch-free :class:`recsys.serving.index.IndexRuntime` with seen items excluded."""
    import numpy as np

    from recsys.retrieval.build import IndexSpec, build_bundle
    from recsys.serving.index import IndexRuntime

    t0 = time.perf_counter()
    bundle = out / "export" / "index"
    m = build_bundle(out, bundle, IndexSpec(name="hnsw", factory="HNSW32", search_params={"efSearch": 64}))
    rt = IndexRuntime(bundle, threads=1)
    users = rt.user_ids[:3]
    hits = rt.search_users(users, k=10, exclude_seen=True)
    ms = []
    for u in rt.user_ids[:200]:
        t = time.perf_counter()
        rt.search_users([u], k=10, exclude_seen=True)
        ms.append((time.perf_counter() - t) * 1e3)
    info = {"index": m["index_spec"]["factory"],
            "recall@10": m["recall@10"], "n_items": len(rt.item_ids), "build_s": m["build_s"],
            "query_p50_ms": float(np.median(ms)), "total_s": time.perf_counter() - t0}
    print(f"{stage} retrieval: SASRec item table -> HNSW32 over {info['n_items']} items, recall@10 vs exact "
          f"{m['recall@10']:.3f} (held-out queries), built in {m['build_s']:.2f}s; IndexRuntime (no torch): "
          f"top-10 with seen items excluded, p50 {info['query_p50_ms']:.3f} ms/user")
    for u, ids in zip(users, hits.ids):
        print(f"      user {u}: {' '.join(map(str, ids[:10]))}")
    return info


def demo(cfg: DictConfig) -> dict:
    from recsys.data.stats import dataset_stats
    from recsys.training.baselines import evaluate_split

    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    with_ranker = bool(cfg.get("ranker_stage", True)) and cfg.get("data", {}).get("name") == "synthetic"
    with_index = bool(cfg.get("retrieval_stage", True)) and bool(cfg.get("train_sequence_model", True))
    N = 5 + int(with_ranker) + int(with_index)  # noqa: N806 - the stage count in the progress lines
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
    if cfg.get("train_sequence_model", True):
        import pytorch_lightning as L

        from recsys.cli.train_cmd import fit_sequence_model

        L.seed_everything(cfg.seed, verbose=False)
        print(f"[3/{N}] training SASRec (Lightning, up to {cfg.trainer.max_epochs} epochs, early stopping on val/ndcg@10)")
        info = fit_sequence_model(cfg, data, split, Path(cfg.paths.output_dir))
        results["sasrec"] = info["metrics"]
        timings["sasrec"] = info["timings"]
        print(f"      sasrec       test ndcg@10={info['metrics']['test/ndcg@10']:.4f} "
              f"({info['timings']['fit_s']:.1f}s, {info['timings']['epochs']} epochs)")
    print(f"[4/{N}] results (exact full ranking, history excluded, leave-one-out test):")
    print(format_table(results, TABLE))
    ope_out = None
    if cfg.get("ope_policy"):
        print(f"[5/{N}] off-policy evaluation of '{cfg.ope_policy}' on the world's logged impressions:")
        ope_out = _ope_stage(cfg)
        timings["ope_s"] = ope_out["timings"]["total_s"]
    ranker_out = None
    if with_ranker:
        ranker_out = _ranker_stage(cfg, data, split, Path(cfg.paths.output_dir), f"[6/{N}]")
        timings["ranker_s"] = ranker_out["total_s"]
    index_out = None
    if with_index:
        index_out = _retrieval_stage(Path(cfg.paths.output_dir), f"[{N}/{N}]")
        timings["retrieval_s"] = index_out["total_s"]
    timings["total_s"] = time.perf_counter() - t0
    path = write_summary(cfg, {"command": "demo", "results": results, "ranker_export": ranker_out, "retrieval": index_out, "data": data_lineage(data),
                               "data_stats": stats, "split": split.info, "timings": timings,
                               "ope": None if ope_out is None else {
                                   k: ope_out[k] for k in ("policy", "estimates", "true_value", "diagnostics")
                                   if k in ope_out}})
    print(f"summary: {path}")
    return results
