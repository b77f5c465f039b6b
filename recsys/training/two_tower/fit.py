"""Fit a two-tower model on a split, evaluate it, write its run directory.

No config reading: the command (``recsys train``, ``pipeline: two_tower``) or a
script builds the data module, the net (``TwoTower(**dm.net_args(), arch=...)``),
the Lightning module and the trainer, and passes them in.

Run-directory contract (rank 0): ``model/`` (``model_args.json`` +
``weights.safetensors`` + ``features.json`` with the feature vocabularies, JSON;
sealed by :func:`recsys.artifacts.models.seal_model_dir`) and ``embeddings/``
(see :mod:`recsys.artifacts.embeddings`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as L
import torch

from recsys.artifacts.embeddings import write_run_embeddings
from recsys.artifacts.models import save_model, seal_model_dir
from recsys.data.prepare import PreparedData
from recsys.data.splits import Split
from recsys.training.fit_eval import fit_and_evaluate
from recsys.utils.sparse import left_pad
from recsys.data.prepare import item_categories
from recsys.training.two_tower.data import TwoTowerDataModule
from recsys.training.two_tower.module import TwoTowerModule
from recsys.utils.io import write_json_atomic

FEATURES_FILE = "features.json"


def fit(trainer: L.Trainer, module: TwoTowerModule, datamodule: TwoTowerDataModule, data: PreparedData,
        split: Split, out: str | Path | None = None, *, resume: str | None = None,
        category_column: str | None = "category") -> dict[str, Any]:
    """Fit ``module`` on ``datamodule``, evaluate the best checkpoint on val and test
    (:func:`~recsys.training.fit_eval.fit_and_evaluate`), and on rank 0, when ``out``
    is given, write ``out/model`` and ``out/embeddings``.

    The same arguments, in the same order, as :func:`recsys.training.sequence.fit.fit`.

    Args:
        trainer: its ``checkpoint_callback`` (if any) picks the evaluated weights.
        module: a :class:`TwoTowerModule` around ``TwoTower(**datamodule.net_args(), arch=...)``.
        datamodule: built on ``data`` and ``split``.
        data, split: what ``datamodule`` was built on (beyond-accuracy metrics, embeddings).
        out: the run directory (``None``: write nothing).
        resume: a local checkpoint (with its ``.sha256`` sidecar) to continue from.
        category_column: item column for the diversity metrics (``None``: none).

    Returns ``{"metrics", "model", "best_checkpoint", "rank", "timings", "resumed_from"}``
    plus, on rank 0 with ``out``, ``"artifacts"``: ``model_args``, ``weights``,
    ``features`` and ``embeddings`` (the folder) paths.
    """
    info: dict[str, Any] = fit_and_evaluate(trainer, module, datamodule, data, split, ckpt_path=resume,
                                            category_column=category_column)
    info["model"] = "TwoTower"
    if out is not None and trainer.global_rank == 0:
        info["artifacts"] = save_run(module, datamodule, data, split, Path(out))
    return info


def save_run(module: TwoTowerModule, dm: TwoTowerDataModule, data: PreparedData, split: Split,
             out: Path) -> dict[str, str]:
    """``out/model`` (the net's ``model_args()`` + weights + ``features.json``, sealed)
    and ``out/embeddings``; returns their paths."""
    model_dir = out / "model"
    artifacts = save_model(module.net, module.net.model_args(), model_dir)
    write_json_atomic(model_dir / FEATURES_FILE, dm.feature_metadata())
    seal_model_dir(model_dir)
    artifacts["features"] = str(model_dir / FEATURES_FILE)
    artifacts["embeddings"] = export_embeddings(module, dm, data, split, out / "embeddings", run=str(out))["directory"]
    return artifacts


@torch.no_grad()
def export_embeddings(mod: TwoTowerModule, dm: TwoTowerDataModule, data: PreparedData, split: Split,
                      directory: Path, run: str) -> dict[str, Any]:
    """Item vectors (items without training interactions: from features only) and
    user vectors on each user's full training history."""
    mod.eval()
    item_vecs = mod.all_item_vectors()
    users = np.arange(1, data.n_users + 1)
    hist = left_pad(dm.train_history.take(users), dm.max_history)
    user_vecs = torch.cat([mod.user_vectors_for(users[s : s + 1024], hist[s : s + 1024], item_vecs)
                           for s in range(0, len(users), 1024)])
    tu, ti, _ = split.train_arrays()
    uid = np.asarray(dm.users.raw_ids, dtype=object)
    iid = np.asarray(dm.items.raw_ids, dtype=object)
    return write_run_embeddings(
        directory, item_ids=dm.items.raw_ids, item_vectors=item_vecs[1:].cpu().numpy(),
        user_ids=dm.users.raw_ids, user_vectors=user_vecs.cpu().numpy(),
        seen_user_ids=uid[tu - 1].tolist(), seen_item_ids=iid[ti - 1].tolist(),
        metric="cos" if mod.net.normalize else "ip", data_fingerprint=data.fingerprint, run=run,
        item_categories=item_categories(data), model="TwoTower")
