#!/usr/bin/env bash
# The "Original" (zero-shot) row: smollm2-135m on the paper's seven tasks, full evaluation splits.
# Resumable: a task whose metrics file exists is skipped, so the run can span sessions.
#   DATA_DIR=../shared/data scripts/zero_shot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data}
OUT=${OUT:-runs/zero_shot}
MODEL=${MODEL:-smollm2-135m}
mkdir -p "$OUT" docs/results/zero_shot
for task in ${TASKS:-multirc cola mrpc ropes webq freebaseqa gsm8k}; do
  if [ -f "$OUT/$task.json" ]; then
    echo "skip $task (done)"
  else
    .venv/bin/imsm eval --model "$MODEL" --task "$task" --data-dir "$DATA_DIR" --batch-size 16 --output "$OUT/$task.json"
  fi
  cp "$OUT/$task.json" "docs/results/zero_shot/$task.json"
done
