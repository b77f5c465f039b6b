"""Feature drift between a reference and a current sample: PSI and KS for
numeric features, PSI and chi-square for categorical ones, per-feature
histograms (PNG) and ``summary.json``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import polars as pl

from recsys.utils.errors import DataError
from recsys.utils.io import atomic_path, write_json_atomic

DEFAULTS = {"psi": 0.2, "ks": 0.1, "chi2_pvalue": 0.001, "cramers_v": 0.1, "bins": 10, "max_categories": 50}
EPS = 1e-6


def psi(ref_frac: np.ndarray, cur_frac: np.ndarray) -> float:
    """Population stability index of two binned distributions (fractions)."""
    r, c = np.clip(ref_frac, EPS, None), np.clip(cur_frac, EPS, None)
    return float(((c - r) * np.log(c / r)).sum())


def numeric_drift(ref: np.ndarray, cur: np.ndarray, bins: int) -> dict[str, Any]:
    from scipy.stats import ks_2samp

    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    inner = edges[1:-1]
    rc = np.bincount(np.searchsorted(inner, ref, side="right"), minlength=len(inner) + 1)
    cc = np.bincount(np.searchsorted(inner, cur, side="right"), minlength=len(inner) + 1)
    ks = ks_2samp(ref, cur)
    return {"kind": "numeric", "psi": psi(rc / rc.sum(), cc / cc.sum()), "ks": float(ks.statistic),
            "ks_pvalue": float(ks.pvalue), "ref_mean": float(ref.mean()), "cur_mean": float(cur.mean()),
            "_edges": edges, "_counts": (rc, cc)}


def categorical_drift(ref: np.ndarray, cur: np.ndarray, max_categories: int) -> dict[str, Any]:
    from scipy.stats import chi2_contingency

    cats, counts = np.unique(ref.astype(str), return_counts=True)
    top = cats[np.argsort(-counts, kind="stable")][:max_categories]
    def bucket(x: np.ndarray) -> np.ndarray:
        pos = {c: i for i, c in enumerate(top)}
        return np.fromiter((pos.get(v, len(top)) for v in x.astype(str)), dtype=np.int64, count=len(x))
    rc = np.bincount(bucket(ref), minlength=len(top) + 1)
    cc = np.bincount(bucket(cur), minlength=len(top) + 1)
    keep = (rc + cc) > 0
    table = np.stack([rc[keep], cc[keep]])
    if table.shape[1] > 1:
        chi2, p, _, _ = chi2_contingency(table)
        v = float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))
    else:
        chi2, p, v = 0.0, 1.0, 0.0
    return {"kind": "categorical", "psi": psi(rc / rc.sum(), cc / cc.sum()), "chi2": float(chi2),
            "chi2_pvalue": float(p), "cramers_v": v, "_labels": [*top.tolist(), "(other)"], "_counts": (rc, cc)}


def _plot(name: str, res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rc, cc = res["_counts"]
    x = np.arange(len(rc))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(x - 0.2, rc / max(rc.sum(), 1), 0.4, label="reference")
    ax.bar(x + 0.2, cc / max(cc.sum(), 1), 0.4, label="current")
    if res["kind"] == "numeric":
        e = res["_edges"]
        ax.set_xticks(x, [f"{e[i]:.3g}" for i in range(len(rc))], rotation=45, fontsize=7)
    else:
        ax.set_xticks(x, [str(v)[:10] for v in res["_labels"]], rotation=45, fontsize=7)
    ax.set_title(f"{name}: PSI {res['psi']:.3f}{' (drift)' if res['drift'] else ''}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def drift_report(reference: pl.DataFrame, current: pl.DataFrame, out_dir: str | Path,
                 thresholds: Mapping[str, float] | None = None, features: list[str] | None = None,
                 exclude: tuple[str, ...] = ("user_id", "item_id", "category", "session_id"),
                 plots: bool = True, labels: tuple[str, str] = ("reference", "current")) -> dict[str, Any]:
    """Compare every shared column (or ``features``); flag drift past ``thresholds``:
    numeric - PSI > psi or KS statistic > ks; categorical - PSI > psi or (chi-square
    p < chi2_pvalue and Cramer's V > cramers_v). Writes ``<out>/plots/<f>.png`` and
    ``<out>/drift.json``; returns the summary."""
    th = {**DEFAULTS, **(thresholds or {})}
    cols = features or [c for c in reference.columns if c in current.columns and c not in exclude]
    if not cols:
        raise DataError(labels[1], "no feature column shared with the reference")
    out = Path(out_dir)
    per: dict[str, Any] = {}
    for c in cols:
        for df, lab in ((reference, labels[0]), (current, labels[1])):
            if c not in df.columns:
                raise DataError(lab, "missing feature column", column=c)
            if df.height == 0:
                raise DataError(lab, "empty file (0 rows)")
        dt = reference.schema[c]
        if dt.is_numeric():
            r = reference[c].cast(pl.Float64).to_numpy()
            k = current[c].cast(pl.Float64).to_numpy()
            if not np.isfinite(r).any() or not np.isfinite(k).any():
                raise DataError(labels[0] if not np.isfinite(r).any() else labels[1], "no finite values", column=c)
            res = numeric_drift(r, k, int(th["bins"]))
            res["drift"] = bool(res["psi"] > th["psi"] or res["ks"] > th["ks"])
        else:
            res = categorical_drift(reference[c].cast(pl.String).fill_null("(null)").to_numpy(),
                                    current[c].cast(pl.String).fill_null("(null)").to_numpy(),
                                    int(th["max_categories"]))
            res["drift"] = bool(res["psi"] > th["psi"] or (res["chi2_pvalue"] < th["chi2_pvalue"]
                                                          and res["cramers_v"] > th["cramers_v"]))
        if plots:
            _plot(c, res, out / "plots" / f"{c}.png")
            res["plot"] = f"plots/{c}.png"
        per[c] = {k: v for k, v in res.items() if not k.startswith("_")}
    summary = {"n_features": len(per), "n_drifted": sum(v["drift"] for v in per.values()),
               "drifted": sorted(k for k, v in per.items() if v["drift"]), "thresholds": th,
               "n_reference": reference.height, "n_current": current.height, "features": per}
    write_json_atomic(out / "drift.json", summary)
    return summary


def report_lines(res: Mapping[str, Any]) -> list[str]:
    """One line per feature (PSI and KS or the chi-square p-value), then the count drifted."""
    lines = []
    for name, r in res["features"].items():
        stat = f"KS {r['ks']:.3f}" if r["kind"] == "numeric" else f"chi2 p {r['chi2_pvalue']:.2g}"
        lines.append(f"{'DRIFT' if r['drift'] else 'ok   '} {name:<32} PSI {r['psi']:.3f}  {stat}")
    lines.append(f"{res['n_drifted']} of {res['n_features']} features drifted")
    return lines
