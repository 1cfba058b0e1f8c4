#!/bin/bash
# Issue 18's device check: the model tests on CUDA in bf16 (conftest's IMSM_TEST_DEVICE and
# IMSM_TEST_DTYPE), then `imsm bench decode` greedy and sampled on the embedded model in bf16.
# Run after the last call of `imsm pack-for-device`'s sequence on the same machine (docs/experiments.md:
# it unpacks the embedded model's GGUF and installs the gguf reader under $ROOT); writes
# $OUT/model-tests.log and $OUT/decode-bf16.json.
set -uo pipefail
OUT=${OUT:-/tmp/out}; ROOT=${ROOT:-/root/imsm-study}; PYTHON=${PYTHON:-python3}
export PYTHONPATH="$ROOT/site:$ROOT/files/model-site:$PWD/src" PYTHONUNBUFFERED=1 IMSM_CACHE_DIR="$ROOT/cache"
TESTS="tests/test_decode.py tests/test_decoding_equivalence.py tests/test_generation_options.py tests/test_scoring.py
       tests/test_siamese.py tests/test_shared_layers.py tests/test_gate.py tests/test_variant.py"
IMSM_TEST_DEVICE=cuda IMSM_TEST_DTYPE=bf16 timeout "${TEST_SECONDS:-240}" "$PYTHON" -m pytest -q -p no:cacheprovider \
    --maxfail=30 $TESTS > "$OUT/model-tests.log" 2>&1
tail -5 "$OUT/model-tests.log"
timeout "${BENCH_SECONDS:-120}" "$PYTHON" -m imsm bench decode --dtype bf16 --batch-size 8 --max-new-tokens 64 \
    --repeats 5 --skip naive --output "$OUT/decode-bf16.json" 2>&1 | tail -12
