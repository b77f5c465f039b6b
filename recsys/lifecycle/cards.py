"""Model cards generated from the registry: Markdown, and a self-contained HTML page
(plots inlined as base64 PNG, no external file or script).

Sections: intended use, data provenance, metrics overall (and by group where the
lineage carries group metrics; otherwise said to be not available), assumptions, gate
evidence (the latest promotion attempt of the version), limits, training cost (device,
time, estimated energy with the method), and the version's audit records.

Energy is an *estimate*, never a measurement: training seconds x an assumed power
draw (:data:`CPU_CORE_W` watts per CPU core used, or :data:`GPU_W`, the board power of
the GPU); the card states the numbers it used.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from recsys.lifecycle.registry import Registry, Version

#: assumed average power draw (watts) by device, for the energy estimate
CPU_CORE_W = 10.0
GPU_W = {"H100": 700.0, "H200": 700.0, "A100": 400.0, "default": 300.0}

_DEFAULT_USE = {
    "run": "Next-item recommendation (candidate generation / scoring) for users with an interaction history, "
           "evaluated offline by exact full-catalogue ranking.",
    "query_encoder": "Serving-time query encoder: encodes a user's recent items into a vector searched against the "
                     "item table / ANN index of the same embedding version.",
    "ranker": "Click-through ranking of retrieved candidates in the decision service.",
    "index": "Approximate nearest-neighbour retrieval over item vectors of one embedding version.",
}
_DEFAULT_ASSUMPTIONS = [
    "Users' future behaviour resembles the training window (stationarity); drift is monitored, not assumed away.",
    "Offline metrics are measured on held-out interactions of the same users (the split under Data provenance), "
    "history items excluded; they rank models, they are not online lift.",
    "Logged interactions are treated as positive feedback; exposure (what users were shown) is not corrected for "
    "unless an OPE gate says so.",
]
_DEFAULT_LIMITS = [
    "Not evaluated per user group: disaggregated (fairness) metrics are not available yet.",
    "Cold-start users and items with no history are served by the fallback chain, not by this model.",
    "Not validated for uses other than the intended use above.",
]


def training_cost(lineage: dict[str, Any]) -> dict[str, Any]:
    """Device, time and estimated energy of the training run behind a version."""
    t = lineage.get("timings") or {}
    env = lineage.get("environment") or {}
    cfg = lineage.get("config") or {}
    trainer = cfg.get("trainer") or {}
    accel = str(trainer.get("accelerator", "cpu"))
    devices = trainer.get("devices", 1)
    fit_s = t.get("fit_s")
    out: dict[str, Any] = {"accelerator": accel, "devices": devices, "platform": env.get("platform"),
                           "cpu_count": env.get("cpu_count"), "fit_s": fit_s, "total_s": t.get("total_s"),
                           "epochs": t.get("epochs_total", t.get("epochs"))}
    if fit_s is None:
        out.update(energy_wh=None, energy_method="no training time recorded")
        return out
    if accel in ("gpu", "cuda"):
        name = str(env.get("gpu") or "default")
        watts = next((w for k, w in GPU_W.items() if k in name), GPU_W["default"])
        n = int(devices) if isinstance(devices, int) else 1
        watts_total = watts * n
        method = f"fit time x {watts:g} W board power per GPU x {n} GPU(s) (assumed, not metered)"
    else:
        cores = int(env.get("cpu_count") or 1)
        watts_total = CPU_CORE_W * cores
        method = (f"fit time x {CPU_CORE_W:g} W per core x {cores} cores "
                  f"(assumed average draw, not metered; upper-bound style)")
    out.update(power_w=watts_total, energy_wh=float(fit_s) * watts_total / 3600.0, energy_method=method)
    return out


def _latest_evidence(v: Version) -> dict[str, Any] | None:
    p = v.tags.get("recsys.gates_evidence")
    if p and Path(p).is_file():
        return json.loads(Path(p).read_text())
    return None


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(v: Version, champ: Version | None, evidence: dict[str, Any] | None) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    metrics = {k: x for k, x in (v.lineage.get("metrics") or {}).items()
               if k.startswith("test/") and k.split("/")[1].split("@")[0] in ("hr", "ndcg", "recall", "mrr", "map", "auc")}
    if metrics:
        keys = sorted(metrics)
        fig, ax = plt.subplots(figsize=(7, 3))
        xs = range(len(keys))
        ax.bar([x - 0.2 for x in xs], [metrics[k] for k in keys], width=0.4, label=f"v{v.version}")
        if champ is not None and champ.version != v.version:
            cm = champ.lineage.get("metrics") or {}
            ax.bar([x + 0.2 for x in xs], [cm.get(k, 0.0) for k in keys], width=0.4, label=f"champion v{champ.version}")
        ax.set_xticks(list(xs), [k.removeprefix("test/") for k in keys], rotation=45, ha="right")
        ax.set_title("test metrics (exact full ranking)")
        ax.legend()
        out.append(("Test metrics", _png(fig)))
        plt.close(fig)
    gate = next((g for g in (evidence or {}).get("gates", []) if g["kind"] == "offline_metrics"
                 and g["evidence"].get("diff_histogram")), None)
    if gate is not None:
        ev = gate["evidence"]
        lo, hi = ev["diff_range"]
        counts = ev["diff_histogram"]
        width = (hi - lo) / len(counts) if hi > lo else 1.0
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar([lo + (i + 0.5) * width for i in range(len(counts))], counts, width=width * 0.9)
        ax.axvline(0, color="k", lw=1)
        ax.axvline(ev["mean_diff"], color="r", lw=1, label=f"mean {ev['mean_diff']:+.3g}")
        ax.set_xlabel(f"per-user {ev['metric']}: v{v.version} - champion v{ev['champion_version']}")
        ax.set_ylabel("users")
        ax.legend()
        out.append(("Paired per-user differences (offline gate)", _png(fig)))
        plt.close(fig)
    return out


def card_markdown(reg: Registry, name: str, ref: str | int) -> tuple[str, dict[str, Any]]:
    """The card of ``name`` version/alias ``ref`` as Markdown, plus the facts it shows."""
    v = reg.get(name, ref)
    champ = reg.champion(name)
    lin = v.lineage
    card = lin.get("card") or {}
    data = lin.get("data") or {}
    evidence = _latest_evidence(v)
    cost = training_cost(lin)
    audit = [r for r in reg.audit.records() if r["model"] == name
             and (r.get("version") == v.version or (r.get("details") or {}).get("from") == v.version)]
    L: list[str] = [f"# Model card: {name} v{v.version}", "",
                    f"Kind **{v.kind}**, status **{v.status}**, aliases: {', '.join(v.aliases) or 'none'}; "
                    f"registered {v.created}; class `{lin.get('model_class')}`.", ""]
    L += ["## Intended use", "", card.get("intended_use") or _DEFAULT_USE.get(v.kind, ""), ""]
    L += ["## Data provenance", "",
          f"- data: {data.get('name', '?')} ({data.get('n_users', '?')} users, {data.get('n_items', '?')} items, "
          f"{data.get('n_interactions', '?')} interactions)",
          f"- data fingerprint: `{lin.get('data_fingerprint')}`",
          f"- split: {(lin.get('split') or {}).get('split', '?')}",
          f"- git commit: `{lin.get('git_commit')}`",
          f"- resolved config sha256: `{lin.get('config_sha256')}`",
          f"- weights sha256: `{lin.get('weights_sha256')}`",
          f"- embedding version: `{lin.get('embedding_version')}`; feature set: `{lin.get('feature_set_version')}`",
          f"- registered from: `{lin.get('source')}`", ""]
    metrics = lin.get("metrics") or {}
    L += ["## Metrics", "", "Overall (test split, exact full-catalogue ranking):", "", "| metric | value |", "|---|---|"]
    L += [f"| {k} | {x:.4f} |" for k, x in sorted(metrics.items()) if k.startswith("test/")] or ["| (none) | |"]
    groups = {k: x for k, x in metrics.items() if "/group" in k}
    L += ["", "By group: " + ("see table above" if groups else
                              "not available (no disaggregated metrics recorded for this version)"), ""]
    L += ["## Assumptions", ""] + [f"- {a}" for a in ([card["assumptions"]] if card.get("assumptions")
                                                      else _DEFAULT_ASSUMPTIONS)] + [""]
    L += ["## Gate evidence", ""]
    if evidence is None:
        L += ["No promotion attempted yet.", ""]
    else:
        L += [f"Latest promotion attempt {evidence['time']}: **{evidence['outcome']}** "
              f"(champion then: {evidence['champion'] and 'v' + str(evidence['champion'])})", "",
              "| gate | status | evidence |", "|---|---|---|"]
        L += [f"| {g['gate']} | {g['status']}{' (blocks)' if g['blocks'] else ''} | {g['message']} |"
              for g in evidence["gates"]]
        L += [""]
    L += ["## Limits", ""] + [f"- {x}" for x in ([card["limits"]] if card.get("limits") else _DEFAULT_LIMITS)] + [""]
    fit_txt = "n/a" if cost["fit_s"] is None else f"{cost['fit_s']:.1f} s"
    total_txt = "n/a" if cost["total_s"] is None else f"{float(cost['total_s']):.1f} s"
    energy_txt = "n/a" if cost["energy_wh"] is None else f"{cost['energy_wh']:.3g} Wh"
    L += ["## Training cost", "",
          f"- device: {cost['accelerator']} x {cost['devices']} ({cost['platform']}, {cost['cpu_count']} CPU cores)",
          f"- time: fit {fit_txt}, {cost['epochs']} epochs, whole command {total_txt}",
          f"- estimated energy: {energy_txt} (method: {cost['energy_method']})", ""]
    L += ["## Audit trail", "", "| seq | time | who | action | outcome | why |", "|---|---|---|---|---|---|"]
    L += [f"| {r['seq']} | {r['time']} | {r['who']} | {r['action']} | {r['outcome']} | {r['why']} |" for r in audit]
    facts = {"version": v.version, "cost": cost, "evidence": evidence, "n_audit": len(audit)}
    return "\n".join(L) + "\n", facts


def _md_to_html(md: str) -> str:
    """The small Markdown subset the card uses (headings, lists, tables, bold, code)."""
    import re

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    out, in_list, in_table = [], False, False
    for line in md.splitlines():
        if in_list and not line.startswith("- "):
            out.append("</ul>")
            in_list = False
        if in_table and not line.startswith("|"):
            out.append("</table>")
            in_table = False
        if line.startswith("# "):
            out.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("## "):
            out.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells) + "</tr>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    if in_list:
        out.append("</ul>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)


def write_card(reg: Registry, name: str, ref: str | int, out_dir: str | Path) -> dict[str, Any]:
    """Write ``card.md`` and ``card.html`` (self-contained) for a version into ``out_dir``."""
    from recsys.utils.io import write_text_atomic

    md, facts = card_markdown(reg, name, ref)
    v = reg.get(name, ref)
    plots = _plots(v, reg.champion(name), facts["evidence"])
    figs = "\n".join(f'<h2>{html.escape(t)}</h2>\n<img alt="{html.escape(t)}" src="data:image/png;base64,{b}">'
                     for t, b in plots)
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>Model card: {html.escape(name)} v{v.version}</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}code{font-size:90%}</style></head><body>\n"
            f"{_md_to_html(md)}\n{figs}\n</body></html>\n")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "card.md", md)
    write_text_atomic(out / "card.html", page)
    return {"markdown": str(out / "card.md"), "html": str(out / "card.html"), "plots": len(plots), **facts}
