"""Collect run summaries into a results table (mean ± std over seeds).

    .venv/bin/python scripts/collect_results.py runs/sasrec_beauty_s* runs/gru4rec_beauty_s* ...
    .venv/bin/python scripts/collect_results.py --glob 'runs/*_s[0-9]' --json runs/bench/results.json

Groups run directories by experiment (the directory name without ``_s<seed>``),
prints a Markdown table of the test metrics and writes JSON.
"""
from __future__ import annotations

import argparse
import glob
import json
import re
import statistics
from pathlib import Path

METRICS = ["hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*")
    ap.add_argument("--glob", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dirs = [Path(p) for p in (args.runs or []) + (sorted(glob.glob(args.glob)) if args.glob else [])]
    groups: dict[str, list[dict]] = {}
    for d in dirs:
        f = d / "summary.json"
        if not f.is_file():
            continue
        s = json.loads(f.read_text())
        name = re.sub(r"_s\d+$", "", d.name)
        groups.setdefault(name, []).append(s)
    table = {}
    print("| experiment | seeds | epochs | s/epoch | " + " | ".join(f"test {m}" for m in METRICS) + " |")
    print("|---" * (4 + len(METRICS)) + "|")
    for name, runs in groups.items():
        row = {"seeds": [r["config"]["seed"] for r in runs], "n": len(runs)}
        cells = []
        for m in METRICS:
            vals = [r[f"test/{m}"] for r in runs]
            mean = statistics.fmean(vals)
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row[m] = {"mean": mean, "std": std, "values": vals}
            cells.append(f"{mean:.4f} ± {std:.4f}" if len(vals) > 1 else f"{mean:.4f}")
        epochs = [r["timings"].get("epochs", 0) for r in runs]
        spe = statistics.fmean(r["timings"].get("s_per_epoch", 0) for r in runs)
        row.update(epochs=epochs, s_per_epoch=spe)
        table[name] = row
        print(f"| {name} | {','.join(map(str, row['seeds']))} | {'/'.join(map(str, epochs))} | {spe:.1f} | "
              + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
