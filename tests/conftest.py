"""Tiny seeded models built from configs, and peft configs for each method under test.

Nothing here touches a hub: every model is random, a few thousand parameters, fp32.
"""

from __future__ import annotations

import pytest
import torch
from peft import AdaLoraConfig, IA3Config, LoraConfig, VeraConfig
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 96
EOS = 2


def tiny_model(architecture: str, seed: int = 0, hidden_size: int = 32):
    """A two-layer random causal LM of the given family."""
    torch.manual_seed(seed)
    common = {"vocab_size": VOCAB, "eos_token_id": EOS, "bos_token_id": 1, "pad_token_id": 0, "initializer_range": 0.1}
    if architecture == "llama":
        config = LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **common,
        )
        model = LlamaForCausalLM(config)
    elif architecture == "qwen2":
        config = Qwen2Config(
            hidden_size=hidden_size,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **common,
        )
        model = Qwen2ForCausalLM(config)
    elif architecture == "gpt2":
        config = GPT2Config(n_embd=hidden_size, n_layer=2, n_head=4, n_positions=128, **common)
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(architecture)
    return model.eval()


ARCHITECTURES = ["llama", "qwen2", "gpt2"]
PEFT_METHODS = ["lora", "ia3", "adalora", "dora", "vera"]

# Attention and MLP projections per family, for methods without a peft default mapping.
_ATTENTION = {"llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}
_MLP_OUT = {"llama": "down_proj", "qwen2": "down_proj", "gpt2": "mlp.c_proj"}


def peft_config(method: str, architecture: str):
    """A small config of `method` for `architecture`, on both attention and MLP layers."""
    targets = _ATTENTION[architecture] + [_MLP_OUT[architecture]]
    if method == "lora":
        return LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0)
    if method == "dora":
        return LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, use_dora=True)
    if method == "adalora":
        return AdaLoraConfig(
            init_r=4, target_r=2, lora_alpha=8, target_modules=targets, total_step=20, lora_dropout=0.0
        )
    if method == "ia3":
        return IA3Config(target_modules=targets, feedforward_modules=[_MLP_OUT[architecture]])
    if method == "vera":  # no fast path: exercises the generic branch split
        return VeraConfig(r=8, target_modules=targets)
    raise ValueError(method)


def perturb_adapter(model, scale: float = 0.3, seed: int = 1) -> None:
    """Move every peft parameter away from its identity init, so the two branches differ."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and not name.startswith("gate."):
                noise = torch.randn(parameter.shape, generator=generator).to(parameter)
                parameter.add_(noise * scale)


def random_batch(batch_size: int = 3, length: int = 9, seed: int = 2, padding: str = "left"):
    """Token ids avoiding special ids, with rows of different lengths padded on one side."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(batch_size):
        pad = (row * 2) % (length - 2)
        if pad:
            if padding == "left":
                attention_mask[row, :pad] = 0
            else:
                attention_mask[row, length - pad :] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    return input_ids, attention_mask


@pytest.fixture(params=ARCHITECTURES)
def architecture(request):
    return request.param


@pytest.fixture(params=PEFT_METHODS)
def method(request):
    return request.param


def tiny_tokenizer():
    """A word-level tokenizer over the tiny vocabulary: "w3 w17 ..." <-> ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": EOS, **{f"w{i}": i for i in range(3, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<pad>"
    )


def save_tiny_model(directory, architecture: str = "llama", seed: int = 0):
    """A tiny model and its tokenizer as a local model directory (safetensors)."""
    model = tiny_model(architecture, seed)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
