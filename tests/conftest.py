"""Tiny seeded models built from configs, and peft configs for each method under test.

Nothing here touches a hub: every model is random, a few thousand parameters, fp32.
"""

from __future__ import annotations

import os

import pytest
import torch
from peft import AdaLoraConfig, IA3Config, LoraConfig, VeraConfig
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from imsm.peft_methods.builders import build_peft_config
from imsm.peft_methods.loramoe import LoRAMoEConfig

# The model tests on an accelerator or in another dtype, opt-in (a GPU machine; CI runs neither):
#   IMSM_TEST_DEVICE=cuda IMSM_TEST_DTYPE=bf16 python -m pytest tests/test_decode.py ...
# (`make test-gpu` runs them on CUDA in fp32, then bf16.) Every tensor and model the tests build
# then lands there by default, and every float comparison takes its tolerance from the dtype
# (tests/tolerance.py), so they pass in each.
_TEST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
if os.environ.get("IMSM_TEST_DEVICE"):
    torch.set_default_device(os.environ["IMSM_TEST_DEVICE"])
    # Full fp32 in matrix products and convolutions: TF32 (Ampere and later) would round their
    # inputs to 10 mantissa bits, so an fp32 run would check the library no closer than 2**-10,
    # 8192 times fp32's epsilon, and an fp32 test would stop telling fp32 bugs from rounding.
    # Likewise bf16/fp16 products are summed in fp32, as on the CPU, not partly in their own
    # precision (cuBLAS's default). The library leaves these settings to its user; the tests check
    # its arithmetic, and tests/tolerance.py reads whatever is in force, so a run that turns them
    # back on gets tolerances to match.
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
if os.environ.get("IMSM_TEST_DTYPE"):
    torch.set_default_dtype(_TEST_DTYPES[os.environ["IMSM_TEST_DTYPE"]])

VOCAB = 96
EOS = 2


def seeded_generator(seed: int) -> torch.Generator:
    """A generator on the tests' default device: torch refuses a CPU generator for a CUDA tensor."""
    return torch.Generator(torch.get_default_device()).manual_seed(seed)


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
        if torch.get_default_device().type != "cpu":
            pytest.skip("peft's VeRA draws its projections with a CPU generator, refused on a non-CPU default device")
        return VeraConfig(r=8, target_modules=targets)
    if method == "loramoe":  # IMSM's own tuner; GPT-2's feed-forward layers are Conv1D, named here
        gpt2_targets = {"target_modules": ["c_fc", "mlp.c_proj"]} if architecture == "gpt2" else {}
        return LoRAMoEConfig(
            r=2, lora_alpha=8, num_experts=4, lora_dropout=0.0, balance_delta=0.1, balance_weight=0.1, **gpt2_targets
        )
    if method in OTHER_TUNERS:  # the paper's defaults, through the generic branch split
        return build_peft_config(method, target_modules=None if method == "ln_tuning" else _ATTENTION[architecture])
    raise ValueError(method)


# Tuners beyond PEFT_METHODS that `peft_config` also builds (IMSM's LoRAMoE, and peft tuners
# without a fast path); not a fixture, so only the tests that name them pay for them.
OTHER_TUNERS = ["lokr", "ln_tuning", "oft"]

# Four-layer models adapted on layers 2-3 only: the layers below the adapter can be shared by the
# two branches (`IMSMModel.share_lower_layers`), and an upper layer above the first adapted one
# receives the doubled batch's arguments second-hand.
DEEP_LAYERS = 4
UPPER_LAYERS = [2, 3]
# The adapted projections, as paths inside one decoder layer, and the stack's attribute name.
LAYER_MODULES = {
    "llama": ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"],
    "qwen2": ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"],
    "gpt2": ["attn.c_attn", "mlp.c_proj"],
}
_STACK = {"llama": "layers", "qwen2": "layers", "gpt2": "h"}


def deep_model(architecture: str, **overrides):
    """`tiny_model` of `architecture` with DEEP_LAYERS layers (same seed and sizes)."""
    config = tiny_model(architecture).config.to_dict()
    config.pop("layer_types", None)  # derived from the layer count when the config is built
    config["n_layer" if "n_layer" in config else "num_hidden_layers"] = DEEP_LAYERS
    config.update(overrides)
    model_class = type(tiny_model(architecture))
    torch.manual_seed(0)
    return model_class(model_class.config_class(**config)).eval()


def module_targets(architecture: str, layers) -> list[str]:
    """Full paths of the adapted projections in decoder layers `layers`."""
    return [f"{_STACK[architecture]}.{i}.{inner}" for i in layers for inner in LAYER_MODULES[architecture]]


def layers_adapter_config(method: str, architecture: str, layers=UPPER_LAYERS):
    """LoRA or (IA)3 on decoder layers `layers` only: LoRA through peft's `layers_to_transform`;
    (IA)3, which lacks it, through module paths."""
    if method == "lora":
        targets = sorted({inner.split(".")[-1] for inner in LAYER_MODULES[architecture]})
        return LoraConfig(r=4, lora_alpha=8, target_modules=targets, layers_to_transform=layers, lora_dropout=0.0)
    targets = module_targets(architecture, layers)
    return IA3Config(target_modules=targets, feedforward_modules=[t for t in targets if ".mlp." in t])


def perturb_adapter(model, scale: float = 0.3, seed: int = 1) -> None:
    """Move every peft parameter away from its identity init, so the two branches differ."""
    generator = seeded_generator(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and not name.startswith("gate."):
                noise = torch.randn(parameter.shape, generator=generator).to(parameter)
                parameter.add_(noise * scale)


def random_batch(batch_size: int = 3, length: int = 9, seed: int = 2, padding: str = "left"):
    """Token ids avoiding special ids, with rows of different lengths padded on one side."""
    generator = seeded_generator(seed)
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


# Ways a saved file is found damaged: cut short (a kill or a full disk mid-copy), zero-filled (a
# crash that left its blocks unwritten), another kind of file in its place, NaN or inf inside.
DAMAGES = ["truncated", "zero-filled", "wrong format", "nan", "inf"]
JSON_DAMAGES = ["truncated", "zero-filled", "wrong format"]


def damage(path, how: str) -> None:
    """Damage the file at `path` in place, `how` one of DAMAGES ("nan" and "inf": safetensors only)."""
    from safetensors.torch import load_file, save_file

    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero-filled":
        path.write_bytes(bytes(len(data)))
    elif how == "wrong format":  # JSON in place of safetensors, YAML in place of JSON
        path.write_bytes(b'{"W_A": [[0.1, 0.2]]}\n' if path.suffix == ".safetensors" else b"name: probe\n")
    elif how in ("nan", "inf"):
        tensors = load_file(path)
        name = next(n for n, t in tensors.items() if t.is_floating_point())
        tensors[name].view(-1)[0] = float(how)
        save_file(tensors, path)
    else:
        raise ValueError(how)


def expected_problem(path, how: str) -> str:
    """What `imsm.checked_files` says of a file damaged `how`."""
    if how in ("nan", "inf"):
        return "holds non-finite values (NaN or inf)"
    if how == "zero-filled":
        return "is zero-filled"
    if path.suffix == ".safetensors":
        return "is cut short or not a safetensors file"
    return "is cut short or not valid JSON"
