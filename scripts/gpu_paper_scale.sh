#!/bin/bash
# Issue 30's device check: paper scale on one GPU, random weights, bf16. For each architecture in
# SHAPES (default the Llama-3-8B shape), in one go on one machine:
#   imsm bench train   vanilla peft and IMSM alternating, each run in a fresh process, LoRA r16 on
#                      the paper's target modules (q/v on Llama, q on Qwen1.5), activation
#                      checkpointing, synthetic examples of exactly SEQUENCE_LENGTH tokens: tokens/s
#                      and peak GPU memory (torch.cuda.max_memory_allocated) per variant;
#   imsm bench decode  batch 1 and batch 8, NEW_TOKENS greedy tokens, IMSM against peft's generate;
#   python -m imsm.bench.paper_scale  the figures file, with the keys.
# Random weights are made on the GPU in bf16 (no download, no tokenizer: bytes are tokens), so a
# fresh device machine needs only this repository (run from its root, PYTHONPATH=src, nothing
# installed) and the packages its image has. Writes into $OUT (at most 8 files come back):
#   paper_scale.json (llama3-8b), paper_scale_<shape>.json (any other shape), paper_scale.log,
#   bench_results.tar.gz (every bench's own JSON).
# Each bench runs under `timeout`; the defaults fit one 600 s call for the Llama shape (about
# 5 minutes expected: four 8B trainings of 8 steps, two decoding runs); each further shape wants
# its own call: SHAPES=qwen1.5-4b bash scripts/gpu_paper_scale.sh.
# The device's peft: imsm wants 0.21.x. To carry it, make the wheel folder here once with
# `scripts/gpu_generation_checks.sh --wheels` and name `.device-wheels` in the call's carry.
# Dry run on a CPU (a tiny shape, about a minute):
#   ARCHITECTURES=DIR SHAPES=tiny SEQUENCE_LENGTH=64 ANSWER_TOKENS=16 LIMIT=8 BATCH=4 MICRO=2 \
#   REPEATS=1 NEW_TOKENS=8 DECODE_REPEATS=1 OUT=/tmp/out bash scripts/gpu_paper_scale.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; PYTHON=${PYTHON:-python3}; WHEELS=${WHEELS:-.device-wheels}
ARCHITECTURES=${ARCHITECTURES:-configs/architectures}; SHAPES=${SHAPES:-llama3-8b}
DTYPE=${DTYPE:-bf16}; PEFT=${PEFT:-lora}
SEQUENCE_LENGTH=${SEQUENCE_LENGTH:-512}; ANSWER_TOKENS=${ANSWER_TOKENS:-128}
LIMIT=${LIMIT:-64}; BATCH=${BATCH:-8}; MICRO=${MICRO:-4}; REPEATS=${REPEATS:-2}; WARMUP=${WARMUP:-1}
NEW_TOKENS=${NEW_TOKENS:-64}; DECODE_REPEATS=${DECODE_REPEATS:-3}
TRAIN_SECONDS=${TRAIN_SECONDS:-270}; DECODE_SECONDS=${DECODE_SECONDS:-110}

mkdir -p "$OUT"; RESULTS=$(mktemp -d); LOG="$OUT/paper_scale.log"; STATUS=0
SITE=""
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/imsm-site \
        "$WHEELS"/*.whl && SITE=/tmp/imsm-site: || { echo "could not install the wheels in $WHEELS" | tee "$LOG"; exit 2; }
fi
export PYTHONPATH="$SITE$PWD/src" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

step() {  # step SECONDS NAME COMMAND...: run under a timeout, log it, remember a failure
    local seconds=$1 name=$2; shift 2
    local started=$SECONDS
    echo "== $name (limit ${seconds}s)" | tee -a "$LOG"
    timeout "$seconds" "$@" >> "$LOG" 2>&1
    local code=$?
    echo "== $name: exit $code after $((SECONDS - started))s" | tee -a "$LOG"
    [ "$code" -eq 0 ] || STATUS=1
    return "$code"
}

{ date -u; nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; } > "$LOG"
step 60 preflight "$PYTHON" -c "
import torch, transformers, peft, accelerate, imsm.bench.cli, imsm.bench.paper_scale
print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__,
      'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())
if not peft.__version__.startswith('0.21.'):
    print('WARNING: imsm is tested with peft 0.21.x; carry its wheel (see the header of this script)')
" || { tail -5 "$LOG"; exit 2; }
grep -E "^torch |^WARNING" "$LOG"

for shape in $SHAPES; do
    architecture="$ARCHITECTURES/$shape.json"
    [ -f "$architecture" ] || { echo "== $shape: no $architecture; skipped" | tee -a "$LOG"; STATUS=1; continue; }
    figures="$OUT/paper_scale_$shape.json"; [ "$shape" = llama3-8b ] && figures="$OUT/paper_scale.json"
    step "$TRAIN_SECONDS" "$shape train" "$PYTHON" -m imsm bench train --random-weights --model "$architecture" \
        --peft "$PEFT" --dtype "$DTYPE" --gradient-checkpointing --sequence-length "$SEQUENCE_LENGTH" \
        --answer-tokens "$ANSWER_TOKENS" --limit "$LIMIT" --epochs 1 --batch-size "$BATCH" \
        --micro-batch-size "$MICRO" --repeats "$REPEATS" --warmup-steps "$WARMUP" \
        --output "$RESULTS/${shape}_train.json"
    for batch in 1 8; do
        step "$DECODE_SECONDS" "$shape decode b$batch" "$PYTHON" -m imsm bench decode --random-weights \
            --model "$architecture" --peft "$PEFT" --dtype "$DTYPE" --batch-size "$batch" \
            --max-new-tokens "$NEW_TOKENS" --repeats "$DECODE_REPEATS" --skip naive,merged,sampled,static,compiled,hf_compiled \
            --output "$RESULTS/${shape}_decode_b$batch.json"
    done
    step 60 "$shape figures" "$PYTHON" -m imsm.bench.paper_scale --train "$RESULTS/${shape}_train.json" \
        --decode-b1 "$RESULTS/${shape}_decode_b1.json" --decode-b8 "$RESULTS/${shape}_decode_b8.json" \
        --output "$figures" && cat "$figures"
done
tar -czf "$OUT/bench_results.tar.gz" -C "$RESULTS" . 2>> "$LOG"
grep -E "^== |IMSM / vanilla" "$LOG"
[ "$STATUS" -eq 0 ] || { echo "-- a step failed; the log's end:"; tail -30 "$LOG"; }
exit "$STATUS"
