"""Fit a baseline on a split and evaluate it with the exact full-ranking evaluator."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from recsys.data.prepare import PreparedData
from recsys.data.splits import EvalSet, Split
from recsys.evaluation.beyond import beyond_accuracy
from recsys.evaluation.fairness_report import FairnessOptions, split_fairness
from recsys.evaluation.ranking import evaluate_ranking
from recsys.utils.sparse import CSR


class Scorer(Protocol):
    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> Any: ...

    def score(self, users: np.ndarray, history: CSR) -> Any: ...


@dataclass
class EvalOptions:
    ks: Sequence[int] = (5, 10, 20)
    exclude_history: bool = True
    ties: str = "index"
    batch_size: int | None = None
    beyond_k: int = 10
    device: str | None = None
    item_category_column: str | None = "category"
    fairness: FairnessOptions | None = None  # enabled: test metrics by user group, item exposure


def evaluate_split(model: Scorer, data: PreparedData, split: Split, opts: EvalOptions) -> dict[str, Any]:
    """Fit ``model`` on the training part, evaluate on validation and test.

    Returns metrics keyed ``val/<metric>`` and ``test/<metric>`` (test also gets
    beyond-accuracy metrics at ``beyond_k``) and timings in seconds; with
    ``opts.fairness.enabled`` also ``fairness`` (see
    :func:`recsys.evaluation.fairness_report.fairness_report`) for the test set.
    """
    users, items, _ = split.train_arrays()
    t0 = time.perf_counter()
    model.fit(users, items, data.n_users, data.n_items)
    fit_s = time.perf_counter() - t0
    out: dict[str, Any] = {}
    timings = {"fit_s": fit_s}
    counts = np.bincount(items, minlength=data.n_items + 1).astype(np.float64)
    n_train_users = len(np.unique(users))
    categories = data.item_codes(opts.item_category_column) if opts.item_category_column else None
    for name, es in (("val", split.val), ("test", split.test)):
        if len(es) == 0:
            continue
        t0 = time.perf_counter()
        fair = name == "test" and opts.fairness is not None and opts.fairness.enabled
        res = _evaluate(model, es, data.n_items, opts, top_k=opts.beyond_k if name == "test" else 0, keep_per_user=fair)
        timings[f"{name}_eval_s"] = time.perf_counter() - t0
        out.update({f"{name}/{k}": v for k, v in res.metrics.items()})
        out[f"{name}/n_users"] = res.n_users
        if res.top_items is not None:
            extra = beyond_accuracy(res.top_items, data.n_items, counts, n_train_users, item_category=categories)
            out.update({f"{name}/{k}": v for k, v in extra.items()})
        if fair:
            assert opts.fairness is not None
            t0 = time.perf_counter()
            out["fairness"] = split_fairness(data, split, res.per_user, res.top_items, opts.fairness)
            timings["fairness_s"] = time.perf_counter() - t0
    out["timings"] = timings
    return out


def _evaluate(model: Scorer, es: EvalSet, n_items: int, opts: EvalOptions, top_k: int, keep_per_user: bool = False):
    return evaluate_ranking(
        model.score, es.users, es.history, es.targets, n_items, ks=opts.ks,
        exclude_history=opts.exclude_history, ties=opts.ties, batch_size=opts.batch_size,
        device=opts.device, top_k=top_k, keep_per_user=keep_per_user,
    )
