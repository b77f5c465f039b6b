"""How a click-through ranker (DCN-v2, MLP) is trained: :func:`fit`.

``recsys rank train`` and the ranker stage of ``recsys demo`` compose
``configs/rank_train.yaml``, build the data module, net, module and trainer, and
call :func:`fit`: the one fit-and-evaluate loop of
:func:`~recsys.training.fit_eval.fit_and_evaluate` (best checkpoint -> val / test
AUC, log loss, ECE), then the model folder. :func:`test_report` adds what only
a ranker has: the Bayes-optimal AUC (synthetic world), a non-personalised
baseline and NDCG of the re-ranked slates.

Model folder (rank 0, ``<out>/model``, sealed as a bundle): ``model_args.json`` +
``weights.safetensors`` (:mod:`recsys.artifacts.models`), ``features.json`` (the
feature set the export and the runtime check) and ``parity_rows.safetensors``
(real test rows for export parity).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as L
import torch

from recsys.artifacts.models import load_model, save_model, seal_model_dir
from recsys.evaluation.binary import binary_metrics, roc_auc
from recsys.evaluation.slates import slate_ndcg
from recsys.features.ranker import FeatureTable
from recsys.training.fit_eval import fit_and_evaluate
from recsys.training.ranker.data import RankerDataModule, position_popularity_baseline
from recsys.training.ranker.module import RankerModule
from recsys.utils.errors import RecsysError
from recsys.utils.io import atomic_path, write_json_atomic


def save_parity_rows(table: FeatureTable, n: int, path: Path) -> int:
    """The first ``n`` rows of ``table`` (real test rows, with ``label``) as safetensors, for export parity."""
    from safetensors.numpy import save_file

    rows = {k: np.ascontiguousarray(v[:n]) for k, v in table.features.items()}
    rows["label"] = np.ascontiguousarray(table.label[:n])  # for the int8 AUC check; not a model input
    with atomic_path(path) as tmp:
        save_file(rows, str(tmp), metadata={"feature_set_version": table.version})
    return len(table.label[:n])


def score_rows(net: Any, features: dict[str, np.ndarray], batch: int = 65536) -> np.ndarray:
    """Logits ``(N,)`` of ``net`` on feature columns (eval mode, no gradients)."""
    net.eval()
    outs = []
    with torch.inference_mode():
        for s in range(0, len(next(iter(features.values()))), batch):
            outs.append(net(**{k: torch.from_numpy(np.ascontiguousarray(v[s:s + batch]))
                               for k, v in features.items() if k in net.input_names}).numpy())
    return np.concatenate(outs)


def _check_rebuild(net: Any, model_dir: Path, table: FeatureTable, n: int) -> None:
    """The net rebuilt from ``model_dir`` must score ``n`` rows exactly like the evaluated one."""
    rows = {k: torch.from_numpy(np.ascontiguousarray(v[:n])) for k, v in table.features.items()
            if k in net.input_names}
    net.eval()
    with torch.no_grad():
        if not torch.equal(load_model(model_dir)(**rows), net(**rows)):
            raise RecsysError(f"{model_dir}: the rebuilt model does not reproduce the trained one")


def save_ranker_model(net: Any, model_args: dict[str, Any], table: FeatureTable, test: FeatureTable,
                      model_dir: str | Path, parity_rows: int) -> dict[str, Any]:
    """Write and seal ``model_dir`` (weights, ``model_args`` + the table's vocabularies,
    ``features.json``, the first ``parity_rows`` rows of ``test``); the rebuilt
    model must reproduce ``net``. Returns the artifact paths."""
    model_dir = Path(model_dir)
    args = {k: v for k, v in model_args.items() if k != "_target_"}
    artifacts: dict[str, Any] = save_model(net, {**args, "vocab_sizes": table.vocab_sizes,
                                                 "dense_features": table.dense}, model_dir)
    write_json_atomic(model_dir / "features.json", {
        "feature_set_version": table.version, "inputs": net.input_names,
        "categorical": list(table.vocab_sizes), "dense": table.dense, "vocab_sizes": table.vocab_sizes,
        **({"behavioural": table.meta["behavioural"]} if "behavioural" in table.meta else {})})
    n_rows = save_parity_rows(test, parity_rows, model_dir / "parity_rows.safetensors")
    seal_model_dir(model_dir)
    _check_rebuild(net, model_dir, test, n_rows)
    artifacts.update(features=str(model_dir / "features.json"),
                     parity_rows=str(model_dir / "parity_rows.safetensors"), parity_rows_n=n_rows)
    return artifacts


def fit(trainer: L.Trainer, module: RankerModule, datamodule: RankerDataModule, out: str | Path,
        model_args: dict[str, Any], resume: str | None = None, parity_rows: int = 4096) -> dict[str, Any]:
    """Fit (resuming from the verified checkpoint ``resume``), evaluate the best
    checkpoint on val and test, then on rank 0 write ``<out>/model``
    (:func:`save_ranker_model`; ``model_args``: the net's constructor arguments
    without the table's vocabularies).

    Returns ``{"metrics", "predictions", "best_checkpoint", "rank", "timings",
    "resumed_from", "model"}`` plus ``"artifacts"`` on rank 0; ``predictions``:
    test click probabilities, in the order of ``datamodule.split_table("test")``."""
    info = fit_and_evaluate(trainer, module, datamodule, None, None, ckpt_path=resume, category_column=None)
    net = module.net
    info["model"] = type(net).__name__ + (f"/{net.structure}" if hasattr(net, "structure") else "")
    info["predictions"] = module.predictions["test"]
    if trainer.global_rank == 0:
        info["artifacts"] = save_ranker_model(net, model_args, datamodule.table, datamodule.split_table("test"),
                                              Path(out) / "model", parity_rows)
    return info


def test_report(net: Any, datamodule: RankerDataModule, test_auc: float, k: int, world: Any = None) -> dict[str, Any]:
    """Test-split comparisons beyond AUC.

    * ``bayes/*``, ``bayes_auc``, ``auc_gap_to_bayes``: the true click probabilities
      of the synthetic ``world`` on the same rows (``None`` without a world);
    * ``baseline_auc``: position x item click rate (world), else item popularity before the row;
    * ``test/slate_ndcg@k/<order>``: NDCG@k of the test rows re-ranked by the model,
      per logged slate (world: the model scores every item at position 0, so the
      order is the model's, not the logger's; compared with the logged order and
      the true-relevance order; clicks carry the logger's position bias, so the same
      orders are also graded by the true relevance, ``slate_ndcg_relevance``) or
      per user candidate list (ratings; compared with ordering by prior popularity).
    """
    test = datamodule.split_table("test")
    f = test.features
    out: dict[str, Any] = {}
    if world is not None:
        bayes = binary_metrics(test.label, world.click_probability(f["user"], f["item"], f["position"]),
                               prefix="bayes/")
        out.update(bayes)
        out["bayes_auc"] = bayes["bayes/auc"]
        out["auc_gap_to_bayes"] = out["bayes_auc"] - test_auc
        out["baseline_auc"] = roc_auc(test.label, position_popularity_baseline(datamodule.split_table("train"), test))
        at_top = dict(f, position=np.zeros_like(f["position"]))
        orders = {"model": score_rows(net, at_top), "logged": -f["position"].astype(np.float64),
                  "bayes": world.relevance(f["user"], f["item"])}
        group = test.request_id
    else:
        out.update(bayes_auc=None, auc_gap_to_bayes=None)  # real data: the true click probabilities are unknown
        out["baseline_auc"] = roc_auc(test.label, f["item_log_pop"])  # item popularity before the row
        orders = {"model": score_rows(net, f), "popularity": f["item_log_pop"].astype(np.float64)}
        group = f["user"]
    for name, score in orders.items():
        res = slate_ndcg(group, test.label, score, k)
        out[f"test/slate_ndcg@{k}/{name}"] = res["ndcg"]
    if world is not None:
        rel = world.relevance(f["user"], f["item"])
        for name, score in orders.items():
            out[f"test/slate_ndcg_relevance@{k}/{name}"] = slate_ndcg(group, rel, score, k)["ndcg"]
    out["slate_ndcg"] = {"k": k, "groups_with_click": res["groups"], "groups_without_click": res["skipped"],
                         "grouped_by": "request (logged slate)" if world is not None else "user (candidate list)"}
    return out
