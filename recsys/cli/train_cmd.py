"""``recsys train``: data -> split -> datamodule -> net + loss -> Lightning fit
(early stopping on a validation metric) -> best checkpoint -> exact val/test
evaluation -> run directory (checkpoints/, model/, summary.json).

The config's ``pipeline`` key (set by experiment presets) chooses the fit
function: ``sequence`` (default: SASRec, BERT4Rec, GRU4Rec) or ``two_tower``
(which also writes ``embeddings/`` for the retrieval index).

``resume=<path>`` is checked before any data is prepared
(:func:`recsys.training.checkpoints.verify_checkpoint`): a local file only (URLs are
refused), with a matching ``<name>.ckpt.sha256`` sidecar (written beside every
checkpoint a run saves), loadable with ``weights_only=True``. ``summary.json``'s
``timings`` report ``epochs_run`` (epochs trained by this command) and
``epochs_total`` (including the epochs of the checkpoint it resumed from;
``resumed_from`` names that checkpoint and its digest). A run that trains zero
optimizer steps (no training batches) fails instead of writing a summary."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import data_lineage, format_table, load_data, write_summary

TABLE = [f"test/{m}" for m in ("hr@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr")]


def fit_sequence_model(cfg: DictConfig, data: Any, split: Any, out: Path) -> dict[str, Any]:
    """Build datamodule, net, loss, module, callbacks, logger and trainer from
    ``cfg``; fit; evaluate the best checkpoint on validation and test; save the
    model (rank 0). Returns metrics, timings, the model name and artifacts."""
    # objects are passed through partials: hydra would turn a dataclass argument into a config
    dm = instantiate(cfg.datamodule, _partial_=True)(split=split, n_items=data.n_items)
    net_args = OmegaConf.to_container(cfg.net, resolve=True)
    net = instantiate(cfg.net, n_items=data.n_items)
    module = instantiate(cfg.module, _partial_=True)(net=net, loss=instantiate(cfg.loss))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, _partial_=True)(callbacks=callbacks, logger=logger, default_root_dir=str(out))
    from recsys.training.fit_eval import fit_and_evaluate

    out_info = fit_and_evaluate(trainer, module, dm, data, split, ckpt_path=cfg.get("resume"))
    out_info["model"] = f"{type(net).__name__}/{type(module.loss).__name__}"
    if trainer.global_rank == 0:
        from recsys.artifacts.models import save_model

        net_args.pop("_target_", None)
        out_info["artifacts"] = save_model(module.net, {**net_args, "n_items": data.n_items}, out / "model")
        if hasattr(module.net, "next_item_state"):  # item table + user states for `recsys index build source=<run>`
            from recsys.training.seq_embeddings import write_sequence_embeddings

            emb = write_sequence_embeddings(module.net, data, split, out / "embeddings", run=str(out))
            out_info["artifacts"]["embeddings"] = emb["directory"]
    return out_info


def fit_two_tower_model(cfg: DictConfig, data: Any, split: Any, out: Path) -> dict[str, Any]:
    """The two-tower pipeline (``pipeline: two_tower``): same run-directory contract,
    plus ``model/features.json`` and ``embeddings/``."""
    from recsys.training.two_tower_fit import fit_two_tower

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, _partial_=True)(callbacks=callbacks, logger=logger, default_root_dir=str(out))
    info = fit_two_tower(data, split, trainer, datamodule=instantiate(cfg.datamodule, _partial_=True),
                         net=instantiate(cfg.net, _partial_=True), module=instantiate(cfg.module, _partial_=True),
                         out=out, net_args=OmegaConf.to_container(cfg.net, resolve=True), ckpt_path=cfg.get("resume"))
    info.pop("module"), info.pop("datamodule")
    if "embeddings" in info:
        info["artifacts"]["embeddings"] = info.pop("embeddings")["directory"]
    return info


#: ``pipeline:`` in the config (set by experiment presets) -> fit function
PIPELINES = {"sequence": fit_sequence_model, "two_tower": fit_two_tower_model}


def train(cfg: DictConfig) -> dict:
    import pytorch_lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(cfg.paths.output_dir)
    t0 = time.perf_counter()
    if cfg.get("resume") is not None:  # before the (possibly long) data preparation
        from recsys.training.checkpoints import verify_checkpoint

        verify_checkpoint(cfg.resume, "resume")
    data, prep_s = load_data(cfg)
    split = instantiate(cfg.split).split(data)
    pipeline = cfg.get("pipeline") or "sequence"
    if pipeline not in PIPELINES:
        from recsys.utils.errors import RecsysError

        raise RecsysError(f"unknown pipeline {pipeline!r}; expected one of {sorted(PIPELINES)}")
    info = PIPELINES[pipeline](cfg, data, split, out)
    results = info["metrics"]
    if info["rank"] != 0:
        return results
    timings = {"prepare_s": prep_s, **info["timings"], "total_s": time.perf_counter() - t0}
    print(format_table({info["model"]: results}, TABLE))
    path = write_summary(cfg, {"command": "train", "model": info["model"], **results,
                               "best_checkpoint": info["best_checkpoint"], "artifacts": info["artifacts"],
                               "resumed_from": info.get("resumed_from"),
                               "data": data_lineage(data), "split": split.info, "timings": timings})
    print(f"summary: {path}")
    return results
