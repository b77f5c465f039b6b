"""``recsys train``: data -> split -> datamodule -> net + loss -> Lightning fit
(early stopping on a validation metric) -> best checkpoint -> exact val/test
evaluation -> run directory (checkpoints/, model/, summary.json)."""
from __future__ import annotations

import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import data_lineage, format_table, load_data, write_summary


def train(cfg: DictConfig) -> dict:
    import pytorch_lightning as L

    from recsys.training.artifacts import save_model

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(cfg.paths.output_dir)
    t0 = time.perf_counter()
    data, prep_s = load_data(cfg)
    split = instantiate(cfg.split).split(data)
    # objects are passed through partials: hydra would turn a dataclass argument into a config
    dm = instantiate(cfg.datamodule, _partial_=True)(split=split, n_items=data.n_items)
    net_args = OmegaConf.to_container(cfg.net, resolve=True)
    net = instantiate(cfg.net, n_items=data.n_items)
    module = instantiate(cfg.module, _partial_=True)(net=net, loss=instantiate(cfg.loss))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, _partial_=True)(callbacks=callbacks, logger=logger, default_root_dir=str(out))
    t_fit = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("resume"))
    fit_s = time.perf_counter() - t_fit
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt = best or None
    trainer.validate(module, datamodule=dm, ckpt_path=ckpt, verbose=False)
    trainer.test(module, datamodule=dm, ckpt_path=ckpt, verbose=False)
    results = {**module.results.get("val", {}), **module.results.get("test", {})}
    if trainer.global_rank != 0:
        return results
    net_args.pop("_target_", None)
    artifacts = save_model(module.net, {**net_args, "n_items": data.n_items}, out / "model")
    epochs = trainer.current_epoch
    timings = {"prepare_s": prep_s, "fit_s": fit_s, "epochs": epochs, "s_per_epoch": fit_s / max(epochs, 1),
               "total_s": time.perf_counter() - t0}
    name = f"{type(net).__name__}/{type(module.loss).__name__}"
    print(format_table({name: results}, [f"test/{m}" for m in ("hr@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr")]))
    path = write_summary(cfg, {"command": "train", "model": name, **results, "best_checkpoint": best,
                               "artifacts": artifacts, "data": data_lineage(data), "split": split.info,
                               "timings": timings})
    print(f"summary: {path}")
    return results
