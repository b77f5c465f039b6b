"""Fit a two-tower model on a split and evaluate it (no config reading: the CLI and
the study script build the pieces and pass them in).

Run-directory contract (rank 0): ``model/`` (``model_args.json`` +
``weights.safetensors`` + ``features.json`` with the feature vocabularies, JSON)
and ``embeddings/`` (see :mod:`recsys.artifacts.embeddings`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as L
import torch

from recsys.data.prepare import PreparedData
from recsys.data.splits import Split
from recsys.models.two_tower import TwoTower
from recsys.training.fit_eval import fit_and_evaluate
from recsys.training.seq_data import left_pad
from recsys.training.two_tower_data import TwoTowerDataModule
from recsys.training.two_tower_module import TwoTowerModule
from recsys.utils.io import write_json_atomic


def fit_two_tower(data: PreparedData, split: Split, trainer: L.Trainer, datamodule: Callable[..., TwoTowerDataModule],
                  net: Callable[..., TwoTower], module: Callable[..., TwoTowerModule], out: str | Path | None = None,
                  net_args: dict[str, Any] | None = None, ckpt_path: str | None = None,
                  category_column: str | None = "category") -> dict[str, Any]:
    """Build (``datamodule(data=, split=)``, ``net(**data-derived args)``, ``module(net=)``),
    fit, evaluate the best checkpoint (``trainer.checkpoint_callback``) on val and test.

    Returns ``{"metrics", "model", "best_checkpoint", "rank", "timings", "module", "datamodule"}``
    plus ``"artifacts"`` / ``"embeddings"`` on rank 0 when ``out`` is given.
    """
    dm = datamodule(data=data, split=split)
    data_args = dm.net_args()
    model = net(**data_args)
    mod = module(net=model)
    info: dict[str, Any] = fit_and_evaluate(trainer, mod, dm, data, split, ckpt_path=ckpt_path,
                                            category_column=category_column)
    info.update({"model": "TwoTower", "module": mod, "datamodule": dm})
    if out is not None and trainer.global_rank == 0:
        from recsys.artifacts.models import save_model, seal_model_dir

        out = Path(out)
        args = {k: v for k, v in (net_args or {}).items() if k != "_target_"}
        info["artifacts"] = save_model(mod.net, {**args, **data_args}, out / "model")
        write_json_atomic(out / "model" / "features.json", dm.feature_metadata())
        seal_model_dir(out / "model")
        info["artifacts"]["features"] = str(out / "model" / "features.json")
        info["embeddings"] = export_embeddings(mod, dm, data, split, out / "embeddings", run=str(out))
    return info


@torch.no_grad()
def export_embeddings(mod: TwoTowerModule, dm: TwoTowerDataModule, data: PreparedData, split: Split,
                      directory: Path, run: str) -> dict[str, Any]:
    """Item vectors (items without training interactions: from features only) and
    user vectors on each user's full training history."""
    from recsys.artifacts.embeddings import write_run_embeddings as write_embeddings

    mod.eval()
    item_vecs = mod.all_item_vectors()
    users = np.arange(1, data.n_users + 1)
    hist = left_pad(dm.train_history.take(users), dm.max_history)
    user_vecs = torch.cat([mod.user_vectors_for(users[s : s + 1024], hist[s : s + 1024], item_vecs)
                           for s in range(0, len(users), 1024)])
    tu, ti, _ = split.train_arrays()
    uid = np.asarray(dm.users.raw_ids, dtype=object)
    iid = np.asarray(dm.items.raw_ids, dtype=object)
    return write_embeddings(
        directory, item_ids=dm.items.raw_ids, item_vectors=item_vecs[1:].cpu().numpy(),
        user_ids=dm.users.raw_ids, user_vectors=user_vecs.cpu().numpy(),
        seen_user_ids=uid[tu - 1].tolist(), seen_item_ids=iid[ti - 1].tolist(),
        metric="cos" if mod.net.normalize else "ip", data_fingerprint=data.fingerprint, run=run,
        item_categories=item_categories(data), model="TwoTower")


def item_categories(data: PreparedData) -> list[str | None] | None:
    """A category string per item: the ``category`` column, else the first genre of a list column."""
    items = data.items
    for name in ("category", "class", "genre", "genres"):
        if name in items.column_names:
            vals = items.column(name).to_pylist()
            return [(v[0] if v else None) if isinstance(v, list) else (None if v is None else str(v)) for v in vals]
    return None
