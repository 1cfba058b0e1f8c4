"""What `IMSMModel.generate` does at each step, from a `transformers.GenerationConfig` and keywords.

The logits processors, warpers, stopping criteria and streamers are transformers' own classes,
chosen from the config under the conditions transformers' `generate` applies them (unset values
take transformers' defaults: a sampling run keeps the 50 likeliest tokens unless told otherwise).
They act on the fused logits; the token they pick is fed to both branches of the doubled batch.

IMSM decodes greedily unless asked otherwise, whatever a model's own `generation_config.json`
says (the paper's decoder is greedy, and evaluation must not start sampling because a checkpoint
ships `do_sample: true`); only its stop and padding tokens are taken from the model.

`cache_implementation="static"` decodes with transformers' `StaticCache` (shapes fixed for the
whole call), and then, as transformers' `generate` does, compiles the per-token step on a GPU
unless `disable_compile=True`; a `compile_config` compiles it on any device (on a CPU too, where
transformers would not). `imsm.model.decoding_step` runs it.

What the siamese decoder cannot do is refused by name, never ignored: beam search and its
relatives, assisted and speculative decoding, several sequences per prompt, prefill chunking
(the query memory is the mean over the whole prompt), scores or dicts as output.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from transformers import CompileConfig, GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.generation import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    StopStringCriteria,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer

from imsm.errors import IMSMError

DEFAULT_MAX_NEW_TOKENS = 64
# transformers' values for unset fields, as its `generate` fills them in.
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}
SUPPORTED = {
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "eos_token_id",
    "pad_token_id",
    "stop_strings",
    "cache_implementation",  # "dynamic" (the default) or "static"
    "compile_config",
    "disable_compile",
}
CACHE_IMPLEMENTATIONS = ("dynamic", "static")
# Fields a model's generation_config.json carries that change nothing here, or that only restate
# what this decoder does anyway.
HARMLESS = {
    "bos_token_id",
    "decoder_start_token_id",
    "transformers_version",
    "_from_model_config",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "num_beams",  # accepted when 1
    "num_return_sequences",  # accepted when 1
    "return_dict_in_generate",  # accepted when False
    "output_scores",  # accepted when False
}
# One-line reasons for the refusals users are most likely to meet.
WHY_NOT = {
    "num_beams": "beam search is not supported: the decoder keeps one fused hypothesis per prompt",
    "num_return_sequences": "several sequences per prompt are not supported; repeat the prompt in the batch",
    "prefill_chunk_size": "prefill chunking is not supported: the query memory needs the whole prompt at once",
    "assistant_model": "assisted (speculative) decoding is not supported",
    "prompt_lookup_num_tokens": "prompt-lookup decoding is not supported",
    "penalty_alpha": "contrastive search is not supported",
    "return_dict_in_generate": "generate returns token ids only",
    "output_scores": "generate returns token ids only",
    "max_length": "give max_new_tokens instead of max_length",
}
ACCEPTED_VALUES = {"num_beams": 1, "num_return_sequences": 1, "return_dict_in_generate": False, "output_scores": False}


@dataclass
class DecodingPlan:
    """The per-step choices of one `generate` call."""

    max_new_tokens: int
    do_sample: bool
    processors: LogitsProcessorList
    stopping: StoppingCriteriaList
    eos_ids: list[int]
    pad_token_id: int
    streamer: BaseStreamer | None = None
    static_cache: bool = False  # transformers' StaticCache instead of the growing DynamicCache
    compile_config: CompileConfig | None = None  # given: compile the step on any device
    disable_compile: bool = False

    def compiling(self, device: torch.device) -> CompileConfig | None:
        """How the per-token step is compiled on `device`, None for not at all: as transformers'
        `generate` decides (a static cache on an accelerator, unless `disable_compile`), and on
        any device when a `compile_config` was given."""
        if not self.static_cache or self.disable_compile:
            return None
        if self.compile_config is not None:
            return self.compile_config
        return CompileConfig() if device.type == "cuda" else None

    @property
    def reads_sequences(self) -> bool:
        """Whether a processor or criterion needs the ids so far (the greedy fast path does not)."""
        return bool(self.processors) or bool(self.stopping)

    @classmethod
    def greedy(cls, max_new_tokens: int, eos_ids: list[int], pad_token_id: int) -> DecodingPlan:
        return cls(max_new_tokens, False, LogitsProcessorList(), StoppingCriteriaList(), eos_ids, pad_token_id)


def _refuse_unsupported(config: GenerationConfig) -> None:
    for name, value in config.to_diff_dict().items():
        if name in SUPPORTED:
            continue
        if name in HARMLESS and ACCEPTED_VALUES.get(name, value) == value:
            continue
        reason = WHY_NOT.get(name, "IMSM's decoder does not support it")
        raise IMSMError(
            f"generation option {name}={value!r}: {reason} (supported: {', '.join(sorted(SUPPORTED))}, streamer)"
        )


def plan_decoding(
    default_eos_ids: list[int],
    generation_config: GenerationConfig | None = None,
    streamer: BaseStreamer | None = None,
    tokenizer: Any = None,
    **options: Any,
) -> DecodingPlan:
    """The plan for one call: `generation_config` (copied, never changed), then `options` over it.

    Args:
        default_eos_ids: The model's stop tokens, used when the config names none.
        generation_config: A `transformers.GenerationConfig`; greedy with 64 new tokens if omitted.
        streamer: A transformers streamer (`TextStreamer`, `TextIteratorStreamer`, ...).
        tokenizer: Needed by `stop_strings` only.
        options: Any field of `GenerationConfig`; unknown names and unsupported features are refused.
    """
    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise IMSMError(f"generation_config must be a transformers.GenerationConfig, got {type(generation_config)}")
    config = copy.deepcopy(generation_config) if generation_config is not None else GenerationConfig()
    for name in ("assistant_model", "prefill_chunk_size", "logits_processor", "stopping_criteria"):
        if name in options:
            raise IMSMError(f"generate({name}=...): {WHY_NOT.get(name, 'not supported by the IMSM decoder')}")
    for name, value in options.items():  # before transformers' own checks, which word them otherwise
        if name in WHY_NOT and ACCEPTED_VALUES.get(name, object()) != value:
            raise IMSMError(f"generation option {name}={value!r}: {WHY_NOT[name]}")
    try:
        unknown = config.update(**options)
    except ValueError as error:  # transformers' validation of the combined config
        raise IMSMError(f"generation options {options}: {str(error).splitlines()[0]}") from None
    if unknown:
        raise IMSMError(f"unknown generation option(s) {', '.join(sorted(unknown))}; see transformers.GenerationConfig")
    _refuse_unsupported(config)
    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if config.max_new_tokens is None else int(config.max_new_tokens)
    if max_new_tokens < 1:
        raise IMSMError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    eos = config.eos_token_id if config.eos_token_id is not None else default_eos_ids
    eos_ids = [eos] if isinstance(eos, int) else list(eos)
    pad = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    do_sample = bool(config.do_sample)
    cache = config.cache_implementation or "dynamic"
    if cache not in CACHE_IMPLEMENTATIONS:
        choices = ", ".join(CACHE_IMPLEMENTATIONS)
        raise IMSMError(f"cache_implementation={cache!r}: IMSM's decoder takes one of {choices}")
    if config.compile_config is not None and cache != "static":
        raise IMSMError("compile_config needs cache_implementation='static': only fixed shapes are compiled")

    processors = LogitsProcessorList()
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=config.repetition_penalty))
    if do_sample:  # warpers shape the sampling distribution only, as in transformers
        values = {name: getattr(config, name) for name in SAMPLING_DEFAULTS}
        values = {name: SAMPLING_DEFAULTS[name] if value is None else value for name, value in values.items()}
        if values["temperature"] <= 0:
            raise IMSMError(f"temperature must be > 0 when sampling, got {values['temperature']}; use do_sample=False")
        if values["temperature"] != 1.0:
            processors.append(TemperatureLogitsWarper(values["temperature"]))
        if values["top_k"] != 0:
            processors.append(TopKLogitsWarper(top_k=values["top_k"], min_tokens_to_keep=1))
        if values["top_p"] < 1.0:
            processors.append(TopPLogitsWarper(top_p=values["top_p"], min_tokens_to_keep=1))
        if config.min_p is not None:
            processors.append(MinPLogitsWarper(min_p=config.min_p, min_tokens_to_keep=1))

    stopping = StoppingCriteriaList()
    if config.stop_strings:
        if tokenizer is None:
            raise IMSMError("stop_strings needs the tokenizer: pass tokenizer=... to generate")
        stopping.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=config.stop_strings))
    plan = DecodingPlan(max_new_tokens, do_sample, processors, stopping, eos_ids, pad, streamer)
    plan.static_cache = cache == "static"
    plan.compile_config, plan.disable_compile = config.compile_config, bool(config.disable_compile)
    return plan
