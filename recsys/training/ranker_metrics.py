"""Ranker evaluation beyond AUC (numpy + matplotlib only): NDCG of re-ranked
slates / candidate lists and the reliability diagram.

``slate_ndcg(group, label, score, k)`` re-ranks the rows of each group (a
logged slate, or one user's candidate list) by ``score`` (descending; ties keep
the smaller row index first) and averages NDCG@k of the 0/1 labels over the
groups with at least one positive (others have no ideal ranking and are
skipped; their count is reported).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def slate_ndcg(group: np.ndarray, label: np.ndarray, score: np.ndarray, k: int) -> dict[str, float]:
    """``{"ndcg": mean NDCG@k over groups with a positive, "groups": their count, "skipped": groups without}``."""
    g = np.asarray(group)
    y = np.asarray(label, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    if not (len(g) == len(y) == len(s)):
        raise ValueError(f"group, label, score lengths differ: {len(g)}, {len(y)}, {len(s)}")
    _, gid = np.unique(g, return_inverse=True)
    n_groups = int(gid.max()) + 1 if len(gid) else 0
    idx = np.arange(len(g))

    def dcg(order: np.ndarray) -> np.ndarray:
        gs = gid[order]
        start = np.r_[0, np.flatnonzero(gs[1:] != gs[:-1]) + 1]
        rank = np.arange(len(gs)) - np.repeat(start, np.diff(np.r_[start, len(gs)]))
        gain = np.where(rank < k, y[order] / np.log2(rank + 2.0), 0.0)
        return np.bincount(gs, gain, minlength=n_groups)

    got = dcg(np.lexsort((idx, -s, gid)))
    ideal = dcg(np.lexsort((idx, -y, gid)))
    has = ideal > 0
    return {"ndcg": float((got[has] / ideal[has]).mean()) if has.any() else float("nan"),
            "groups": int(has.sum()), "skipped": int((~has).sum())}


def reliability_table(label: np.ndarray, prob: np.ndarray, n_bins: int = 15) -> dict[str, list[float]]:
    """Per equal-width bin: mean predicted probability, observed positive rate, count."""
    y = np.asarray(label, dtype=np.float64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    n = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, p, n_bins) / n
        rate = np.bincount(b, y, n_bins) / n
    keep = n > 0
    return {"mean_predicted": mean_p[keep].tolist(), "observed_rate": rate[keep].tolist(), "count": n[keep].tolist()}


def reliability_plot(label: np.ndarray, prob: np.ndarray, path: str | Path, title: str = "",
                     ece: float | None = None, n_bins: int = 15) -> dict[str, Any]:
    """Reliability diagram (PNG, matplotlib Agg) with the diagonal and a count
    histogram below; returns the binned table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = reliability_table(label, prob, n_bins)
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.plot(table["mean_predicted"], table["observed_rate"], "o-", label="model")
    ax.set_ylabel("observed positive rate")
    ax.set_title(title + (f"  ECE {ece:.4f}" if ece is not None else ""))
    ax.legend(loc="upper left")
    hx.bar(table["mean_predicted"], table["count"], width=1.0 / n_bins * 0.8)
    hx.set_yscale("log")
    hx.set_xlabel("predicted probability")
    hx.set_ylabel("rows")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
    return table
