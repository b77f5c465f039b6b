"""Benchmark the exact full-ranking evaluator.

    .venv/bin/python scripts/bench_eval.py --data beauty            # real data (needs ../shared/datasets)
    .venv/bin/python scripts/bench_eval.py --data synthetic --n-users 50000 --n-items 20000

For each batch size it times a full evaluation (every user, every item ranked,
history excluded) with the default counting path and with the sort-based path
(the usual way: sort each row, find the target's position) in the same run, and
checks that every metric is identical across batch sizes and paths. Prints a table
and writes JSON (``--out``, default ``runs/bench/eval_<data>.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.data.loaders import SeqTxtLoader  # noqa: E402
from recsys.data.prepare import prepare  # noqa: E402
from recsys.data.splits import LeaveOneOut  # noqa: E402
from recsys.data.synthetic_source import SyntheticLoader  # noqa: E402
from recsys.evaluation import ranking  # noqa: E402
from recsys.models.baselines import MarkovChain, Popularity  # noqa: E402
from recsys.utils.lineage import environment  # noqa: E402


def load(args):
    cache = ROOT / ".cache" / "data"
    if args.data == "synthetic":
        loader = SyntheticLoader(n_users=args.n_users, n_items=args.n_items, n_requests=1000)
        return prepare(loader, cache, "synthetic", event_types=["click"])
    root = Path(os.environ.get("RECSYS_DATA_ROOT", ROOT.parent / "shared" / "datasets"))
    files = {"beauty": "amazon-beauty/Beauty.txt", "toys": "amazon-toys/Toys_and_Games.txt"}
    return prepare(SeqTxtLoader(str(root / files[args.data])), cache, args.data)


def timed_eval(model, es, n_items, batch_size, device, repeats):
    best, res = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = ranking.evaluate_ranking(model.score, es.users, es.history, es.targets, n_items,
                                       ks=(5, 10, 20), batch_size=batch_size, device=device)
        best = min(best, time.perf_counter() - t0)
    return best, res.metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="beauty", choices=["beauty", "toys", "synthetic"])
    ap.add_argument("--n-users", type=int, default=20000)
    ap.add_argument("--n-items", type=int, default=10000)
    ap.add_argument("--batch-sizes", default="0,128,2048")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device) if args.device else ranking.default_device()

    data = load(args)
    split = LeaveOneOut().split(data)
    users, items, _ = split.train_arrays()
    es = split.test
    rows, reference, identical = [], None, True
    for name, model in (("popularity", Popularity()), ("markov", MarkovChain())):
        model.fit(users, items, data.n_users, data.n_items)
        for bs in [int(b) or None for b in args.batch_sizes.split(",")]:  # 0 = auto
            t_count, m_count = timed_eval(model, es, data.n_items, bs, device, args.repeats)
            saved = ranking._SORT_PATH_MIN_TARGETS
            ranking._SORT_PATH_MIN_TARGETS = 0  # force the sort path: the usual approach, as a baseline
            try:
                t_sort, m_sort = timed_eval(model, es, data.n_items, bs, device, args.repeats)
            finally:
                ranking._SORT_PATH_MIN_TARGETS = saved
            if reference is None or reference[0] != name:
                reference = (name, m_count)
            same = m_count == reference[1] and m_sort == m_count
            identical &= same
            rows.append({"model": name, "batch_size": bs, "count_s": t_count, "sort_s": t_sort,
                         "speedup_vs_sort": t_sort / t_count, "users_per_s": len(es) / t_count,
                         "ndcg@10": m_count["ndcg@10"], "hr@10": m_count["hr@10"], "identical": same})

    print(f"data={args.data} users={len(es)} items={data.n_items} device={device} torch_threads={torch.get_num_threads()}")
    head = f"{'model':<11}{'batch':>7}{'count s':>10}{'sort s':>10}{'x faster':>10}{'users/s':>10}{'ndcg@10':>10}{'hr@10':>9}  same"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<11}{r['batch_size'] or 'auto':>7}{r['count_s']:>10.2f}{r['sort_s']:>10.2f}"
              f"{r['speedup_vs_sort']:>10.2f}{r['users_per_s']:>10.0f}{r['ndcg@10']:>10.4f}{r['hr@10']:>9.4f}  {r['identical']}")
    print(f"metrics identical across batch sizes and paths: {identical}")
    out = Path(args.out or ROOT / "runs" / "bench" / f"eval_{args.data}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": args.data, "n_users": len(es), "n_items": data.n_items,
                               "device": str(device), "identical": identical, "rows": rows,
                               "environment": environment()}, indent=2))
    print(f"wrote {out}")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
