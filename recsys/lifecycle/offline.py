"""Per-user offline metrics of a registered model, computed at gate time (training runs
save only the averages): the model folder is rebuilt from its verified weights and
ranked exactly over the whole catalogue (:func:`recsys.evaluation.ranking.evaluate_ranking`,
history excluded, the same protocol as ``recsys train``'s test metrics).

The users come from an :class:`~recsys.data.splits.EvalSet` the caller rebuilds from
the candidate run's resolved config (``recsys/cli/registry_cmd.py`` does it with
:func:`recsys.cli.runs.run_split`), so champion and candidate are scored on exactly
the same users, in the same order: the paired test compares row by row.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recsys.utils.errors import RecsysError

#: model folders of each registry kind (a query encoder is scored through its training run's model)
def model_dir_of(kind: str, path: str | Path, lineage: dict[str, Any]) -> Path:
    if kind == "run":
        return Path(path) / "model"
    if kind == "query_encoder" and lineage.get("run_dir"):
        return Path(str(lineage["run_dir"])) / "model"
    raise RecsysError(f"no per-user ranking metrics for a {kind} version")


def per_user_metric(model_dir: str | Path, eval_set: Any, n_items: int, metric: str,
                    batch_size: int | None = None) -> np.ndarray:
    """``metric`` (e.g. ``ndcg@10``) of every user of ``eval_set`` that has a target, in row order."""
    import torch

    from recsys.artifacts.models import ModelFolder
    from recsys.evaluation.ranking import evaluate_ranking
    from recsys.training.sequence.data import padded_histories

    net, args = ModelFolder.open(model_dir).rebuild()
    if not hasattr(net, "next_item_state"):
        raise RecsysError(f"{model_dir}: {type(net).__name__} is not a sequence model (no next_item_state)")
    if int(args.get("n_items", n_items)) != n_items:
        raise RecsysError(f"{model_dir}: a model of {args.get('n_items')} items cannot rank a {n_items}-item catalogue")
    max_len = int(getattr(net, "max_len", args.get("max_len", 50)))
    k = int(metric.rpartition("@")[2]) if "@" in metric else 10

    def score(users: np.ndarray, hist: Any) -> torch.Tensor:
        with torch.no_grad():
            return net.next_item_state(padded_histories(hist, max_len)).float() @ net.output_embeddings().float().T

    res = evaluate_ranking(score, eval_set.users, eval_set.history, eval_set.targets, n_items, ks=(k,),
                           keep_per_user=True, batch_size=batch_size, device="cpu")
    if metric not in res.per_user:
        raise RecsysError(f"metric {metric!r} unknown; expected one of {', '.join(sorted(res.per_user))}")
    return res.per_user[metric]
