"""How a sequence model (SASRec, BERT4Rec, GRU4Rec) is trained: :func:`fit`.

``recsys train`` and ``recsys demo`` build the objects from the Hydra config
(``datamodule/sequence.yaml``, ``net/*.yaml``, ``loss/*.yaml``,
``module/sequential.yaml``, ``trainer/*.yaml``) and pass them in; nothing here
reads a config. Run-directory contract (rank 0): ``model/`` (``model_args.json``
+ ``weights.safetensors``, see :mod:`recsys.artifacts.models`) and
``embeddings/`` (see :mod:`recsys.training.sequence.embeddings`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as L

from recsys.artifacts.models import save_model
from recsys.training.fit_eval import fit_and_evaluate
from recsys.training.sequence.data import SequenceDataModule
from recsys.training.sequence.embeddings import write_sequence_embeddings
from recsys.training.sequence.module import SequentialRecModule


def fit(trainer: L.Trainer, module: SequentialRecModule, datamodule: SequenceDataModule, data: Any, split: Any,
        out: str | Path, resume: str | None = None, net_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit (resuming from the verified checkpoint ``resume``), evaluate the best
    checkpoint exactly on val and test (:func:`~recsys.training.fit_eval.fit_and_evaluate`),
    then on rank 0 save ``<out>/model`` (``net_args`` + ``n_items`` as ``model_args.json``)
    and ``<out>/embeddings``.

    Returns ``{"metrics", "best_checkpoint", "rank", "timings", "resumed_from", "model"}``
    plus ``"artifacts"`` on rank 0."""
    out = Path(out)
    info = fit_and_evaluate(trainer, module, datamodule, data, split, ckpt_path=resume)
    info["model"] = f"{type(module.net).__name__}/{type(module.loss).__name__}"
    if trainer.global_rank == 0:
        args = {k: v for k, v in (net_args or {}).items() if k != "_target_"}
        info["artifacts"] = save_model(module.net, {**args, "n_items": data.n_items}, out / "model")
        if hasattr(module.net, "next_item_state"):  # item table + user states for `recsys index build source=<run>`
            emb = write_sequence_embeddings(module.net, data, split, out / "embeddings", run=str(out))
            info["artifacts"]["embeddings"] = emb["directory"]
    return info
