#!/bin/bash
# Per-kind cost with and without the frozen-state store, one thread, as the study's workers ran.
# The two adapters (random LoRA weights; speed does not depend on them), saved beforehand with
#   from imsm.bench.decode import adapted_model
#   for fusion in ("imsm", "none"):
#       adapted_model("smollm2-135m", "fp32", "lora", fusion=fusion)[0].save_pretrained(f"/tmp/adapter_{fusion}")
set -e
# run from the repository root, with imsm installed
PY="env OMP_NUM_THREADS=1 imsm"
COMMON="--model smollm2-135m --dtype fp32 --data-dir ../shared/data --batch-size 16 --no-resume"
T=arc_easy,piqa,sciq,sciq_support
L=40
rm -rf ${OUT:-/tmp/frozen_states}/store ${OUT:-/tmp/frozen_states}; mkdir -p ${OUT:-/tmp/frozen_states}
$PY eval $COMMON --adapter ${ADAPTERS:-/tmp}/adapter_imsm --task $T --limit $L --output ${OUT:-/tmp/frozen_states}/imsm_uncached.json
$PY eval $COMMON --adapter ${ADAPTERS:-/tmp}/adapter_imsm --task $T --limit $L --frozen-states ${OUT:-/tmp/frozen_states}/store --output ${OUT:-/tmp/frozen_states}/imsm_build.json
$PY eval $COMMON --adapter ${ADAPTERS:-/tmp}/adapter_imsm --task $T --limit $L --frozen-states ${OUT:-/tmp/frozen_states}/store --output ${OUT:-/tmp/frozen_states}/imsm_cached.json
$PY eval $COMMON --adapter ${ADAPTERS:-/tmp}/adapter_none --task $T --limit $L --output ${OUT:-/tmp/frozen_states}/none_uncached.json
$PY eval $COMMON --adapter ${ADAPTERS:-/tmp}/adapter_none --task $T --limit $L --frozen-states ${OUT:-/tmp/frozen_states}/store --output ${OUT:-/tmp/frozen_states}/none_cached.json
$PY eval $COMMON --adapter ${ADAPTERS:-/tmp}/adapter_imsm --task mrpc --limit 20 --output ${OUT:-/tmp/frozen_states}/imsm_mrpc.json
$PY eval $COMMON --adapter ${ADAPTERS:-/tmp}/adapter_none --task mrpc --limit 20 --output ${OUT:-/tmp/frozen_states}/none_mrpc.json
echo finished
