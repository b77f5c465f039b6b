"""What the ``recsys index`` commands print and record: a built bundle's summary,
query hits, the tuning sweep."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recsys.retrieval.bundle import Hits


def build_report(m: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    """(lines, result) of a bundle ``recsys index build`` wrote, from its manifest ``m``."""
    lines = [f"built {m['index_spec']['factory']} ({m['metric']}) over {m['n_items']} items x {m['dim']} "
             f"in {m['build_s']:.1f}s on {m['build_backend']}: recall@10 {m['recall@10']:.4f} vs exact "
             f"({m['recall_queries']['n']} {m['recall_queries']['source']}), "
             f"{m['index_bytes'] / 2**20:.1f} MB", f"bundle: {out}"]
    result = {"bundle": str(out), **{k: m[k] for k in ("n_items", "dim", "metric", "build_s", "recall@10",
                                                         "index_bytes", "build_backend")},
              "index": m["index_spec"]["factory"], "search_params": m["search_params"]}
    return lines, result


def hits_lines(key_name: str, keys: list[str], hits: Hits, print_max: int) -> list[str]:
    """The first ``print_max`` queries' hits, one line each (rank, item id, score)."""
    lines = []
    for q in range(min(len(keys), print_max)):
        lines.append(f"{key_name} {keys[q]}:")
        for r in range(hits.rows.shape[1]):
            if hits.rows[q, r] >= 0:
                lines.append(f"  {r + 1:>3}  {hits.ids[q, r]:<20}  {hits.scores[q, r]: .4f}")
    if len(keys) > print_max:
        lines.append(f"... {len(keys) - print_max} more queries")
    return lines


def top_ids(keys: list[str], hits: Hits, n: int = 20) -> dict[str, list[str]]:
    """Query key -> its hit ids, for the first ``n`` queries (what the summary records)."""
    return {str(keys[q]): hits.ids[q][hits.rows[q] >= 0].tolist() for q in range(min(len(keys), n))}


def sweep_lines(points: list[dict[str, Any]], front: list[dict[str, Any]], chosen: dict[str, Any] | None,
                k: int, min_recall: float) -> list[str]:
    """The sweep as a table (by recall, frontier points starred) and the point to use."""
    lines = [f"{'params':<36}  {'recall@' + str(k):>10}  {'qps':>10}  {'ms/query':>9}  frontier"]
    front_ids = {id(p) for p in front}
    for p in sorted(points, key=lambda p: p[f"recall@{k}"]):
        lines.append(f"{json.dumps(p['params']):<36}  {p[f'recall@{k}']:>10.4f}  {p['qps']:>10.0f}  "
                     f"{p['ms_per_query']:>9.4f}  {'*' if id(p) in front_ids else ''}")
    if chosen:
        lines.append(f"fastest with recall@{k} >= {min_recall}: {json.dumps(chosen['params'])} "
                     f"({chosen['qps']:.0f} queries/s); use it with `recsys index query ... "
                     + " ".join(f"{a}={b}" for a, b in chosen["params"].items()) + "`")
    else:
        lines.append(f"no point reaches recall@{k} >= {min_recall}: widen the grid")
    return lines


def plot_frontier(path: str | Path, curves: dict[str, list[dict[str, Any]]], k: int = 10,
                  exact_qps: float | None = None, min_recall: float | None = None) -> Path:
    """The recall@k / queries-per-second trade-off of each sweep in ``curves``
    (label -> points of :func:`recsys.retrieval.tune.sweep`), one line per label in
    recall order, as a PNG at ``path`` (atomic write); exact search as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recsys.utils.io import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        pts = sorted(points, key=lambda p: p[f"recall@{k}"])
        ax.plot([p[f"recall@{k}"] for p in pts], [p["qps"] for p in pts], "o-", ms=4, label=label)
    if exact_qps:
        ax.axhline(exact_qps, color="k", ls=":", lw=1, label=f"exact ({exact_qps:.0f} q/s)")
    if min_recall is not None:
        ax.axvline(min_recall, color="grey", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{k} vs exact search")
    ax.set_ylabel("queries / s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
