"""The plain-text results table every command prints."""
from __future__ import annotations

from typing import Mapping, Sequence


def format_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str], label: str = "model") -> str:
    """One row per model / estimator, one 12-wide column per number (4 decimals)."""
    name_w = max([len(label), *(len(r) for r in rows)])
    head = f"{label:<{name_w}}  " + "  ".join(f"{c:>12}" for c in columns)
    lines = [head, "-" * len(head)]
    for name, vals in rows.items():
        lines.append(f"{name:<{name_w}}  " + "  ".join(f"{vals.get(c, float('nan')):>12.4f}" for c in columns))
    return "\n".join(lines)
