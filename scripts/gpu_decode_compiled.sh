#!/bin/bash
# Issue 30, item 3's device check: `imsm bench decode` at batch 1 on the embedded model (SmolLM2-135M),
# IMSM eager, IMSM with a static cache, IMSM compiled (CUDA graphs) and transformers' own static-cache
# compiled generate on the same adapter; bf16, then fp32. Writes under $OUT:
#   decode_compiled.json        issue 30's keys (machine, model, decode_compiled_b1_tokens_per_s,
#                               decode_eager_b1_tokens_per_s, transformers_compiled_b1_tokens_per_s), bf16
#   decode_compiled_fp32.json   the same keys in fp32
#   decode-{bf16,fp32}.json     every row of each run; decode-{bf16,fp32}.log its output; device.txt
# Copy decode_compiled.json to docs/results/perf/gpu/.
#
# The model reaches the device as `imsm pack-for-device` carries it (docs/experiments.md): pack any
# experiment on the embedded model here, then make its calls, this script in the last one:
#   imsm pack-for-device configs/forgetting.yaml --output .imsm-device     # 2 calls: the GGUF is 94 MiB
#   call 1 (carry .imsm-device/call-1): python3 src/imsm/experiment/device/on_device.py unpack .imsm-device/call-1
#   call 2 (carry .imsm-device/call-2): PACK=.imsm-device bash scripts/gpu_decode_compiled.sh
# Every call folder carried in $PACK is unpacked first (already unpacked files are kept), and the
# carried wheels (gguf, and peft as pinned: a fresh machine's own peft is of unknown version) are
# installed under $ROOT/site. With MODEL=path (a local model directory) nothing is unpacked: that is
# how tests/test_bench_decode.py runs this script on the CPU. Each run is capped at RUN_SECONDS;
# compiling the two compiled decoders is most of it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; ROOT=${ROOT:-/root/imsm-study}; PYTHON=${PYTHON:-python3}; PACK=${PACK:-.imsm-device}
MODEL=${MODEL:-smollm2-135m}; TOKENS=${TOKENS:-128}; REPEATS=${REPEATS:-3}; RUN_SECONDS=${RUN_SECONDS:-260}
DTYPES=${DTYPES:-"bf16 fp32"}
mkdir -p "$OUT"
export PYTHONPATH="$ROOT/site:$ROOT/files/model-site:$PWD/src" PYTHONUNBUFFERED=1 IMSM_CACHE_DIR="$ROOT/cache"

if [ "$MODEL" = smollm2-135m ]; then
    for call in "$PACK"/call-*; do
        [ -f "$call/manifest.json" ] && "$PYTHON" src/imsm/experiment/device/on_device.py unpack "$call" --root "$ROOT"
    done
    gguf=$(ls "$ROOT"/files/model-site/*/*.gguf 2>/dev/null | head -1)
    if [ -z "$gguf" ]; then
        echo "no GGUF under $ROOT/files/model-site: make the pack's earlier calls first (see the top of $0)" >&2
        exit 3
    fi
    touch "$(dirname "$gguf")/__init__.py"  # found by find_spec, never imported
    # The carried wheels (gguf, which transformers reads the GGUF with, and peft as pinned), once;
    # on_device.py's own run leaves the same marker.
    if [ ! -f "$ROOT/site/.installed" ] && ls "$ROOT"/files/wheels/*.whl > /dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$ROOT/site" \
            "$ROOT"/files/wheels/*.whl && echo "wheels installed by $0" > "$ROOT/site/.installed"
    fi
fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$PYTHON" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$OUT/device.txt"

status=0
for dtype in $DTYPES; do
    summary="$OUT/decode_compiled_$dtype.json"
    [ "$dtype" = bf16 ] && summary="$OUT/decode_compiled.json"
    timeout "$RUN_SECONDS" "$PYTHON" -m imsm bench decode --model "$MODEL" --dtype "$dtype" --batch-size 1 \
        --max-new-tokens "$TOKENS" --repeats "$REPEATS" --skip merged,doubled,sampled,naive \
        --output "$OUT/decode-$dtype.json" --summary "$summary" > "$OUT/decode-$dtype.log" 2>&1
    code=$?
    echo "$dtype: exit $code"
    if [ -f "$summary" ]; then cat "$summary"; else tail -5 "$OUT/decode-$dtype.log"; status=1; fi
done
exit $status
