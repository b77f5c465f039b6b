"""``recsys rank train``: impression features -> time split -> ranker (DCN-v2 /
MLP) with Lightning -> best checkpoint -> val/test AUC, log loss, ECE, a
reliability diagram and NDCG of the re-ranked slates -> run directory
(checkpoints/, model/, summary.json, reliability.png).

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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import data_lineage, format_table, load_data, write_summary
from recsys.utils.errors import RecsysError

TABLE = ["test/auc", "test/log_loss", "test/ece", "bayes_auc", "baseline_auc"]
SYNTHETIC_ONLY_LOADER_KEYS = ("n_requests",)  # rank_train.yaml sizes the impression log; other loaders lack it


def save_parity_rows(table: Any, n: int, path: Path) -> int:
    """The first ``n`` rows of ``table`` (real test rows, with ``label``) as safetensors, for export parity."""
    from safetensors.numpy import save_file

    from recsys.utils.io import atomic_path

    rows = {k: np.ascontiguousarray(v[:n]) for k, v in table.features.items()}
    rows["label"] = np.ascontiguousarray(table.label[:n])  # for the int8 AUC check; not a model input
    with atomic_path(path) as tmp:
        save_file(rows, str(tmp), metadata={"feature_set_version": table.version})
    return len(table.label[:n])


def _check_rebuild(net: Any, model_dir: Path, table: Any, n: int) -> None:
    """The net rebuilt from ``model_dir`` must score ``n`` rows exactly like the evaluated one."""
    import torch

    from recsys.artifacts.models import load_model

    rows = {k: torch.from_numpy(np.ascontiguousarray(v[:n])) for k, v in table.features.items()
            if k in net.input_names}
    net.eval()
    with torch.no_grad():
        if not torch.equal(load_model(model_dir)(**rows), net(**rows)):
            raise RecsysError(f"{model_dir}: the rebuilt model does not reproduce the trained one")


def _scores(net: Any, features: dict[str, np.ndarray], batch: int = 65536) -> np.ndarray:
    import torch

    net.eval()
    outs = []
    with torch.inference_mode():
        for s in range(0, len(next(iter(features.values()))), batch):
            outs.append(net(**{k: torch.from_numpy(np.ascontiguousarray(v[s:s + batch]))
                               for k, v in features.items() if k in net.input_names}).numpy())
    return np.concatenate(outs)


def _ranking_metrics(cfg: DictConfig, net: Any, test: Any, world: Any) -> dict[str, Any]:
    """NDCG@k of the test rows re-ranked by the model, per logged slate (synthetic:
    the model scores every item at position 0, so the order is the model's, not the
    logger's; compared with the logged order and the true-relevance order; clicks
    carry the logger's position bias, so the same orders are also graded by the
    true relevance, which has none) or per
    user candidate list (ratings; compared with ordering by prior popularity)."""
    from recsys.training.ranker_metrics import slate_ndcg

    f = test.features
    out: dict[str, Any] = {}
    if world is not None:
        k = int(cfg.ndcg_k.slate)
        at_top = dict(f, position=np.zeros_like(f["position"]))
        orders = {"model": _scores(net, at_top), "logged": -f["position"].astype(np.float64),
                  "bayes": world.relevance(f["user"], f["item"])}
        group = test.request_id
    else:
        k = int(cfg.ndcg_k.user)
        orders = {"model": _scores(net, f), "popularity": f["item_log_pop"].astype(np.float64)}
        group = f["user"]
    for name, score in orders.items():
        res = slate_ndcg(group, test.label, score, k)
        out[f"test/slate_ndcg@{k}/{name}"] = res["ndcg"]
    if world is not None:  # clicks favour the logged top slots (position bias): also grade by true relevance
        rel = world.relevance(f["user"], f["item"])
        for name, score in orders.items():
            out[f"test/slate_ndcg_relevance@{k}/{name}"] = slate_ndcg(group, rel, score, k)["ndcg"]
    out["slate_ndcg"] = {"k": k, "groups_with_click": res["groups"], "groups_without_click": res["skipped"],
                         "grouped_by": "request (logged slate)" if world is not None else "user (candidate list)"}
    return out


def train(cfg: DictConfig) -> dict:
    import pytorch_lightning as L

    from recsys.data.synthetic_source import load_world
    from recsys.evaluation.binary import binary_metrics, roc_auc
    from recsys.artifacts.models import save_model, seal_model_dir
    from recsys.training.ranker_data import RankerDataModule, position_popularity_baseline
    from recsys.training.ranker_metrics import reliability_plot
    from recsys.training.ranker_module import RankerModule
    from recsys.utils.io import write_json_atomic

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(cfg.paths.output_dir)
    t0 = time.perf_counter()
    if "SyntheticLoader" not in str(cfg.data.loader.get("_target_", "")):
        OmegaConf.set_struct(cfg, False)
        for key in SYNTHETIC_ONLY_LOADER_KEYS:
            cfg.data.loader.pop(key, None)
    data, prep_s = load_data(cfg)
    world = load_world(data.extras_dir, data.extras)
    dm_args = OmegaConf.to_container(cfg.datamodule, resolve=True)
    if world is not None:
        from recsys.features.ranker import add_behavioural_features, build_ranker_features

        table = build_ranker_features(world)
        if cfg.get("behavioural_features"):  # point-in-time clickstream features of recsys.features
            bf = cfg.behavioural_features
            table = add_behavioural_features(table, world, feature_set=OmegaConf.to_container(bf, resolve=True)
                                             if not isinstance(bf, bool) else None)
        dm = RankerDataModule(table=table, seed=cfg.seed, **dm_args)
    else:
        from recsys.features.ranker import build_rating_features

        if "value" not in data.interactions.column_names or data.interactions.column("value").null_count \
                == data.interactions.num_rows:
            raise RecsysError(f"rank train needs an impression log (data=synthetic) or explicit ratings "
                              f"(e.g. data=ml100k); data={cfg.data.name} has neither")
        ratings = OmegaConf.to_container(cfg.ratings, resolve=True)
        table = build_rating_features(data, threshold=float(ratings["threshold"]),
                                      negatives_per_event=int(ratings["negatives_per_event"]), seed=cfg.seed)
        dm = RankerDataModule(table=table, seed=cfg.seed, **dm_args)
    table = dm.table
    ranker_args = OmegaConf.to_container(cfg.ranker, resolve=True)
    ranker_args.pop("_target_")
    net = instantiate(cfg.ranker, vocab_sizes=table.vocab_sizes, dense_features=table.dense)
    module = RankerModule(net, optimizer=instantiate(cfg.optimizer), input_names=net.input_names)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, _partial_=True)(callbacks=callbacks, logger=logger, default_root_dir=str(out))
    t1 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - t1
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.validate(module, datamodule=dm, ckpt_path=best or None, verbose=False)
    trainer.test(module, datamodule=dm, ckpt_path=best or None, verbose=False)
    results: dict[str, Any] = {**module.results["val"], **module.results["test"]}

    test = dm.split_table("test")
    f = test.features
    if world is not None:
        p_true = world.click_probability(f["user"], f["item"], f["position"])
        bayes = binary_metrics(test.label, p_true, prefix="bayes/")
        results.update(bayes)
        results["bayes_auc"] = bayes["bayes/auc"]
        results["auc_gap_to_bayes"] = results["bayes_auc"] - results["test/auc"]
        results["baseline_auc"] = roc_auc(test.label, position_popularity_baseline(dm.split_table("train"), test))
    else:
        results["bayes_auc"] = None  # real data: the true click probabilities are unknown
        results["auc_gap_to_bayes"] = None
        results["baseline_auc"] = roc_auc(test.label, f["item_log_pop"])  # item popularity before the row
    results.update(_ranking_metrics(cfg, module.net, test, world))
    rel = reliability_plot(test.label, module.predictions["test"], out / "reliability.png",
                           title=f"{type(net).__name__} test", ece=results["test/ece"])
    results["reliability"] = rel

    model_dir = out / "model"
    artifacts = save_model(module.net, {**ranker_args, "vocab_sizes": table.vocab_sizes,
                                        "dense_features": table.dense}, model_dir)
    write_json_atomic(model_dir / "features.json", {
        "feature_set_version": table.version, "inputs": net.input_names,
        "categorical": list(table.vocab_sizes), "dense": table.dense, "vocab_sizes": table.vocab_sizes})
    n_rows = save_parity_rows(test, int(cfg.parity_rows), model_dir / "parity_rows.safetensors")
    seal_model_dir(model_dir)
    _check_rebuild(module.net, model_dir, test, n_rows)
    artifacts.update(features=str(model_dir / "features.json"),
                     parity_rows=str(model_dir / "parity_rows.safetensors"), parity_rows_n=n_rows)
    artifacts["reliability_plot"] = str(out / "reliability.png")
    model_name = type(net).__name__ + (f"/{net.structure}" if hasattr(net, "structure") else "")
    epochs = trainer.current_epoch
    timings = {"prepare_s": prep_s, "fit_s": fit_s, "epochs": epochs, "s_per_epoch": fit_s / max(epochs, 1),
               "total_s": time.perf_counter() - t0}
    print(format_table({model_name: {k: (np.nan if v is None else v) for k, v in results.items()}},
                       TABLE + sorted(k for k in results if k.startswith("test/slate_ndcg"))))
    path = write_summary(cfg, {"command": "rank train", "model": model_name, **results, "best_checkpoint": best,
                               "artifacts": artifacts, "data": data_lineage(data), "split": dm.info(),
                               "n_parameters": sum(p.numel() for p in net.parameters()), "timings": timings})
    print(f"summary: {path}")
    return results
