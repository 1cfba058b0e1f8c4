"""Build a random-weight model of a realistic size into a directory every loader can read.

Used by the GPU check of the multiple-choice probes (docs/performance.md): `imsm eval`, `imsm
bench choice` and lm-eval's `hf` model then load the same weights from the same directory. Speed
does not depend on the weights' values; accuracies of random weights are at chance by design.

    python scripts/gpu_knowledge_check.py CONFIG.json TOKENIZER_DIR OUTPUT_DIR [--dtype bf16]
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

parser = argparse.ArgumentParser()
parser.add_argument("config")
parser.add_argument("tokenizer")
parser.add_argument("output")
parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
values = json.loads(Path(args.config).read_text())
# The tokenizer's own vocabulary and special ids: lm-eval resizes a model whose vocabulary differs
# from its tokenizer's when it loads a peft adapter, which would score over another vocabulary.
values.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
config = AutoConfig.for_model(**values)
torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"
with torch.device(device):
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32)
model.save_pretrained(args.output, safe_serialization=True)
for name in Path(args.tokenizer).iterdir():
    shutil.copy(name, Path(args.output) / name.name)
print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, {args.dtype}, saved to {args.output}")
