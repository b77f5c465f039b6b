"""A/B report: Markdown text and PNG plots from an analysis result dict.

Works on the JSON-ready dict of :func:`recsys.experiments.analysis.analyze`
(plain data, so this module needs no experiment code). Plots use matplotlib's
Agg backend, imported lazily.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from recsys.utils.io import atomic_path


def _plt():  # noqa: ANN202 - matplotlib.pyplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_by_arm(result: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per metric: each arm's mean with its (1 - alpha) interval."""
    plt = _plt()
    metrics = result["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, (name, m) in zip(axes[0], metrics.items()):
        arms = list(m["arms"])
        means = [m["arms"][a]["mean"] for a in arms]
        err = [[m["arms"][a]["mean"] - m["arms"][a]["ci_low"] for a in arms],
               [m["arms"][a]["ci_high"] - m["arms"][a]["mean"] for a in arms]]
        ax.errorbar(range(len(arms)), means, yerr=err, fmt="o", capsize=6)
        ax.set_xticks(range(len(arms)), arms)
        ax.set_xlim(-0.6, len(arms) - 0.4)
        ax.set_title(f"{name} ({m['type']})")
        ax.set_ylabel("mean per user")
        ax.grid(alpha=0.3)
    fig.suptitle(f"metric by arm, {1 - result['alpha_per_comparison']:.0%} CI")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_sequential(result: Mapping[str, Any], path: str | Path) -> Path | None:
    """Per metric and treatment: always-valid vs naive p-value over exposure time
    (top) and the confidence sequence of the difference (bottom). ``None`` when
    the result has no sequential curves (no timestamp column)."""
    curves = [(n, t, c["sequential"]["curve"]) for n, m in result["metrics"].items()
              for t, c in m["comparisons"].items() if "curve" in c["sequential"]]
    if not curves:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, len(curves), figsize=(4.6 * len(curves), 6), squeeze=False)
    alpha = result["alpha_per_comparison"]
    for j, (name, arm, cv) in enumerate(curves):
        days = [(t - cv["time"][0]) / 86400.0 for t in cv["time"]]
        top, bottom = axes[0][j], axes[1][j]
        top.semilogy(days, cv["p_value"], label="always-valid (mSPRT)")
        top.semilogy(days, cv["naive_p_value"], label="naive t-test", alpha=0.7)
        top.axhline(alpha, color="k", ls="--", lw=0.8, label=f"alpha={alpha:g}")
        top.set_title(f"{name}: {arm} vs control")
        top.set_ylabel("p-value")
        top.legend(fontsize=7)
        bottom.fill_between(days, cv["ci_low"], cv["ci_high"], alpha=0.3, label="confidence sequence")
        bottom.plot(days, cv["diff"], label="difference")
        bottom.axhline(0.0, color="k", lw=0.8)
        bottom.set_xlabel("days since first exposure")
        bottom.set_ylabel("treatment - control")
        bottom.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _f(x: Any, pct: bool = False) -> str:
    if x is None or x != x:
        return "n/a"
    return f"{x:+.2%}" if pct else (f"{x:.3g}" if abs(x) < 1e-3 and x != 0 else f"{x:.4f}")


def markdown_report(result: Mapping[str, Any], title: str, plots: Mapping[str, str] | None = None,
                    meta: Mapping[str, Any] | None = None) -> str:
    """A self-contained Markdown report (plots referenced by relative file name)."""
    srm = result["srm"]
    lines = [f"# A/B report: {title}", ""]
    for k, v in (meta or {}).items():
        lines.append(f"- **{k}**: {v}")
    lines += [f"- **users**: {result['n_users']} ({', '.join(f'{a}: {n}' for a, n in result['arms'].items())})",
              f"- **alpha** {result['alpha']:g} ({result['correction']}; per comparison {result['alpha_per_comparison']:g})",
              "", "## Sample-ratio mismatch", "",
              f"chi-square = {srm['chi2']:.3f} (df {srm['df']}), p = {_f(srm['p_value'])}, observed shares "
              f"{', '.join(f'{s:.4f}' for s in srm['observed_share'])}: "
              + ("**SRM DETECTED: do not trust the effects below until assignment/logging is fixed.**"
                 if srm["flagged"] else f"no mismatch at p < {srm['alpha']:g}."), ""]
    if "assignment" in result:
        a = result["assignment"]
        lines += [f"Assignment re-check from the salt: {a['mismatches']} mismatches "
                  f"({a['mismatch_rate']:.3%} of users).", ""]
    lines += ["## Effects", "",
              "| metric | arm | control mean | arm mean | lift | lift CI | p (test) | CUPED lift | CUPED p "
              "| var. red. | always-valid p | rel. MDE | significant |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in result["metrics"].items():
        ctrl = m["arms"][result["control"]]["mean"]
        vr = m.get("cuped", {}).get("variance_reduction")
        for arm, c in m["comparisons"].items():
            cu = c.get("cuped")
            seq = c["sequential"].get("p_value", c["sequential"]["p_value_final_look"])
            lines.append(
                f"| {name} | {arm} | {_f(ctrl)} | {_f(m['arms'][arm]['mean'])} | {_f(c['lift']['lift'], True)} | "
                f"[{_f(c['lift']['ci_low'], True)}, {_f(c['lift']['ci_high'], True)}] | {_f(c['p_value'])} "
                f"({c['test']}) | {_f(cu['lift']['lift'], True) if cu else '-'} | {_f(cu['p_value']) if cu else '-'} "
                f"| {_f(vr, True) if vr is not None else '-'} | {_f(seq)} | {_f(c['mde']['relative'], True)} "
                f"| {'yes' if c['significant'] else 'no'} |")
    lines += ["", "Lift intervals use the delta method; CUPED uses the pre-period covariate with "
              "theta = cov/var pooled within arms; 'significant' uses the CUPED test when a covariate is "
              "configured, else the raw test. The always-valid p-value is the normal-mixture mSPRT "
              "(valid under continuous peeking). rel. MDE: smallest relative effect detectable with "
              f"power {result.get('power', 0.8):g} "
              "at the observed sample size.", ""]
    for caption, file in (plots or {}).items():
        lines += [f"## {caption}", "", f"![{caption}]({file})", ""]
    return "\n".join(lines)


def result_table(result: dict) -> str:
    """The console table of an A/B analysis: SRM, then lift / p-values per metric and arm."""
    srm = result["srm"]
    rows = [f"SRM: p={srm['p_value']:.3g} {'FLAGGED' if srm['flagged'] else 'ok'}  arms={result['arms']}",
            f"{'metric':<12}{'arm':<12}{'lift':>9}{'p':>10}{'cuped p':>10}{'seq p':>10}  significant"]
    for name, m in result["metrics"].items():
        for arm, c in m["comparisons"].items():
            cp = c["cuped"]["p_value"] if "cuped" in c else float("nan")
            sp = c["sequential"].get("p_value", c["sequential"]["p_value_final_look"])
            rows.append(f"{name:<12}{arm:<12}{c['lift']['lift']:>+9.2%}{c['p_value']:>10.3g}{cp:>10.3g}"
                        f"{sp:>10.3g}  {'yes' if c['significant'] else 'no'}")
    return "\n".join(rows)
