"""Calibration of predicted probabilities beyond ECE (numpy + matplotlib only):
the binned reliability table and the reliability diagram. ECE itself is
:func:`recsys.evaluation.binary.expected_calibration_error`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


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
