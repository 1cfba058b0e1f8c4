"""Evaluation throughput of the base model, a LoRA adapter and an IMSM-LoRA adapter, in one run.

    python benchmarks/eval_throughput.py --data-dir ../shared/data --output docs/results/eval_throughput.json

All three evaluate the same MRPC test examples with the same prompts, batch size, dtype and
generation cap, through `imsm eval`'s own code path: one pass per prompt that generates the
answer and reads the gold answer's likelihood from the same prefill (`answer_and_score`). Each
is also timed the older way, as two passes (generation, then a teacher-forced pass), which
encodes every prompt twice. The adapters are untrained (LoRA r=16 on q/v with random B): speed
does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from peft import LoraConfig

from imsm import IMSMConfig, IMSMModel, get_imsm_model
from imsm.bench.output import write_json
from imsm.data import load_examples, resolve_data_dir
from imsm.evaluation.generation import answer_and_score, score_targets
from imsm.generate import generate_answers
from imsm.model.load import load_model_and_tokenizer
from imsm.prompting import PromptFormatter
from imsm.tasks import get_task


def build(kind: str, model_name: str, dtype: str):
    base, tokenizer = load_model_and_tokenizer(model_name, dtype)
    if kind == "base":
        return IMSMModel(base, IMSMConfig(fusion="none")).eval(), tokenizer
    lora = LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    model = get_imsm_model(base, lora, IMSMConfig(fusion="imsm" if kind == "imsm-lora" else "none"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    return model.eval(), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output")
    args = parser.parse_args()

    task = get_task("mrpc")
    records = load_examples(task, "test", resolve_data_dir(args.data_dir), args.limit)
    prompts = [task.prompt(r) for r in records]
    targets = [task.target(r) for r in records]
    results = {
        "model": args.model,
        "task": "mrpc",
        "split": "test",
        "examples": len(records),
        "batch_size": args.batch_size,
        "max_new_tokens": task.max_new_tokens,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    for kind in ("base", "lora", "imsm-lora"):
        model, tokenizer = build(kind, args.model, args.dtype)
        formatter = PromptFormatter.for_tokenizer(tokenizer)
        results["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
        answer_and_score(model, formatter, prompts[:4], targets[:4], task.max_new_tokens, 4, True)  # warm-up
        start = time.perf_counter()
        answer_and_score(model, formatter, prompts, targets, task.max_new_tokens, args.batch_size, True)
        one_pass = time.perf_counter() - start
        start = time.perf_counter()
        generate_answers(model, formatter, prompts, task.max_new_tokens, args.batch_size)
        generation = time.perf_counter() - start
        start = time.perf_counter()
        score_targets(model, formatter, prompts, targets, args.batch_size, yes_no=True)
        likelihood = time.perf_counter() - start
        n = len(records)
        results[kind] = {
            "eval_examples_per_s": n / one_pass,
            "two_pass_examples_per_s": n / (generation + likelihood),
            "generation_examples_per_s": n / generation,
            "likelihood_examples_per_s": n / likelihood,
        }
        print(kind, json.dumps(results[kind]), flush=True)
    for kind in ("lora", "imsm-lora"):
        results[f"{kind}_vs_base"] = results[kind]["eval_examples_per_s"] / results["base"]["eval_examples_per_s"]
    results["imsm_vs_lora"] = results["imsm-lora"]["eval_examples_per_s"] / results["lora"]["eval_examples_per_s"]
    print(json.dumps(results, indent=2))
    if args.output:
        write_json(args.output, results)


if __name__ == "__main__":
    main()
