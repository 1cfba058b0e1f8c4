"""Decoding speed of IMSM against plain peft (`imsm bench decode`), same model, adapter and prompts.

Every decoder but `sampled` is greedy, and all ignore EOS, so each decodes exactly `max_new_tokens` per row:
- imsm: `IMSMModel.generate`, both branches in one doubled batch with one KV cache;
- vanilla: peft's own `generate` on the same unmerged adapter (transformers' greedy search);
- merged: the adapter merged into a copy of the base weights, plain transformers `generate` (the
  floor: what any adapter decoding costs at best);
- doubled: peft's `generate` on every prompt twice (2B rows): the cost of IMSM's doubled batch
  with none of its own work, so vanilla / doubled time is the ratio this design can reach;
- sampled: `IMSMModel.generate` sampling (temperature 0.7, top-p 0.9 and transformers' default
  top-k 50 through its own warpers): what the options cost over greedy on the same cache;
- naive: the authors' style, both branches recomputed over the whole sequence for every token, no
  cache (timed on fewer tokens, reported per token);
- static: `IMSMModel.generate` with transformers' `StaticCache`, the step not compiled;
- compiled: the same with the per-token step under `torch.compile` (mode "reduce-overhead", CUDA
  graphs, on a GPU; the default mode on a CPU);
- hf_compiled: transformers' own static-cache compiled `generate` on the same unmerged adapter
  (peft's `generate`, `cache_implementation="static"`, the same compile settings; on a CPU too).
The compiled rows compile in the warm-up round, untimed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import CompileConfig

from imsm import IMSMConfig, get_imsm_model
from imsm.bench.random_weights import random_model_and_tokenizer
from imsm.bench.timing import interleaved_medians, median_seconds
from imsm.model.decode import naive_generate
from imsm.model.load import load_model_and_tokenizer
from imsm.peft_methods.builders import build_peft_config
from imsm.prompting import PromptFormatter
from imsm.train.run import default_target_modules

# The decoders beside `imsm` and `vanilla` (always run); `imsm bench decode --skip` names them.
DECODERS = ("merged", "doubled", "sampled", "naive", "static", "compiled", "hf_compiled")
# What docs/results/perf/gpu/decode_compiled.json holds (issue 30): the summary's key -> the row.
COMPILED_SUMMARY = {
    "decode_compiled_b1_tokens_per_s": "compiled_tokens_per_s",
    "decode_eager_b1_tokens_per_s": "imsm_tokens_per_s",
    "transformers_compiled_b1_tokens_per_s": "hf_compiled_tokens_per_s",
}

PROMPTS = [
    "Explain in detail how photosynthesis turns light into chemical energy.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "List the planets of the solar system and describe each one briefly.",
    "What are the main causes of the French Revolution?",
]


def adapted_model(
    model_name: str, dtype: str, peft: str, fusion: str = "imsm", seed: int = 0, random_weights: bool = False
):
    """The model with a peft adapter whose weights look trained (speed does not depend on values).
    With `random_weights`, `model_name` is a config.json (or its directory) built with random weights."""

    load = random_model_and_tokenizer if random_weights else load_model_and_tokenizer
    base, tokenizer = load(model_name, dtype)
    targets = default_target_modules(peft, base.config.model_type)
    model = get_imsm_model(base, build_peft_config(peft, targets, total_step=100), IMSMConfig(fusion=fusion))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if model.parameter_group(name) == "peft" and ("lora_B" in name or "ia3_l" in name):
                noise = torch.randn(parameter.shape, generator=generator) * 0.02
                parameter.add_(noise.to(parameter.device, parameter.dtype))
    return model.eval(), tokenizer


def chat_batch(tokenizer, batch_size: int, prompt_repeat: int = 1):
    """Left-padded prompts, in the chat template when the tokenizer has one."""

    formatter = PromptFormatter.for_tokenizer(tokenizer)
    rows = [formatter.prompt_ids(" ".join([PROMPTS[i % len(PROMPTS)]] * prompt_repeat)) for i in range(batch_size)]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[formatter.pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def bench_decode(
    model_name: str = "smollm2-135m",
    peft: str = "lora",
    dtype: str = "auto",
    batch_size: int = 1,
    max_new_tokens: int = 128,
    repetitions: int = 3,
    naive_tokens: int = 16,
    prompt_repeat: int = 1,
    include: tuple[str, ...] = DECODERS,
    random_weights: bool = False,
) -> dict[str, Any]:
    model, tokenizer = adapted_model(model_name, dtype, peft, random_weights=random_weights)
    result = {"model": model_name, "peft": peft, "random_weights": random_weights}
    result.update(
        time_decoders(model, tokenizer, batch_size, max_new_tokens, repetitions, naive_tokens, prompt_repeat, include)
    )
    return result


def time_decoders(
    model,
    tokenizer,
    batch_size: int,
    max_new_tokens: int,
    repetitions: int,
    naive_tokens: int = 16,
    prompt_repeat: int = 1,
    include: tuple[str, ...] = DECODERS,
) -> dict[str, Any]:
    """Tokens/s of each decoder on one batch shape, with an already built model (sweeps reuse it)."""

    ids, mask = chat_batch(tokenizer, batch_size, prompt_repeat)
    # transformers' generate, like ours, expects the prompts on the model's device.
    ids, mask = ids.to(model.device), mask.to(model.device)
    new = max_new_tokens
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # EOS ignored everywhere: every decoder produces exactly max_new_tokens per row.
    hf_greedy = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=pad)

    def imsm():
        return model.generate(ids, mask, max_new_tokens=new, eos_token_id=[])

    def vanilla():
        with torch.no_grad():
            return model.peft_model.generate(input_ids=ids, attention_mask=mask, **hf_greedy)

    functions = {"imsm": imsm, "vanilla": vanilla}
    functions.update(_static_decoders(model, ids, mask, new, hf_greedy, include))
    if "sampled" in include:

        def sampled():
            return model.generate(
                ids, mask, max_new_tokens=new, eos_token_id=[], do_sample=True, temperature=0.7, top_p=0.9
            )

        functions["sampled"] = sampled
    if "doubled" in include:
        ids2, mask2 = ids.repeat(2, 1), mask.repeat(2, 1)

        def doubled():
            with torch.no_grad():
                return model.peft_model.generate(input_ids=ids2, attention_mask=mask2, **hf_greedy)

        functions["doubled"] = doubled
    merged_model = None
    if "merged" in include and hasattr(model.peft_model, "merge_and_unload"):
        merged_model = copy.deepcopy(model.peft_model).merge_and_unload().eval()

        def merged():
            with torch.no_grad():
                return merged_model.generate(input_ids=ids, attention_mask=mask, **hf_greedy)

        functions["merged"] = merged
    seconds = interleaved_medians(functions, repetitions)
    tokens = batch_size * new
    result: dict[str, Any] = {
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "batch_size": batch_size,
        "prompt_tokens": int(ids.shape[1]),
        "max_new_tokens": new,
        "repetitions": repetitions,
    }
    for name, value in seconds.items():
        result[f"{name}_tokens_per_s"] = tokens / value
    if "doubled" in seconds:
        # Per-prompt rate of the doubled batch relative to vanilla: the ceiling of `ratio`.
        result.pop("doubled_tokens_per_s")
        result["doubled_batch_ceiling"] = seconds["vanilla"] / seconds["doubled"]
    if "sampled" in seconds:
        result["sampled_vs_greedy"] = seconds["imsm"] / seconds["sampled"]  # 1 = sampling costs nothing
    if "naive" in include:

        def naive():
            return naive_generate(model, ids, mask, max_new_tokens=naive_tokens, eos_token_id=[])

        result["naive_siamese_tokens_per_s"] = batch_size * naive_tokens / median_seconds(naive, 1)
        result["naive_tokens"] = naive_tokens
    result["ratio"] = result["imsm_tokens_per_s"] / result["vanilla_tokens_per_s"]
    return result


def compile_config_for(device: torch.device) -> CompileConfig:
    """CUDA graphs on a GPU ("reduce-overhead"); inductor's default mode elsewhere, where there are
    none. Given explicitly, so transformers' `generate` compiles on a CPU too."""
    config = CompileConfig(mode="reduce-overhead" if device.type == "cuda" else "default")
    config._compile_all_devices = True  # transformers' switch for compiling off accelerators
    return config


