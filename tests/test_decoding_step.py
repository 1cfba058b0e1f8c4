"""Static-cache and compiled decoding give the eager decoder's tokens (issue 30).

`cache_implementation="static"` decodes through transformers' `StaticCache` with shapes fixed for
the whole call; with a `compile_config` the per-token step runs under `torch.compile`. Both must
emit exactly the tokens of the default decoder (itself equal to naive recomputation,
tests/test_decoding_equivalence.py) in fp32: every architecture with LoRA and (IA)3, padded
batches and single prompts, shared lower layers, rows stopping at EOS, and the cap. Compiling on
a CPU costs seconds per model, so the compiled cases are few and marked slow.
"""

from __future__ import annotations

import pytest
import torch
from transformers import CompileConfig, StaticCache

from conftest import (
    ARCHITECTURES,
    deep_model,
    layers_adapter_config,
    peft_config,
    perturb_adapter,
    random_batch,
    save_tiny_model,
    tiny_model,
)
from imsm import IMSMConfig, get_imsm_model
from imsm.cli import main
from imsm.cli.options import DecodingOptions
from imsm.errors import IMSMError
from imsm.model.decoding_plan import plan_decoding
from imsm.model.decoding_step import static_cache

NEW_TOKENS = 10
STATIC = {"cache_implementation": "static", "disable_compile": True}
COMPILED = {"cache_implementation": "static", "compile_config": CompileConfig(mode="default")}


def build(architecture: str, method: str, upper: bool = False):
    """A tiny model with its adapter moved off the identity and a decisive gate; with `upper`,
    four layers adapted on the top two, so decoding shares the lower two."""
    if upper:
        base, config = deep_model(architecture), layers_adapter_config(method, architecture)
    else:
        base, config = tiny_model(architecture), peft_config(method, architecture)
    model = get_imsm_model(base, config, IMSMConfig())
    perturb_adapter(model)
    torch.nn.init.normal_(model.gate.W_B, std=2.0)
    return model.eval()


def assert_same_tokens(model, options: dict, padding: str = "left", stop: bool = False, upper: bool = False):
    """The eager decoder's tokens, for a padded batch of three and for its first prompt alone."""
    input_ids, attention_mask = random_batch(padding=padding)
    for ids, mask in ((input_ids, attention_mask), (input_ids[:1], None)):  # row 0 is unpadded
        stopping = {"eos_token_id": [], "pad_token_id": 0}
        if stop:  # an EOS that row 0 emits at its third step: it stops there and pads after
            free = model.generate(ids, mask, max_new_tokens=NEW_TOKENS, **stopping)
            stopping["eos_token_id"] = int(free[0, ids.shape[1] + 2])
        eager = model.generate(ids, mask, max_new_tokens=NEW_TOKENS, **stopping)
        fixed = model.generate(ids, mask, max_new_tokens=NEW_TOKENS, **stopping, **options)
        assert torch.equal(fixed, eager)
        if stop and mask is None:
            assert fixed.shape[1] <= ids.shape[1] + 3  # every row stopped: decoding ends early
    assert model.shared_layer_count(doubled_batch=True) == (2 if upper else 0)  # switched back on
    assert model.router.mode == "tuned"


@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")
@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_static_cache_decodes_the_eager_tokens(architecture, method):
    assert_same_tokens(build(architecture, method), STATIC)


@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_static_cache_decodes_the_eager_tokens_with_shared_lower_layers(architecture):
    assert_same_tokens(build(architecture, "ia3", upper=True), STATIC, upper=True)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_static_cache_stops_rows_at_eos_like_the_eager_decoder(padding):
    assert_same_tokens(build("llama", "lora"), STATIC, padding=padding, stop=True)


def test_static_cache_samples_like_the_eager_decoder():
    """Processors and sampling act on the logits outside the step: the same draws, seed for seed."""
    model = build("qwen2", "lora")
    input_ids, attention_mask = random_batch()
    sampling = {"do_sample": True, "top_k": 20, "repetition_penalty": 1.3, "max_new_tokens": 8, "eos_token_id": []}
    torch.manual_seed(5)
    eager = model.generate(input_ids, attention_mask, **sampling)
    torch.manual_seed(5)
    assert torch.equal(model.generate(input_ids, attention_mask, **sampling, **STATIC), eager)


