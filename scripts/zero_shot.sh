#!/usr/bin/env bash
# The "Original" (zero-shot) row: smollm2-135m on the paper's seven tasks, full evaluation splits.
# Resumable: a task whose metrics are in $OUT or in docs/results/zero_shot is skipped, so the run
# can span sessions (per-example files stay in $OUT, which git ignores).
#   DATA_DIR=../shared/data scripts/zero_shot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data}
OUT=${OUT:-runs/zero_shot}
MODEL=${MODEL:-smollm2-135m}
# Greedy answers do not depend on the batch size (tested), only the speed does: GSM8K's long
# answers decode much faster in wide batches.
BATCH_SIZE=${BATCH_SIZE:-16}
DOCS=docs/results/zero_shot
mkdir -p "$OUT" "$DOCS"
batch_size_for() { if [ "$1" = gsm8k ]; then echo 64; else echo "$BATCH_SIZE"; fi; }
for task in ${TASKS:-multirc cola mrpc ropes webq freebaseqa gsm8k}; do
  if [ -f "$OUT/$task.json" ] || [ -f "$DOCS/$task.json" ]; then
    echo "skip $task (done)"
    continue
  fi
  .venv/bin/imsm eval --model "$MODEL" --task "$task" --data-dir "$DATA_DIR" --batch-size "$(batch_size_for "$task")" --output "$OUT/$task.json"
  cp "$OUT/$task.json" "$DOCS/$task.json"
done