def _static_decoders(model, ids, mask, new: int, hf_greedy: dict, include) -> dict[str, Any]:
    """The static-cache rows asked for in `include`: IMSM eager and compiled, transformers compiled."""
    config = compile_config_for(model.device)
    static = {"max_new_tokens": new, "eos_token_id": [], "cache_implementation": "static"}
    functions = {}
    if "static" in include:
        functions["static"] = lambda: model.generate(ids, mask, disable_compile=True, **static)
    if "compiled" in include:
        functions["compiled"] = lambda: model.generate(ids, mask, compile_config=config, **static)
    if "hf_compiled" in include:

        def hf_compiled():
            with torch.no_grad():
                return model.peft_model.generate(
                    input_ids=ids, attention_mask=mask, cache_implementation="static", compile_config=config,
                    **hf_greedy,
                )  # fmt: skip

        functions["hf_compiled"] = hf_compiled
    return functions


def compiled_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Issue 30's figures from one `bench_decode` result at batch 1: the machine, the model, and
    tokens/s of IMSM compiled, IMSM eager and transformers' compiled generate (vanilla)."""
    if result.get("batch_size") != 1:
        raise ValueError(f"the summary is of batch 1; this run decoded batch {result.get('batch_size')}")
    missing = [row for row in COMPILED_SUMMARY.values() if row not in result]
    if missing:
        raise ValueError(f"the summary needs the rows {missing}; run without skipping them")
    summary = {"machine": result["machine"], "model": result["model"]}
    summary.update({key: result[row] for key, row in COMPILED_SUMMARY.items()})
    return summary
