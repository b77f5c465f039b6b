#!/usr/bin/env bash
# Train the sequence-model experiments one after another (each uses all cores),
# one run directory per (experiment, seed): runs/<experiment>_s<seed>/.
#   scripts/run_seq_queue.sh "sasrec_beauty:0 sasrec_toys:0 sasrec_beauty:1" [extra overrides...]
set -u
cd "$(dirname "$0")/.."
jobs=$1; shift
for job in $jobs; do
  exp=${job%%:*}; seed=${job##*:}
  out=runs/${exp}_s${seed}
  [ -f "$out/summary.json" ] && continue
  mkdir -p runs/logs
  WANDB_MODE=offline .venv/bin/recsys train experiment="$exp" seed="$seed" logger=csv \
    trainer.enable_progress_bar=false hydra.run.dir="$out" "$@" > "runs/logs/${exp}_s${seed}.log" 2>&1
done
