"""Does the fairness report find a disparity that is there, and only then?

:func:`planted_disparity_study` generates, for each seed, two synthetic worlds
that differ only in the planted disparity (``SyntheticConfig.weak_signal_users``
/ ``weak_signal_strength``: with that probability each item the chosen users
consume is uniform noise), fits the same baseline on a leave-one-out split,
evaluates the test set with the exact full-ranking evaluator and asks
:func:`~recsys.evaluation.fairness.group_metrics` whether the chosen users' gap to
the rest has a bootstrap interval excluding 0. The default users
(``region=north``, ~30%) are defined by an attribute drawn independently of all
behaviour, so in the world without the plant the true gap is exactly 0 and every
interval excluding 0 is a false positive.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from recsys.data.prepare import prepare
from recsys.data.splits import LeaveOneOut
from recsys.data.synthetic import weak_signal_spec
from recsys.data.synthetic_source import SyntheticLoader
from recsys.evaluation.fairness import gap_excludes_zero, group_metrics
from recsys.evaluation.ranking import evaluate_ranking
from recsys.models.baselines import EASE


def _default_model() -> Any:
    return EASE()


def disparity_trial(seed: int, planted: bool, *, weak_users: str = "region=north", strength: float = 0.5,
                    metric: str = "ndcg@10", n_users: int = 2000, n_items: int = 1000, n_boot: int = 1000,
                    alpha: float = 0.05, model_factory: Callable[[], Any] = _default_model) -> dict[str, Any]:
    """One world (seed, with or without the plant) -> the chosen users' gap and its interval."""
    spec = weak_signal_spec(weak_users)
    if spec is None:
        raise ValueError(f"weak_users must be 'column=value' (group, age_bucket or region), got {weak_users!r}")
    column, value = spec
    loader = SyntheticLoader(n_users=n_users, n_items=n_items, seed=seed, weak_signal_users=weak_users,
                             weak_signal_strength=strength if planted else 0.0)
    data = prepare(loader, None, "synthetic", event_types=["click"])
    split = LeaveOneOut().split(data)
    users, items, _ = split.train_arrays()
    model = model_factory().fit(users, items, data.n_users, data.n_items)
    es = split.test
    k = int(metric.split("@")[1]) if "@" in metric else 10
    res = evaluate_ranking(model.score, es.users, es.history, es.targets, data.n_items, ks=(k,),
                           keep_per_user=True, device="cpu")
    attr = np.full(data.n_users + 1, None, dtype=object)
    attr[data.users.column("user_idx").to_numpy()] = data.users.column(column).to_pylist()
    labels = np.where(attr[es.users] == value, "weak", "rest")
    rep = group_metrics(res.per_user, labels, [metric], n_boot=n_boot, alpha=alpha, seed=seed)
    g = rep["groups"]["weak"][metric]
    return {"seed": seed, "planted": planted, "n_weak": rep["groups"]["weak"]["n"], "n_rest": rep["groups"]["rest"]["n"],
            "mean": res.metrics[metric], "weak_mean": g["mean"], "gap": g["gap"], "gap_ci": list(g["gap_ci"]),
            "excludes_zero": gap_excludes_zero(rep, "weak", metric), "below_zero": bool(g["gap_ci"][1] < 0)}


def planted_disparity_study(seeds: Sequence[int] = tuple(range(20)), **kwargs: Any) -> dict[str, Any]:
    """:func:`disparity_trial` with and without the plant for every seed.

    Returns the trials and ``detection_rate`` (planted worlds whose gap interval
    lies below 0), ``false_positive_rate`` (unplanted worlds whose interval
    excludes 0, either side), the mean gaps and the seconds taken.
    """
    t0 = time.perf_counter()
    trials = [disparity_trial(s, planted, **kwargs) for s in seeds for planted in (True, False)]
    planted = [t for t in trials if t["planted"]]
    null = [t for t in trials if not t["planted"]]
    return {
        "settings": {"seeds": list(seeds), **{k: v for k, v in kwargs.items() if k != "model_factory"}},
        "detection_rate": float(np.mean([t["below_zero"] for t in planted])),
        "false_positive_rate": float(np.mean([t["excludes_zero"] for t in null])),
        "mean_gap_planted": float(np.mean([t["gap"] for t in planted])),
        "mean_gap_null": float(np.mean([t["gap"] for t in null])),
        "trials": trials,
        "seconds": time.perf_counter() - t0,
    }
