#!/bin/bash
# The model tests (the files that build tiny IMSM models and compare their numbers) on one device,
# in one dtype after another (tests/conftest.py's IMSM_TEST_DEVICE and IMSM_TEST_DTYPE; the
# tolerances follow the dtype, tests/tolerance.py). `make test-gpu` runs them on CUDA in fp32, then
# bf16; scripts/gpu_generation_checks.sh does the same on a fresh device machine.
#
# Environment (all optional):
#   PYTHON            the interpreter (python3)
#   IMSM_TEST_DEVICE  cuda (default), or cpu for a dry run of this script on any machine
#   TEST_DTYPES       the dtypes, in order ("fp32 bf16")
#   LOG_DIR           if set, each run's whole output also goes to LOG_DIR/model-tests-DTYPE.log
#   TEST_SECONDS      a time limit per dtype (0: none)
#   PYTEST_ARGS       more pytest arguments (e.g. -x, or -k to pick tests)
# Exits 2 without running anything when the device is CUDA and torch sees none; else 0 if every
# run passed, 1 if any failed or ran out of time.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${IMSM_TEST_DEVICE:-cuda}
DTYPES=${TEST_DTYPES:-fp32 bf16}
MODEL_TESTS="tests/test_decode.py tests/test_decoding_equivalence.py tests/test_generation_options.py
             tests/test_scoring.py tests/test_siamese.py tests/test_shared_layers.py tests/test_gate.py
             tests/test_variant.py"

if [[ $DEVICE == cuda* ]]; then
    seen=$("$PYTHON" -c 'import torch; print("yes" if torch.cuda.is_available() else f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU build"))' 2>/dev/null) \
        || seen="no torch importable"
    if [[ $seen != yes ]]; then
        echo "model tests: no CUDA device is visible to $PYTHON ($seen); run on a GPU machine with a CUDA build of torch, or set IMSM_TEST_DEVICE=cpu" >&2
        exit 2
    fi
fi

status=0
for dtype in $DTYPES; do
    log=${LOG_DIR:+$LOG_DIR/model-tests-$dtype.log}
    # shellcheck disable=SC2086  # the file list and PYTEST_ARGS are word lists
    IMSM_TEST_DEVICE=$DEVICE IMSM_TEST_DTYPE=$dtype timeout "${TEST_SECONDS:-0}" \
        "$PYTHON" -m pytest -p no:cacheprovider -rfE ${PYTEST_ARGS:-} $MODEL_TESTS 2>&1 | tee "${log:-/dev/null}"
    code=${PIPESTATUS[0]}
    [[ $code == 124 ]] && echo "model tests on $DEVICE in $dtype: cut off after ${TEST_SECONDS}s"
    echo "model tests on $DEVICE in $dtype: exit $code${log:+ (log: $log)}"
    [[ $code == 0 ]] || status=1
done
exit $status
