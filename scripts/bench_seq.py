"""Benchmark SASRec training and exact full-ranking evaluation on Amazon Beauty.

    .venv/bin/python scripts/bench_seq.py                      # CPU
    python scripts/bench_seq.py --device cuda --bf16 --compile # GPU machine

Reports, in one run on one machine: training throughput (sequences/s, seconds per
epoch) of SASRec (2 layers, 64 dims, max_len 50, batch 256, full softmax CE) with
the project's bucketed batches and padded-position-free loss, against the naive
recipe in the same run (fixed-length padded batches, logits for every position
including padding); full-ranking evaluation time for all Beauty users (test
split, history excluded); peak memory. Writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.data.loaders import SeqTxtLoader  # noqa: E402
from recsys.data.prepare import prepare  # noqa: E402
from recsys.data.splits import LeaveOneOut  # noqa: E402
from recsys.evaluation.ranking import aggregate, chunk_metrics, exclude  # noqa: E402
from recsys.models.sequential import SASRec  # noqa: E402
from recsys.training.losses import FullSoftmaxCE  # noqa: E402
from recsys.training.sequence.batches import SequenceBatch  # noqa: E402
from recsys.training.sequence.data import SequenceDataModule, left_pad  # noqa: E402
from recsys.utils.lineage import environment  # noqa: E402


def naive_loss(net, batch):
    """The common recipe: logits for every position (padding too), masked afterwards."""
    h = net(batch.input)  # B, T, D
    logits = h @ net.output_embeddings().T  # B, T, N+1 (padding positions included)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.labels.flatten(), ignore_index=0)


def project_loss(net, batch, loss=FullSoftmaxCE()):
    h = net(batch.input)
    real = batch.labels > 0
    return loss(h[real], batch.labels[real], net.output_embeddings())


def train_epoch(net, loader, loss_fn, opt, device, bf16, max_steps):
    net.train()
    n_seq, steps, t0 = 0, 0, time.perf_counter()
    for batch in loader:
        batch = batch.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(net, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n_seq += len(batch.input)
        steps += 1
        if max_steps and steps >= max_steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, n_seq, steps


@torch.no_grad()
def evaluate(net, es, n_items, device, bf16, batch_size=512):
    net.eval()
    t0 = time.perf_counter()
    per_user = {}
    for s in range(0, len(es), batch_size):
        rows = np.arange(s, min(s + batch_size, len(es)))
        hist = es.history.take(rows)
        seq = torch.from_numpy(left_pad(hist, net.max_len)).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            state = net.next_item_state(seq)
        scores = (state.float() @ net.output_embeddings().float().T)
        exclude(scores, hist)
        for k, v in chunk_metrics(scores, es.targets.take(rows), (10, 20)).items():
            per_user.setdefault(k, []).append(v.cpu().numpy())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, aggregate({k: np.concatenate(v) for k, v in per_user.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--naive-steps", type=int, default=20, help="naive recipe: time this many steps, extrapolate")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    root = Path(os.environ.get("RECSYS_DATA_ROOT", ROOT.parent / "shared" / "datasets"))
    data = prepare(SeqTxtLoader(str(root / "amazon-beauty" / "Beauty.txt")), ROOT / ".cache" / "data", "beauty")
    split = LeaveOneOut().split(data)
    dm = SequenceDataModule(split, data.n_items, max_len=50, batch_size=256)
    n_train = len(dm.train_set)
    rows = []

    def make():
        torch.manual_seed(0)
        net = SASRec(data.n_items, max_len=50, hidden=64, n_layers=2, n_heads=2, dropout=0.5).to(device)
        return net, torch.optim.Adam(net.parameters(), lr=1e-3)

    # project recipe: bucketed, trimmed batches; loss only on real positions
    net, opt = make()
    fwd = torch.compile(net) if args.compile else net
    train_epoch(fwd, dm.train_dataloader(), project_loss, opt, device, args.bf16, max_steps=3)  # warm-up
    secs, n_seq, steps = train_epoch(fwd, dm.train_dataloader(), project_loss, opt, device, args.bf16, 0)
    rows.append({"recipe": "recsys (bucketed, real positions only)", "s_per_epoch": secs, "seq_per_s": n_seq / secs,
                 "steps": steps, "extrapolated": False})
    eval_s, metrics = evaluate(net, split.test, data.n_items, device, args.bf16)

    # naive recipe in the same run: fixed max_len padding, logits at every position
    net2, opt2 = make()
    fixed = torch.utils.data.DataLoader(dm.train_set, batch_size=256, shuffle=True, collate_fn=lambda items: SequenceBatch(
        torch.stack([it["input"] for it in items]), torch.stack([it["labels"] for it in items])))  # untrimmed
    train_epoch(net2, fixed, naive_loss, opt2, device, args.bf16, max_steps=2)
    secs2, n2, steps2 = train_epoch(net2, fixed, naive_loss, opt2, device, args.bf16, args.naive_steps)
    full_steps = len(fixed)
    rows.append({"recipe": "naive (padded to 50, logits everywhere)", "s_per_epoch": secs2 / steps2 * full_steps,
                 "seq_per_s": n2 / secs2, "steps": steps2, "extrapolated": steps2 < full_steps})

    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"SASRec 2x64, Beauty ({n_train} training sequences, {data.n_items} items), device: {name}, "
          f"bf16={args.bf16}, compile={args.compile}")
    print(f"{'recipe':<42}{'s/epoch':>10}{'seq/s':>10}")
    for r in rows:
        print(f"{r['recipe']:<42}{r['s_per_epoch']:>10.1f}{r['seq_per_s']:>10.0f}" + ("  (extrapolated)" if r["extrapolated"] else ""))
    speedup = rows[1]["s_per_epoch"] / rows[0]["s_per_epoch"]
    print(f"speed-up of the recsys recipe over the naive one: {speedup:.2f}x")
    print(f"full-ranking evaluation, all {len(split.test)} Beauty test users x {data.n_items} items: {eval_s:.2f} s "
          f"(after 1 epoch: ndcg@10={metrics['ndcg@10']:.4f})")
    print(f"peak memory: {peak:.0f} MiB ({'GPU allocated' if device.type == 'cuda' else 'process RSS'})")
    out = Path(args.out or ROOT / "runs" / "bench" / f"seq_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "bf16": args.bf16, "compile": args.compile, "rows": rows,
                               "speedup_vs_naive": speedup, "eval_s": eval_s, "eval_users": len(split.test),
                               "peak_memory_mib": peak, "environment": environment()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
