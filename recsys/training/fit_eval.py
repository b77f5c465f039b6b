"""Fit a retrieval/sequence Lightning module, then evaluate its best checkpoint:
the one loop ``recsys train`` (sequence models) and the two-tower fit share."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytorch_lightning as L

from recsys.evaluation.beyond import beyond_accuracy


def fit_and_evaluate(trainer: L.Trainer, module: Any, datamodule: Any, data: Any, split: Any,
                     ckpt_path: str | None = None, category_column: str | None = "category") -> dict[str, Any]:
    """``trainer.fit`` (resuming from ``ckpt_path`` if given), then exact validation
    and test with the best checkpoint of ``trainer.checkpoint_callback`` (the last
    weights without one). ``module`` is a :class:`~recsys.training.seq_module.SequentialRecModule`
    (``results`` / ``top_items`` filled by its eval hooks). The test top-k lists add
    beyond-accuracy metrics (coverage, novelty, Gini, popularity bias against the
    training counts; diversity by ``category_column`` when given).

    Returns ``{"metrics", "best_checkpoint", "rank", "timings"}``."""
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_s = time.perf_counter() - t0
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.validate(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    metrics = {**module.results.get("val", {}), **module.results.get("test", {})}
    if "test" in module.top_items:
        users, items, _ = split.train_arrays()
        counts = np.bincount(items, minlength=data.n_items + 1).astype(np.float64)
        cats = data.item_codes(category_column) if category_column else None
        extra = beyond_accuracy(module.top_items["test"], data.n_items, counts, len(np.unique(users)),
                                item_category=cats)
        metrics.update({f"test/{k}": v for k, v in extra.items()})
    epochs = trainer.current_epoch
    return {"metrics": metrics, "best_checkpoint": best, "rank": trainer.global_rank,
            "timings": {"fit_s": fit_s, "epochs": epochs, "s_per_epoch": fit_s / max(epochs, 1)}}
