"""Metrics for binary predictions on arrays: ROC AUC (ties averaged), log loss,
expected calibration error."""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(label: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC of ``score`` (N,) for 0/1 ``label`` (N,); ties count 1/2.
    NaN when one class is absent."""
    y = np.asarray(label).astype(bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, dtype=np.float64).ravel())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(label: np.ndarray, prob: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities ``prob`` (N,)."""
    y = np.asarray(label, dtype=np.float64).ravel()
    p = np.clip(np.asarray(prob, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def expected_calibration_error(label: np.ndarray, prob: np.ndarray, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width probability bins: sum_b (n_b/N) |mean(y)_b - mean(p)_b|."""
    y = np.asarray(label, dtype=np.float64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if len(y) == 0:
        return float("nan")
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    n = np.bincount(b, minlength=n_bins)
    gap = np.abs(np.bincount(b, weights=y, minlength=n_bins) - np.bincount(b, weights=p, minlength=n_bins))
    return float(gap.sum() / len(y)) if n.sum() else float("nan")


def binary_metrics(label: np.ndarray, prob: np.ndarray, prefix: str = "") -> dict[str, float]:
    """``{prefix}auc``, ``{prefix}log_loss``, ``{prefix}ece`` and the positive rate."""
    return {f"{prefix}auc": roc_auc(label, prob), f"{prefix}log_loss": log_loss(label, prob),
            f"{prefix}ece": expected_calibration_error(label, prob),
            f"{prefix}ctr": float(np.mean(label)) if len(label) else float("nan")}
