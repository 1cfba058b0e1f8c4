#!/bin/bash
# Issue 29's two grids, the ROPES and GSM8K forgetting studies (docs/forgetting.md), on a 2-core
# machine: two one-thread workers in the background, each writing its log under runs/experiments/.
# Both grids are resumable (finished readings are kept in docs/results/; a cell whose adapter was lost
# with the work directory trains again and reads only what it still owes), so run this again in every
# session until `imsm experiment` says that nothing is left to run.
#
#   scripts/forgetting_studies.sh              # start both workers; progress: tail runs/experiments/*.log
#
# The order is the issue's: ROPES's LoRA cells, then GSM8K, then ROPES's (IA)3 cells. One worker
# takes GSM8K, then IMSM-(IA)3's cells on ROPES (each about 1.6 hours, so one can finish in a session),
# then the rest of ROPES; the other finishes ROPES's LoRA cells, helps with GSM8K, then takes the rest of ROPES.
# Two workers on one grid never take the same cell (each holds a lock on the cell it runs).
# A cell costs 1.6-2.5 hours of one worker here, so start this at the beginning of a session.
set -euo pipefail
cd "$(dirname "$0")/.."
IMSM=${IMSM:-.venv/bin/imsm}
LOGS=runs/experiments
mkdir -p "$LOGS"
export OMP_NUM_THREADS=1
nohup bash -c "$IMSM experiment configs/forgetting-ropes.yaml --grid curves; \
  $IMSM experiment configs/forgetting-ropes.yaml --grid mechanism; \
  $IMSM experiment configs/forgetting-gsm8k.yaml; \
  $IMSM experiment configs/forgetting-ropes.yaml" >> "$LOGS/ropes-grid.log" 2>&1 &
echo "ROPES worker: pid $!, log $LOGS/ropes-grid.log"
nohup bash -c "$IMSM experiment configs/forgetting-gsm8k.yaml; \
  $IMSM experiment configs/forgetting-ropes.yaml --grid ia3_mechanism; \
  $IMSM experiment configs/forgetting-ropes.yaml" >> "$LOGS/gsm8k-grid.log" 2>&1 &
echo "GSM8K worker: pid $!, log $LOGS/gsm8k-grid.log"
