"""Cached decoding equals naive recomputation (STYLE rule 10), stated once.

`model.generate` decodes with one KV cache for both branches, sharing the layers below the
adapter when it can; `imsm.model.decode.naive_generate` recomputes both branches over the whole
sequence at every step through `IMSMModel.forward`, sharing nothing. They must emit the same
tokens for every architecture, peft method, fusion mode, padding side and shared-layer setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from peft import LoraConfig

from conftest import (
    ARCHITECTURES,
    DEEP_LAYERS,
    OTHER_TUNERS,
    PEFT_METHODS,
    UPPER_LAYERS,
    deep_model,
    layers_adapter_config,
    module_targets,
    peft_config,
    perturb_adapter,
    random_batch,
    tiny_model,
)
from imsm import FUSION_MODES, IMSMConfig, get_imsm_model
from imsm.model.decode import naive_generate
from tolerance import assert_decodes_agree_until_a_near_tie

NEW_TOKENS = 10

# Where the adapter sits, and how many layers below it the two branches then share in decoding.
ADAPTED = {
    "all": 0,  # conftest's two-layer model, every layer adapted
    "upper": 2,  # four layers, the adapter on 2-3 only: layers 0-1 shared
    "top+head": 3,  # four layers, LoRA on layer 3 and the output head: layers 0-2 shared
    "every": 0,  # four layers, all adapted: nothing to share
}


@dataclass(frozen=True)
class Case:
    architecture: str
    method: str
    fusion: str = "imsm"
    adapted: str = "all"
    share: bool = True  # `IMSMModel.share_lower_layers` while decoding with the cache
    padding: str = "left"  # "left", "right", or "none": one prompt, no attention mask
    attention: str | None = None  # an attention implementation other than the default (sdpa)
    stop: bool = False  # an EOS that row 0 emits at its third step, and pad after it

    def __str__(self) -> str:
        parts = [self.architecture, self.method, self.fusion, self.adapted, f"{self.padding}-padded"]
        parts += [] if self.share else ["unshared"]
        parts += [self.attention] if self.attention else []
        parts += ["eos"] if self.stop else []
        return "-".join(parts)


CASES = [
    # Every architecture with every method, IMSM's own LoRAMoE included.
    *(Case(a, m) for a in ARCHITECTURES for m in [*PEFT_METHODS, "loramoe"]),
    # Peft tuners without a fast path, through the generic branch split.
    *(Case("llama", m) for m in OTHER_TUNERS),
    # Every fusion mode; vanilla peft ("none") over the architectures with LoRAMoE too.
    *(Case("llama", "lora", fusion) for fusion in FUSION_MODES if fusion != "imsm"),
    *(Case(a, "loramoe", "none") for a in ARCHITECTURES),
    # Right padding (moved to the left) and a single prompt without a mask.
    *(Case(a, "lora", padding="right") for a in ARCHITECTURES),
    *(Case(a, "lora", adapted="upper", padding=p) for a in ARCHITECTURES for p in ("right", "none")),
    # Shared lower layers, on and off; with eager attention; an adapted head; nothing to share.
    *(Case(a, m, adapted="upper", share=s) for a in ARCHITECTURES for m in ("lora", "ia3") for s in (True, False)),
    Case("llama", "lora", adapted="upper", attention="eager"),
    Case("qwen2", "lora", adapted="top+head"),
    *(Case(a, "lora", adapted="every") for a in ARCHITECTURES),
    # Rows that stop at EOS at different steps, padded after it.
    Case("llama", "dora", stop=True),
    Case("gpt2", "ia3", adapted="upper", stop=True),
]


def build(case: Case):
    """The case's model, its adapter moved off the identity init and a decisive gate."""
    if case.adapted == "all":
        base, config = tiny_model(case.architecture), peft_config(case.method, case.architecture)
    else:
        base = deep_model(case.architecture)
        if case.adapted == "top+head":
            config = LoraConfig(r=4, target_modules=[*module_targets(case.architecture, [3]), "lm_head"])
        else:
            layers = list(range(DEEP_LAYERS)) if case.adapted == "every" else UPPER_LAYERS
            config = layers_adapter_config(case.method, case.architecture, layers)
    if case.attention:
        base.set_attn_implementation(case.attention)
    model = get_imsm_model(base, config, IMSMConfig(fusion=case.fusion))
    perturb_adapter(model)
    if model.gate is not None:
        torch.nn.init.normal_(model.gate.W_B, std=2.0)  # a decisive gate, so fusion matters
    return model.eval()


def prompts(case: Case):
    """A batch of three prompts of different lengths, or the first one alone and unmasked."""
    input_ids, attention_mask = random_batch(padding="right" if case.padding == "right" else "left")
    if case.padding == "none":
        return input_ids[:1], None  # row 0 has no padding
    return input_ids, attention_mask


@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to True:UserWarning")
@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cached_decoding_equals_naive_recomputation(case):
    model = build(case)
    input_ids, attention_mask = prompts(case)
    model.share_lower_layers = case.share
    # The case exercises what it names: the layers below the adapter are shared, or not.
    assert model.shared_layer_count(doubled_batch=True) == (ADAPTED[case.adapted] if case.share else 0)
    stop = {"eos_token_id": [], "pad_token_id": 0}
    if case.stop:
        free = model.generate(input_ids, attention_mask, max_new_tokens=NEW_TOKENS, **stop)
        stop["eos_token_id"] = int(free[0, input_ids.shape[1] + 2])
    cached = model.generate(input_ids, attention_mask, max_new_tokens=NEW_TOKENS, **stop)
    model.share_lower_layers = False  # the reference shares nothing and caches nothing
    naive = naive_generate(model, input_ids, attention_mask, max_new_tokens=NEW_TOKENS, **stop)
    # Not bit-identical by construction: one step's products over the cache against products over
    # the whole sequence, and a doubled batch against two, may round differently. The tokens agree
    # up to the first step whose two best logits are closer than that rounding.
    assert_decodes_agree_until_a_near_tie(model, cached, naive, attention_mask, input_ids.shape[1])
    if not case.stop:
        assert cached.shape == (input_ids.shape[0], input_ids.shape[1] + NEW_TOKENS)
