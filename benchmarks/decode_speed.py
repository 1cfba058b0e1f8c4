"""Decode speed of IMSM against plain peft on one model, in one run (tokens/s, medians).

    python benchmarks/decode_speed.py --model smollm2-135m --batch-size 1 --max-new-tokens 128

Both decoders are greedy with a KV cache over the same unmerged LoRA (r=16, q_proj+v_proj) and
the same prompts; EOS is ignored so every run decodes exactly --max-new-tokens tokens. The
naive siamese decoder (both branches recomputed without a cache, as in the authors' code) is
timed on fewer tokens and reported per token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from peft import LoraConfig

from imsm import IMSMConfig, get_imsm_model
from imsm.model.decode import naive_generate
from imsm.model.load import load_model_and_tokenizer

PROMPTS = [
    "Explain in detail how photosynthesis turns light into chemical energy.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "List the planets of the solar system and describe each one briefly.",
    "What are the main causes of the French Revolution?",
]


def timed(function, repetitions: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--naive-tokens", type=int, default=16)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--output")
    args = parser.parse_args()

    base, tokenizer = load_model_and_tokenizer(args.model, args.dtype)
    model = get_imsm_model(base, LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"]), IMSMConfig())
    with torch.no_grad():  # a trained-looking adapter; speed does not depend on the values
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    model.eval()
    tokenizer.padding_side = "left"
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch_size)]
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    new = args.max_new_tokens
    tokens = args.batch_size * new

    def imsm_decode():
        return model.generate(ids, mask, max_new_tokens=new, eos_token_id=[])

    def peft_decode():
        with torch.no_grad():
            return model.peft_model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )

    def naive_decode():
        return naive_generate(model, ids, mask, max_new_tokens=args.naive_tokens, eos_token_id=[])

    torch.manual_seed(0)
    results = {
        "model": args.model,
        "dtype": str(base.dtype).removeprefix("torch."),
        "batch_size": args.batch_size,
        "prompt_tokens": int(ids.shape[1]),
        "max_new_tokens": new,
        "threads": torch.get_num_threads(),
        "imsm_tokens_per_s": tokens / timed(imsm_decode, args.repetitions),
        "vanilla_tokens_per_s": tokens / timed(peft_decode, args.repetitions),
        "naive_siamese_tokens_per_s": args.batch_size * args.naive_tokens / timed(naive_decode, 1),
    }
    results["ratio"] = results["imsm_tokens_per_s"] / results["vanilla_tokens_per_s"]
    print(json.dumps(results, indent=2))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
