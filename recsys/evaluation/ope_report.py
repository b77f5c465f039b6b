"""PNG plots for off-policy evaluation runs (matplotlib, Agg backend, atomic writes)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from recsys.utils.io import atomic_path


def _save(fig, path: str | Path) -> Path:  # noqa: ANN001 - matplotlib Figure
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_estimates(path: str | Path, estimates: Mapping[str, tuple[float, float, float]],
                   truth: float | None = None, title: str = "") -> Path:
    """Point estimate with its interval per estimator; ``estimates``: name -> (value, low, high)."""
    plt = _plt()
    names = list(estimates)
    v = np.array([estimates[n] for n in names], dtype=np.float64)  # (E, 3)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(names))
    err = np.abs(np.stack([v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]]))
    ax.errorbar(x, v[:, 0], yerr=np.nan_to_num(err), fmt="o", capsize=4)
    if truth is not None:
        ax.axhline(truth, color="k", ls="--", lw=1, label=f"truth {truth:.4f}")
        ax.legend()
    ax.set_xticks(x, names)
    ax.set_ylabel("expected clicks per slate")
    ax.set_title(title)
    return _save(fig, path)


def plot_bench(path: str | Path, per_seed: Mapping[str, Sequence[float]], truth: float, title: str = "") -> Path:
    """Estimates over seeds (one box per estimator) against the true value."""
    plt = _plt()
    names = list(per_seed)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.boxplot([np.asarray(per_seed[n]) for n in names])
    ax.set_xticks(np.arange(1, len(names) + 1), names)
    ax.axhline(truth, color="k", ls="--", lw=1, label=f"truth {truth:.4f}")
    ax.legend()
    ax.set_ylabel("estimate")
    ax.set_title(title)
    return _save(fig, path)


def plot_alignment(path: str | Path, names: Sequence[str], truth: Sequence[float],
                   columns: Mapping[str, Sequence[float]]) -> Path:
    """One panel per metric (offline NDCG, OPE estimates): metric vs the true online value."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.5), squeeze=False)
    for ax, (label, vals) in zip(axes[0], columns.items()):
        ax.scatter(vals, truth)
        for n, x, y in zip(names, vals, truth):
            ax.annotate(n, (x, y), fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("true online value")
    return _save(fig, path)


def plot_regret(path: str | Path, curves: Mapping[str, Sequence[float]]) -> Path:
    """Cumulative regret against the oracle slate, one line per policy."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, cum in curves.items():
        ax.plot(range(1, len(cum) + 1), cum, label=name)
    ax.set_xlabel("requests served")
    ax.set_ylabel("cumulative regret (expected clicks)")
    ax.set_title("Online simulation: regret vs oracle")
    ax.legend(fontsize=8)
    return _save(fig, path)
