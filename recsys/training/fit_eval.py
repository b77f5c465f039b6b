"""Fit a Lightning module, then evaluate its best checkpoint: the one loop the
sequence, two-tower and ranker wings share (``training/<wing>/fit.py``)."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytorch_lightning as L

from recsys.evaluation.beyond import beyond_accuracy
from recsys.training.checkpoints import check_compatible, verify_checkpoint
from recsys.utils.errors import RecsysError


class TrainingError(RecsysError):
    """Training that did not train (zero optimizer steps when some were asked for)."""


class _FitProgress(L.Callback):
    """Where this process started training (after Lightning restored a checkpoint).
    Stateless, so it adds nothing to checkpoints."""

    def __init__(self) -> None:
        self.start_epoch: int | None = None
        self.start_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_epoch, self.start_step = trainer.current_epoch, trainer.global_step


def _training_requested(trainer: L.Trainer) -> bool:
    """False only when the trainer was explicitly told to train nothing
    (``max_epochs=0`` or ``max_steps=0``: evaluate the initial or resumed weights)."""
    return trainer.max_epochs != 0 and trainer.max_steps != 0


def fit_and_evaluate(trainer: L.Trainer, module: Any, datamodule: Any, data: Any, split: Any,
                     ckpt_path: str | None = None, category_column: str | None = "category",
                     ckpt_name: str = "resume") -> dict[str, Any]:
    """``trainer.fit`` (resuming from ``ckpt_path`` if given), then exact validation
    and test with the best checkpoint of ``trainer.checkpoint_callback`` (the last
    weights without one). ``module`` fills ``results`` (``{"val": {...}, "test": {...}}``)
    in its evaluation hooks; a module with test ``top_items`` (e.g.
    :class:`~recsys.training.sequence.module.SequentialRecModule`) also gets
    beyond-accuracy metrics from its top-k lists (coverage, novelty, Gini, popularity
    bias against the training counts of ``split``; diversity by ``category_column``
    when given). ``data`` and ``split`` are only read for those (``None`` for a ranker).

    ``ckpt_path`` must be a local checkpoint with a matching ``.sha256`` sidecar
    (:func:`~recsys.training.checkpoints.verify_checkpoint`) whose weights fit
    ``module``; it is loaded with ``weights_only=True``, like the best checkpoint.
    Errors are :class:`~recsys.utils.errors.RecsysError` lines naming ``ckpt_name``.
    A fit that ran zero optimizer steps although training was asked for
    (``max_epochs`` and ``max_steps`` not 0: e.g. no training batches) raises
    :class:`TrainingError` instead of evaluating an untrained model.

    Returns ``{"metrics", "best_checkpoint", "rank", "timings", "resumed_from", "test_per_user",
    "test_top_items"}`` (the last two: the module's per-user test metrics and top-k
    lists in test-set row order, or ``None``; for the fairness report).
    ``timings``: ``fit_s``; ``epochs_run`` / ``optimizer_steps_run``: what this call
    trained; ``epochs_total`` / ``optimizer_steps_total``: counted from the start of
    training, checkpointed epochs included (``trainer.current_epoch`` /
    ``trainer.global_step``); ``epochs`` = ``epochs_run``; ``s_per_epoch`` =
    ``fit_s / epochs_run``. ``resumed_from``: ``None`` or the verified checkpoint's
    ``path``, ``sha256``, ``epochs`` (completed before this call) and ``global_step``."""
    resumed = None
    if ckpt_path is not None:
        info = verify_checkpoint(ckpt_path, ckpt_name)
        check_compatible(info, module, ckpt_name)
        ckpt_path = str(info.path)  # absolute local path: never opened as a URL
        resumed = {"path": ckpt_path, "sha256": info.sha256, "global_step": info.global_step}
    progress = _FitProgress()
    trainer.callbacks.append(progress)
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    finally:
        trainer.callbacks.remove(progress)
    fit_s = time.perf_counter() - t0
    epochs_total, steps_total = int(trainer.current_epoch), int(trainer.global_step)
    # fit returned before on_train_start (max_epochs already reached, no batches): nothing ran
    start_epoch = epochs_total if progress.start_epoch is None else progress.start_epoch
    start_step = steps_total if progress.start_step is None else progress.start_step
    if resumed is not None:
        resumed["epochs"] = start_epoch
    if steps_total == 0 and _training_requested(trainer):
        n = trainer.num_training_batches
        per_epoch = f"{int(n)} training batches per epoch, " if n != float("inf") else ""
        raise TrainingError(
            f"training ran 0 optimizer steps ({per_epoch}trainer.max_epochs={trainer.max_epochs}, "
            f"trainer.limit_train_batches={trainer.limit_train_batches}): no model was trained, so none is "
            f"evaluated or saved; check datamodule.batch_size, the trainer limits and that the split has training data")
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.validate(module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
    metrics = {**module.results.get("val", {}), **module.results.get("test", {})}
    top_items = getattr(module, "top_items", {})
    if "test" in top_items:
        users, items, _ = split.train_arrays()
        counts = np.bincount(items, minlength=data.n_items + 1).astype(np.float64)
        cats = data.item_codes(category_column) if category_column else None
        extra = beyond_accuracy(top_items["test"], data.n_items, counts, len(np.unique(users)),
                                item_category=cats)
        metrics.update({f"test/{k}": v for k, v in extra.items()})
    epochs_run = epochs_total - start_epoch
    timings = {"fit_s": fit_s, "epochs": epochs_run, "epochs_run": epochs_run, "epochs_total": epochs_total,
               "optimizer_steps_run": steps_total - start_step, "optimizer_steps_total": steps_total,
               "s_per_epoch": fit_s / max(epochs_run, 1)}
    return {"metrics": metrics, "best_checkpoint": best, "rank": trainer.global_rank, "timings": timings,
            "resumed_from": resumed, "test_per_user": getattr(module, "per_user", {}).get("test"),
            "test_top_items": top_items.get("test")}
