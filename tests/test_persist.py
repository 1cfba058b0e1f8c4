"""Saved directories: peft's files plus the gate, safetensors only, refused on the wrong base."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from conftest import peft_config, perturb_adapter, random_batch, tiny_model
from imsm import IMSMConfig, IMSMError, IMSMModel, get_imsm_model


def build(architecture="llama", method="lora", fusion="imsm"):
    model = get_imsm_model(tiny_model(architecture), peft_config(method, architecture), IMSMConfig(fusion=fusion))
    perturb_adapter(model)
    if model.gate is not None:
        torch.nn.init.normal_(model.gate.W_B, std=2.0)
    return model.eval()


def test_save_then_load_gives_identical_logits(architecture, method, tmp_path):
    model = build(architecture, method)
    model.save_pretrained(tmp_path)
    loaded = IMSMModel.from_pretrained(tiny_model(architecture), tmp_path)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        assert torch.equal(model(input_ids, attention_mask).logits, loaded(input_ids, attention_mask).logits)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_peft_alone_loads_the_tuned_branch(architecture, method, tmp_path):
    model = build(architecture, method)
    model.save_pretrained(tmp_path)
    peft_model = PeftModel.from_pretrained(tiny_model(architecture), tmp_path)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        expected = model.peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
        actual = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.equal(actual, expected)


def test_directory_holds_safetensors_and_a_readable_config(tmp_path):
    model = build()
    model.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "imsm_config.json", "imsm_gate.safetensors"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)
    assert not any(name.startswith(".") for name in names)
    saved = json.loads((tmp_path / "imsm_config.json").read_text())
    assert saved["imsm"] == {"gate_rank": 8, "fusion": "imsm", "gate_dropout": 0.1}
    assert saved["base_model"]["hidden_size"] == 32 and saved["base_model"]["model_type"] == "llama"
    assert saved["peft_type"] == "LORA" and saved["imsm_version"]


def test_loading_for_training_makes_adapter_and_gate_trainable(tmp_path):
    build().save_pretrained(tmp_path)
    loaded = IMSMModel.from_pretrained(tiny_model("llama"), tmp_path, is_trainable=True)
    groups = {loaded.parameter_group(n) for n, p in loaded.named_parameters() if p.requires_grad}
    assert groups == {"peft", "gate"}


def test_vanilla_fusion_saves_no_gate_and_reloads_as_vanilla(tmp_path):
    build(fusion="none").save_pretrained(tmp_path)
    assert not (tmp_path / "imsm_gate.safetensors").exists()
    assert IMSMModel.from_pretrained(tiny_model("llama"), tmp_path).fusion == "none"


def test_a_plain_peft_directory_loads_as_vanilla_peft(tmp_path):
    model = build(fusion="none")
    model.peft_model.save_pretrained(tmp_path)
    loaded = IMSMModel.from_pretrained(tiny_model("llama"), tmp_path)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids, attention_mask).logits, model(input_ids, attention_mask).logits)


@pytest.mark.parametrize("other", [("llama", 48), ("qwen2", 32)])
def test_loading_onto_another_base_model_is_refused(other, tmp_path):
    build().save_pretrained(tmp_path)
    architecture, hidden_size = other
    with pytest.raises(IMSMError, match="made for another base model"):
        IMSMModel.from_pretrained(tiny_model(architecture, hidden_size=hidden_size), tmp_path)


def test_pickle_only_directories_are_refused_without_unpickling(tmp_path, monkeypatch):
    build().save_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").rename(tmp_path / "adapter_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(IMSMError, match="only pickle weights"):
        IMSMModel.from_pretrained(tiny_model("llama"), tmp_path)


def test_missing_directory_and_missing_gate_are_refused(tmp_path):
    with pytest.raises(IMSMError, match="does not exist"):
        IMSMModel.from_pretrained(tiny_model("llama"), tmp_path / "nowhere")
    build().save_pretrained(tmp_path)
    (tmp_path / "imsm_gate.safetensors").unlink()
    with pytest.raises(IMSMError, match="no imsm_gate.safetensors"):
        IMSMModel.from_pretrained(tiny_model("llama"), tmp_path)


def test_a_failed_save_leaves_the_previous_files_intact(tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    build().save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("imsm.model.persist.save_file", disk_full)
    with pytest.raises(OSError):
        build(method="dora").save_pretrained(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no staging directory left behind