def test_a_static_cache_is_reused_for_calls_of_the_same_shape():
    """A CUDA graph recorded its tensors' addresses: the next call of the same shape gets the same
    cache back, reset; another shape gets a new one. Lengths round up to 64."""
    model = build("llama", "lora")
    first = static_cache(model, 3, 20)
    assert isinstance(first, StaticCache) and first.layers[0].max_cache_len == 64
    model.generate(*random_batch(), max_new_tokens=4, eos_token_id=[], **STATIC)  # 9 + 4 tokens: the same cache
    assert static_cache(model, 3, 64) is first and int(first.get_seq_length()) == 0
    assert static_cache(model, 2, 20) is not first
    assert static_cache(model, 2, 65).layers[0].max_cache_len == 128


def test_the_options_are_planned_as_transformers_names_them():
    plan = plan_decoding([2], max_new_tokens=4)
    assert not plan.static_cache and plan.compiling(torch.device("cuda")) is None
    plan = plan_decoding([2], cache_implementation="static")
    assert plan.static_cache
    # As transformers' generate: a static cache compiles on a GPU unless told not to ...
    assert plan.compiling(torch.device("cuda")).mode == "reduce-overhead"
    assert plan.compiling(torch.device("cpu")) is None
    assert plan_decoding([2], **STATIC).compiling(torch.device("cuda")) is None
    # ... and, given a compile config, on any device.
    assert plan_decoding([2], **COMPILED).compiling(torch.device("cpu")).mode == "default"
    with pytest.raises(IMSMError, match="cache_implementation='offloaded'"):
        plan_decoding([2], cache_implementation="offloaded")
    with pytest.raises(IMSMError, match="compile_config needs cache_implementation='static'"):
        plan_decoding([2], compile_config=CompileConfig())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")
@pytest.mark.parametrize(("architecture", "method", "upper"), [("llama", "lora", False), ("gpt2", "ia3", True)])
def test_compiled_decoding_gives_the_eager_tokens(architecture, method, upper):
    """torch.compile on the CPU (inductor, the default mode): one model per case, both shapes."""
    assert_same_tokens(build(architecture, method, upper), COMPILED, stop=True, upper=upper)


def test_the_command_line_compile_option_asks_for_a_static_compiled_decoder():
    assert "cache_implementation" not in DecodingOptions().generation_options()
    options = DecodingOptions(compile=True).generation_options()
    assert options["cache_implementation"] == "static" and isinstance(options["compile_config"], CompileConfig)
    assert plan_decoding([2], **options).compiling(torch.device("cpu")) is not None


def test_sliding_window_models_are_refused_a_static_cache():
    config = tiny_model("qwen2").config.to_dict()
    config.pop("layer_types", None)  # rebuilt from the window settings
    config.update(use_sliding_window=True, sliding_window=4, max_window_layers=0)
    base = type(tiny_model("qwen2"))(type(tiny_model("qwen2")).config_class(**config)).eval()
    model = get_imsm_model(base, peft_config("lora", "qwen2"), IMSMConfig()).eval()
    with pytest.raises(IMSMError, match="sliding-window attention layers"):
        model.generate(*random_batch(), max_new_tokens=3, **STATIC)


@pytest.mark.slow
def test_imsm_generate_compile_prints_the_eager_answers(tmp_path, capsys):
    """`imsm generate --compile` end to end (CUDA graphs' mode, which a CPU compiles without)."""
    save_tiny_model(tmp_path / "model")
    common = ["generate", "--model", str(tmp_path / "model"), "--dtype", "fp32", "--max-new-tokens", "5"]
    common += ["--prompt", "w5 w6 w7", "--prompt", "w9"]
    assert main(common) == 0
    eager = capsys.readouterr().out
    assert main([*common, "--compile"]) == 0
    assert capsys.readouterr().out == eager
    assert main([*common, "--compile", "--stream"]) == 0
    assert capsys.readouterr().out.replace("\n\n", "\n") == eager.replace("\n\n", "\n")
