#!/bin/bash
# The GPU checks of issues 18 and 30, for a device machine: the model tests on CUDA in fp32, then in
# bf16 (scripts/model_tests.sh, as `make test-gpu` runs them), then, where the embedded model is at
# hand, `imsm bench decode` greedy and sampled on it in bf16.
#
# It runs on a fresh machine from a copy of the repository, with nothing run there before it. Such
# a machine has torch, transformers and accelerate but no internet, and a peft whose version nobody
# has read (docs/experiments.md), so peft travels as a wheel, pinned as installed here:
#   scripts/gpu_generation_checks.sh --wheels      # here: peft's wheel into .device-wheels/ (git-ignored)
# then, on the device, carrying that folder (the device tool's `carry: [".device-wheels"]`):
#   scripts/gpu_generation_checks.sh               # writes $OUT/model-tests-fp32.log, -bf16.log
# A device peft that already meets pyproject.toml's pin is used as it is, and the wheel is not needed.
# The decode bench reads the embedded model's GGUF and the gguf reader under $ROOT, which only the
# calls of `imsm pack-for-device` put there; without them it is skipped, with a line saying so.
#
#   --dry-run   the same on this machine's CPU (IMSM_TEST_DEVICE=cpu, LOG_DIR /tmp/out by default),
#               to check the script itself; the environment's PYTHON, TEST_DTYPES and PYTEST_ARGS
#               pass through to scripts/model_tests.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; ROOT=${ROOT:-/root/imsm-study}; PYTHON=${PYTHON:-python3}
WHEELS=.device-wheels
SITE=${SITE:-/tmp/imsm-site}  # where carried wheels are installed on the device

peft_pin() {  # pyproject.toml's requirement on peft, e.g. "peft>=0.21,<0.22"
    "$1" -c 'import re, sys; print(next(d for d in re.findall(r"\"([^\"]+)\"", open("pyproject.toml").read()) if re.match(r"peft\b", d)))'
}

if [[ ${1:-} == --wheels ]]; then
    # Here, with the internet: the peft installed in this checkout's environment, as a wheel.
    HERE_PYTHON=${HERE_PYTHON:-.venv/bin/python}
    version=$("$HERE_PYTHON" -c 'import peft; print(peft.__version__)') || { echo "no peft in $HERE_PYTHON; run make setup first (or set HERE_PYTHON)"; exit 2; }
    mkdir -p "$WHEELS" && rm -f "$WHEELS"/peft-*.whl
    "$HERE_PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "peft==$version" || exit 2
    echo "$WHEELS: $(ls "$WHEELS"); carry it: run(command=\"scripts/gpu_generation_checks.sh\", carry=[\"$WHEELS\"])"
    exit 0
fi

DEVICE=cuda
if [[ ${1:-} == --dry-run ]]; then
    DEVICE=cpu
    SITE=$(mktemp -d)
elif [[ -n ${1:-} ]]; then
    echo "unknown argument ${1}: give none (on the device), --wheels (here, before) or --dry-run (here, on the CPU)"; exit 2
fi
mkdir -p "$OUT"
export PYTHONPATH="$SITE:$PWD/src" PYTHONUNBUFFERED=1

# peft as pyproject.toml pins it: the machine's own if it fits, else the carried wheel.
pin=$(peft_pin "$PYTHON") || { echo "cannot read peft's pin from pyproject.toml with $PYTHON"; exit 2; }
fits() { "$PYTHON" -c "import sys, peft; from packaging.requirements import Requirement; sys.exit(peft.__version__ not in Requirement('$pin').specifier)" 2>/dev/null; }
if ! fits; then
    have=$("$PYTHON" -c 'import peft; print("peft", peft.__version__)' 2>/dev/null || echo "no peft")
    if ! ls "$WHEELS"/peft-*.whl > /dev/null 2>&1; then
        echo "this machine has $have and the tests need $pin: run scripts/gpu_generation_checks.sh --wheels here and carry $WHEELS"
        exit 3
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/peft-*.whl || exit 4
    fits || { echo "the carried $(ls "$WHEELS") does not meet $pin; run --wheels again"; exit 3; }
fi
"$PYTHON" -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, " + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"))' \
    | tee "$OUT/versions.txt"

IMSM_TEST_DEVICE=$DEVICE LOG_DIR=$OUT PYTHON=$PYTHON TEST_SECONDS=${TEST_SECONDS:-200} scripts/model_tests.sh > "$OUT/model-tests.out" 2>&1
tests=$?
for log in "$OUT"/model-tests-*.log; do
    echo "$(basename "$log"): $(grep -E '^(FAILED|ERROR) ' "$log" | wc -l) failed or in error; last line: $(tail -1 "$log")"
done
grep -E "^model tests" "$OUT/model-tests.out"

if [[ $DEVICE == cuda && -d $ROOT/files/model-site ]]; then
    export PYTHONPATH="$ROOT/site:$ROOT/files/model-site:$PYTHONPATH" IMSM_CACHE_DIR="$ROOT/cache"
    timeout "${BENCH_SECONDS:-120}" "$PYTHON" -m imsm bench decode --dtype bf16 --batch-size 8 --max-new-tokens 64 \
        --repeats 5 --skip naive,static,compiled,hf_compiled --output "$OUT/decode-bf16.json" 2>&1 | tail -12
else
    echo "imsm bench decode skipped: no embedded model under $ROOT/files/model-site (imsm pack-for-device's calls unpack it there)"
fi
exit $tests
