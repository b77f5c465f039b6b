"""Reports of off-policy evaluation runs: PNG plots (matplotlib, Agg backend, atomic
writes) and text tables from the JSON-ready dicts that :mod:`recsys.ope` returns."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from recsys.utils.io import atomic_path


def fmt(v: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits (a CTR of 0.004123 stays 0.004123, not 0.0041)."""
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    v = float(v)
    if np.isnan(v):
        return "nan"
    return f"{v:.{digits}g}"


def format_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str], label: str = "name",
                 digits: int = 4) -> str:
    """One row per estimator / variant, one 12-wide column per value, ``digits`` significant digits."""
    name_w = max([len(label), *(len(r) for r in rows)])
    head = f"{label:<{name_w}}  " + "  ".join(f"{c:>12}" for c in columns)
    lines = [head, "-" * len(head)]
    for name, vals in rows.items():
        lines.append(f"{name:<{name_w}}  " + "  ".join(f"{fmt(vals.get(c, float('nan')), digits):>12}"
                                                      for c in columns))
    return "\n".join(lines)


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
        ax.axhline(truth, color="k", ls="--", lw=1, label=f"truth {truth:.4g}")
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
    ax.axhline(truth, color="k", ls="--", lw=1, label=f"truth {truth:.4g}")
    ax.legend()
    ax.set_ylabel("estimate")
    ax.set_title(title)
    return _save(fig, path)


def plot_alignment(path: str | Path, names: Sequence[str], truth: Sequence[float],
                   columns: Mapping[str, Sequence[float] | np.ndarray]) -> Path:
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


def plot_regret(path: str | Path, curves: Mapping[str, Sequence[float] | np.ndarray]) -> Path:
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


# --- text reports: the dicts returned by recsys.ope -> lines to print --------------------

def policy_report(out: Mapping[str, Any]) -> str:
    """:func:`recsys.ope.evaluate_policy`'s result: context line, estimates table
    (with the truth where known), diagnostics and warnings."""
    tv, truth = out["total_variation"], out["true_value"]
    extra = [f"trained on the first {out['trained_on_requests']} rounds, evaluated on the rest"] \
        if "trained_on_requests" in out else []
    lines = [f"policy {out['policy']} on {out['n_requests']} requests x {out['slate_size']} positions "
             f"({out['source']}; actions: {out.get('catalogue', '?')}); logger's on-policy value "
             f"{fmt(out['logged_value'])}"
             + (f"; TV(pi, logger) {tv:.3f}, KL {out['kl_divergence']:.3f}" if tv is not None else ""),
             *extra,
             format_table(out["estimates"], ["estimate", "ci_low", "ci_high", "clipped"]
                          + (["truth", "rel_error"] if truth is not None else []), label="name")]
    if out.get("interval"):
        lines.append(f"intervals: {int(100 * (1 - out.get('alpha', 0.05)))}% {out['interval']}")
    dg = out["diagnostics"]
    lines.append(f"diagnostics: ESS {dg['ess']:.0f}/{dg['n_requests']} requests, max weight {dg['max_weight']:.1f}, "
                 f"mean weight {dg['mean_weight']:.3f}, unsupported mass {dg['unsupported_mass']:.2%}, "
                 f"clipped {dg['clipped_share']:.2%}")
    lines += [f"warning: {w}" for w in dg["warnings"]]
    return "\n".join(lines)


def bench_report(out: Mapping[str, Any]) -> str:
    """:func:`recsys.ope.run_bench`'s result: the policy, then bias / RMSE / coverage per estimator."""
    return "\n".join([
        f"policy {out['policy']}: true value {fmt(out['true_value'])} (logger {fmt(out['logger_value'])}); "
        f"TV(pi, logger) {out['total_variation']:.3f}, KL {out['kl_divergence']:.3f}; {out['n_seeds']} seeds "
        f"x {out['n_requests']} requests x {out['slate_size']} positions",
        format_table(out["table"], ["mean", "bias", "rmse", "rel_error", "coverage", "sd", "ci_width"], label="name"),
        "calibrated 95% intervals have ci_width ~ 3.92 sd; with 20 seeds, 20/20 covering has "
        "probability 0.36 even then",
        f"true value {fmt(out['true_value'])}; mean ESS {out['mean_ess']:.0f} of {out['n_requests']} requests"])


def align_report(out: Mapping[str, Any]) -> str:
    """:func:`recsys.ope.run_align`'s result: one row per variant, then rank agreement per pair."""
    lines = [format_table(out["variants"], ["offline_ndcg", "truth", "DR", "SNIPS", "DM", "ess"], label="name"),
             f"{'pair':<20}{'kendall':>10}{'spearman':>10}"]
    lines += [f"{p:<20}{out['kendall_tau'][p]:>10.3f}{out['spearman'][p]:>10.3f}" for p in out["kendall_tau"]]
    return "\n".join(lines)


def regret_report(out: Mapping[str, Any]) -> str:
    """:func:`recsys.ope.run_regret`'s result: cumulative regret per policy at the checkpoints."""
    rows = out["regret"]
    return "\n".join([
        f"cumulative regret vs the oracle slate ({out['n_requests']} requests x {out['slate_size']} positions, "
        f"bandits update every {out['batch_size']} requests); oracle value {out['oracle_value']:.4f} clicks "
        "per slate",
        format_table(rows, list(next(iter(rows.values()))), label="name")])
