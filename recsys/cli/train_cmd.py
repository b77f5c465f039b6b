"""``recsys train``: data -> split -> datamodule -> net + loss -> Lightning fit
(early stopping on a validation metric) -> best checkpoint -> exact val/test
evaluation -> run directory (checkpoints/, model/, summary.json).

The config's ``pipeline`` key (set by experiment presets) chooses the wing:
``sequence`` (default: SASRec, BERT4Rec, GRU4Rec; :func:`recsys.training.sequence.fit.fit`)
or ``two_tower`` (which also writes ``embeddings/`` for the retrieval index).

``resume=<path>`` is checked before any data is prepared
(:func:`recsys.training.checkpoints.verify_checkpoint`): a local file only (URLs are
refused), with a matching ``<name>.ckpt.sha256`` sidecar (written beside every
checkpoint a run saves), loadable with ``weights_only=True``. ``summary.json``'s
``timings`` report ``epochs_run`` (epochs trained by this command) and
``epochs_total`` (including the epochs of the checkpoint it resumed from;
``resumed_from`` names that checkpoint and its digest). A run that trains zero
optimizer steps (no training batches) fails instead of writing a summary.

Return value (what Hydra's sweepers optimise): the ``val/*`` and ``test/*`` metrics as a
dict, or, with ``optimized_metric=<name>`` (set by ``configs/hparams_search/*``, e.g.
``val/ndcg@10``), that metric alone as a float: ``recsys train -m
hparams_search=sasrec_optuna`` hands it to the Optuna sweeper, which writes the best
params and value to ``<sweep dir>/optimization_results.yaml``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import (build_sequence_model, build_trainer, data_lineage, format_table, load_data,
                               split_data, write_summary)

TABLE = [f"test/{m}" for m in ("hr@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr")]


def fit_sequence(cfg: DictConfig, data: Any, split: Any, out: Path) -> dict[str, Any]:
    from recsys.training.sequence.fit import fit

    dm, module = build_sequence_model(cfg, data, split)
    return fit(build_trainer(cfg, out), module, dm, data, split, out, resume=cfg.get("resume"),
               net_args=OmegaConf.to_container(cfg.net, resolve=True))


def fit_two_tower(cfg: DictConfig, data: Any, split: Any, out: Path) -> dict[str, Any]:
    """The two-tower wing: datamodule on the data, ``TwoTower(**dm.net_args(), arch=cfg.net.arch)``,
    module around it, then :func:`recsys.training.two_tower.fit.fit` (``model/`` with
    ``features.json``, and ``embeddings/``)."""
    from recsys.training.two_tower.fit import fit

    trainer = build_trainer(cfg, out)
    # objects are passed through partials: hydra would turn a dataclass argument into a config
    dm = instantiate(cfg.datamodule, _partial_=True)(data=data, split=split)
    net = instantiate(cfg.net, _partial_=True)(**dm.net_args())  # n_items, items, users: from the data
    module = instantiate(cfg.module, _partial_=True)(net=net)
    return fit(trainer, module, dm, data, split, out, resume=cfg.get("resume"))


#: ``pipeline:`` in the config (set by experiment presets) -> the wing's fit
PIPELINES = {"sequence": fit_sequence, "two_tower": fit_two_tower}


def objective(cfg: DictConfig, results: dict[str, Any]) -> dict[str, Any] | float:
    """``results``, or the value of ``cfg.optimized_metric`` when it is set (a sweep's objective)."""
    from recsys.utils.errors import RecsysError

    name = cfg.get("optimized_metric")
    if name is None:
        return results
    if not str(name).startswith("val/"):  # checked before training too; tuning on test/* would leak
        raise RecsysError(f"optimized_metric={name}: expected a validation metric (val/<name>, e.g. val/ndcg@10)")
    if name not in results:
        raise RecsysError(f"optimized_metric={name}: not a metric of this run; "
                          f"expected one of: {', '.join(sorted(k for k in results if k.startswith('val/')))}")
    return float(results[name])


def train(cfg: DictConfig) -> dict[str, Any] | float:
    import pytorch_lightning as L

    objective(cfg, {cfg.optimized_metric: 0.0} if cfg.get("optimized_metric") else {})  # its name, before training
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(cfg.paths.output_dir)
    t0 = time.perf_counter()
    if cfg.get("resume") is not None:  # before the (possibly long) data preparation
        from recsys.training.checkpoints import verify_checkpoint

        verify_checkpoint(cfg.resume, "resume")
    data, prep_s = load_data(cfg)
    split = split_data(cfg, data)
    pipeline = cfg.get("pipeline") or "sequence"
    if pipeline not in PIPELINES:
        from recsys.utils.errors import RecsysError

        raise RecsysError(f"unknown pipeline {pipeline!r}; expected one of {sorted(PIPELINES)}")
    info = PIPELINES[pipeline](cfg, data, split, out)
    results = info["metrics"]
    if info["rank"] != 0:
        return objective(cfg, results)
    timings = {"prepare_s": prep_s, **info["timings"], "total_s": time.perf_counter() - t0}
    print(format_table({info["model"]: results}, TABLE))
    fairness = None
    if cfg.get("fairness") is not None and cfg.fairness.enabled and info.get("test_per_user") is not None:
        from recsys.evaluation.fairness_report import format_fairness, split_fairness

        fairness = split_fairness(data, split, info["test_per_user"], info.get("test_top_items"),
                                  instantiate(cfg.fairness))
        print(format_fairness(fairness, cfg.fairness.get("table_metric")))
    path = write_summary(cfg, {"command": "train", "model": info["model"], **results,
                               **({"fairness": fairness} if fairness is not None else {}),
                               "best_checkpoint": info["best_checkpoint"], "artifacts": info["artifacts"],
                               "resumed_from": info.get("resumed_from"),
                               "data": data_lineage(data), "split": split.info, "timings": timings})
    print(f"summary: {path}")
    return objective(cfg, results)
