"""``recsys rank train``: synthetic world -> impression features -> time split
-> ranker (DCN-v2 / MLP) with Lightning -> best checkpoint -> val/test AUC,
log loss, ECE, the Bayes-optimal AUC of the same test rows (true click
probabilities) and a position x popularity baseline -> run directory
(checkpoints/, model/, summary.json)."""
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

    from recsys.training.artifacts import load_model

    rows = {k: torch.from_numpy(np.ascontiguousarray(v[:n])) for k, v in table.features.items()
            if k in net.input_names}
    net.eval()
    with torch.no_grad():
        if not torch.equal(load_model(model_dir)(**rows), net(**rows)):
            raise RecsysError(f"{model_dir}: the rebuilt model does not reproduce the trained one")


def train(cfg: DictConfig) -> dict:
    import pytorch_lightning as L

    from recsys.data.synthetic_source import load_world
    from recsys.evaluation.binary import binary_metrics, roc_auc
    from recsys.training.artifacts import save_model
    from recsys.training.ranker_data import RankerDataModule, position_popularity_baseline
    from recsys.training.ranker_module import RankerModule
    from recsys.utils.io import write_json_atomic

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(cfg.paths.output_dir)
    t0 = time.perf_counter()
    data, prep_s = load_data(cfg)
    world = load_world(data.extras_dir, data.extras)
    if world is None:
        raise RecsysError(f"rank train needs an impression log with known click probabilities: "
                          f"data={cfg.data.name} has no synthetic world (use data=synthetic)")
    dm = RankerDataModule(world=world, seed=cfg.seed, **OmegaConf.to_container(cfg.datamodule, resolve=True))
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
    p_true = world.click_probability(f["user"], f["item"], f["position"])
    bayes = binary_metrics(test.label, p_true, prefix="bayes/")
    results.update(bayes)
    results["bayes_auc"] = bayes["bayes/auc"]
    results["auc_gap_to_bayes"] = results["bayes_auc"] - results["test/auc"]
    results["baseline_auc"] = roc_auc(test.label, position_popularity_baseline(dm.split_table("train"), test))

    model_dir = out / "model"
    artifacts = save_model(module.net, {**ranker_args, "vocab_sizes": table.vocab_sizes,
                                        "dense_features": table.dense}, model_dir)
    write_json_atomic(model_dir / "features.json", {
        "feature_set_version": table.version, "inputs": net.input_names,
        "categorical": list(table.vocab_sizes), "dense": table.dense, "vocab_sizes": table.vocab_sizes})
    n_rows = save_parity_rows(test, int(cfg.parity_rows), model_dir / "parity_rows.safetensors")
    _check_rebuild(module.net, model_dir, test, n_rows)
    artifacts.update(features=str(model_dir / "features.json"),
                     parity_rows=str(model_dir / "parity_rows.safetensors"), parity_rows_n=n_rows)
    model_name = type(net).__name__ + (f"/{net.structure}" if hasattr(net, "structure") else "")
    epochs = trainer.current_epoch
    timings = {"prepare_s": prep_s, "fit_s": fit_s, "epochs": epochs, "s_per_epoch": fit_s / max(epochs, 1),
               "total_s": time.perf_counter() - t0}
    print(format_table({model_name: results}, TABLE))
    path = write_summary(cfg, {"command": "rank train", "model": model_name, **results, "best_checkpoint": best,
                               "artifacts": artifacts, "data": data_lineage(data), "split": dm.info(),
                               "n_parameters": sum(p.numel() for p in net.parameters()), "timings": timings})
    print(f"summary: {path}")
    return results
