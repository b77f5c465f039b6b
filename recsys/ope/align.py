"""The study behind ``recsys ope align``: does an offline metric rank model variants
like their true online value, and do the OPE estimates?"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from recsys.evaluation import ope as O
from recsys.ope.evaluate import EstimatorOptions, crossfit
from recsys.ope.setup import Setup, model_scores, true_value
from recsys.policies import ScorePolicy
from recsys.utils.errors import RecsysError
from recsys.utils.progress import progress

if TYPE_CHECKING:
    from recsys.training.baselines import EvalOptions

#: (column, column) pairs whose rank agreement is reported
PAIRS = {"offline_ndcg~truth": ("offline_ndcg", "truth"), "DR~truth": ("DR", "truth"),
         "SNIPS~truth": ("SNIPS", "truth"), "DM~truth": ("DM", "truth"), "offline_ndcg~DR": ("offline_ndcg", "DR")}


def run_align(s: Setup, variants: Mapping[str, Callable[[], Any]], eval_opts: EvalOptions, opts: EstimatorOptions,
              seed: int, k: int = 10, plot_path: str | Path | None = None) -> dict[str, Any]:
    """For each variant (name -> a builder of an unfitted model): offline NDCG@k on the
    test split, the true online value of its top-k slate policy over the logged
    requests' users, and its DR / SNIPS / IPS / DM estimates on the world's log.

    Returns a JSON-ready dict: ``variants`` (name -> offline_ndcg, truth, DR, SNIPS,
    IPS, DM, ess, tv_logger), ``kendall_tau`` and ``spearman`` per pair of
    :data:`PAIRS`, ``split``, ``plot``, ``timings``.
    """
    from scipy import stats

    from recsys.training.baselines import evaluate_split  # the exact evaluator imports torch

    t0 = time.perf_counter()
    if s.world is None or s.data is None or s.split is None:
        raise RecsysError("`recsys ope align` needs data=synthetic")
    data, split = s.data, s.split
    log = s.log
    cf = crossfit(log, opts, seed)
    metric = f"test/ndcg@{k}"
    rows: dict[str, dict[str, float]] = {}
    for name, build in progress(variants.items(), "ope align (variants)", total=len(variants)):
        model = build()
        res = evaluate_split(model, data, split, eval_opts)  # fits on the train split
        pol = ScorePolicy(model_scores(model, s), s.n_actions, s.slate_size, "topk")
        truth, tv, _ = true_value(s.world, pol.probs, log.users)
        d = cf.ope_data(pol.probs)
        est = O.point_estimates(d, opts.clip_value, float(opts.switch_tau))
        dg = O.diagnose(d, opts.clip_value)
        rows[name] = {"offline_ndcg": res[metric], "truth": truth, "DR": est["DR"].value,
                      "SNIPS": est["SNIPS"].value, "IPS": est["IPS"].value, "DM": est["DM"].value,
                      "ess": dg.ess, "tv_logger": tv}
    names = list(rows)
    col = {c: np.array([rows[n][c] for n in names]) for c in ("offline_ndcg", "truth", "DR", "SNIPS", "DM")}
    tau = {p: float(stats.kendalltau(col[a], col[b]).statistic) for p, (a, b) in PAIRS.items()}
    rho = {p: float(stats.spearmanr(col[a], col[b]).statistic) for p, (a, b) in PAIRS.items()}
    out: dict[str, Any] = {"variants": rows, "kendall_tau": tau, "spearman": rho, "split": split.info}
    if plot_path is not None:
        from recsys.evaluation.ope_report import plot_alignment

        out["plot"] = str(plot_alignment(plot_path, names, col["truth"].tolist(),
                                         {f"offline NDCG@{k}": col["offline_ndcg"], "DR estimate": col["DR"],
                                          "SNIPS estimate": col["SNIPS"]}))
    out["timings"] = {"total_s": time.perf_counter() - t0}
    return out
