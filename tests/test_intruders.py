"""peft's intruder-dimension reduction as an evaluation variant (`imsm.model.intruders`).

The variant is peft's `reduce_intruder_dimension` and nothing else: its tuned branch gives the
logits peft's own function gives on a plain PeftModel, its frozen branch is still the base model,
the model keeps one adapter under its old name, and what peft cannot reduce faithfully ((IA)3,
DoRA, any other method) is refused by name before a model is loaded.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from peft import get_peft_model
from peft.tuners.lora.intruders import reduce_intruder_dimension

from conftest import peft_config, perturb_adapter, random_batch, save_tiny_model, tiny_model
from imsm import IMSMConfig, IMSMModel
from imsm.cli import main
from imsm.cli.model_options import ModelOptions
from imsm.errors import IMSMError
from imsm.model.intruders import reduce_intruders
from imsm.model.persist import holds_saved_adapter
from imsm.model.variant import apply_variant, check_variant, load_evaluated_model

LAMBDAS = [0.75, 0.5]


def trained_looking(method: str = "lora"):
    """A plain peft model whose B is nonzero, as after training (peft initialises B to 0)."""
    peft_model = get_peft_model(tiny_model("llama"), peft_config(method, "llama"))
    perturb_adapter(peft_model, scale=0.5)
    return peft_model.eval()


def logits(model) -> torch.Tensor:
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits


def peft_reduced(peft_model, mitigation_lambda: float) -> torch.Tensor:
    """The reference: peft's own function on its own model, the logits of its reduced adapter."""
    reference = copy.deepcopy(peft_model)
    reduce_intruder_dimension(reference, mitigation_lambda=mitigation_lambda, logging_sink=None)
    assert reference.active_adapter == "intruder_reduced"
    return logits(reference)


@pytest.mark.parametrize("mitigation_lambda", LAMBDAS)
@pytest.mark.parametrize("fusion", ["none", "imsm"])
def test_the_variant_is_peft_s_reduction_and_the_frozen_branch_stays_the_base_model(fusion, mitigation_lambda):
    peft_model = trained_looking()
    expected, as_trained = peft_reduced(peft_model, mitigation_lambda), logits(peft_model)
    assert not torch.allclose(expected, as_trained, atol=1e-3)  # the tiny adapter does have intruders
    model = IMSMModel(peft_model, IMSMConfig(fusion=fusion)).eval()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    model = apply_variant(model, reduce_intruders=mitigation_lambda)
    # One adapter, under the name saving and the router expect, and the same parameters trainable.
    assert list(model.peft_model.peft_config) == ["default"] and model.peft_model.active_adapter == "default"
    assert [name for name, p in model.named_parameters() if p.requires_grad] == trainable
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        states = model.branch_states(input_ids, attention_mask, attention_mask.bool(), run_frozen=True)
        frozen, tuned = model.fused_logits(states, gate=1.0).logits, model.fused_logits(states, gate=0.0).logits
        with model.router.frozen():
            frozen_alone = model.peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
    base = logits(tiny_model("llama"))
    torch.testing.assert_close(frozen, base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(frozen_alone, base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tuned, expected, atol=1e-5, rtol=1e-5)
    if fusion == "none":
        torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=1e-5)


def test_lambda_one_keeps_every_intruder_so_the_adapter_is_as_trained():
    """λ is the share kept: at 1 peft only refits B A at their own rank, which is exact."""
    peft_model = trained_looking()
    as_trained = logits(peft_model)
    found, rewritten = reduce_intruders(peft_model, 1.0)
    assert rewritten >= 2 and found >= 1  # every adapted layer rewritten; trained_looking has intruders
    torch.testing.assert_close(logits(peft_model), as_trained, atol=1e-4, rtol=1e-4)


def test_an_adapter_without_intruders_is_left_as_trained_and_the_user_is_told(capsys):
    """A small change leaves W's top singular directions where they were: peft finds no intruder
    dimension in any layer, so the "mitigated" variant is the adapter itself, and says so."""
    peft_model = get_peft_model(tiny_model("llama"), peft_config("lora", "llama"))
    perturb_adapter(peft_model, scale=1e-3)
    model = IMSMModel(peft_model.eval(), IMSMConfig(fusion="none"))
    as_trained = {n: p.clone() for n, p in model.named_parameters() if "lora_" in n}
    apply_variant(model, reduce_intruders=0.5)
    assert "found no intruder dimension in any of the adapter's 6 LoRA layers" in capsys.readouterr().err
    for name, parameter in model.named_parameters():
        if name in as_trained:
            torch.testing.assert_close(parameter, as_trained[name], atol=0, rtol=0)


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("ia3", "vanilla LoRA adapters only, not IA3"),
        ("adalora", "vanilla LoRA adapters only, not ADALORA"),
        ("dora", "cannot reduce a DoRA adapter"),
        ("loramoe", "cannot reduce a LoRAMoE adapter"),
    ],
)
def test_what_peft_cannot_reduce_faithfully_is_refused_by_name(method, message):
    model = IMSMModel(trained_looking(method), IMSMConfig(fusion="none"))
    with pytest.raises(IMSMError, match=message):
        apply_variant(model, reduce_intruders=0.5)


def test_the_base_model_and_a_combined_scale_are_refused():
    base = IMSMModel(tiny_model("llama"), IMSMConfig(fusion="none"))
    with pytest.raises(IMSMError, match="needs an adapter"):
        apply_variant(base, reduce_intruders=0.5)
    with pytest.raises(IMSMError, match="two mitigations; choose one"):
        apply_variant(IMSMModel(trained_looking(), IMSMConfig()), adapter_scale=0.5, reduce_intruders=0.5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("intruders")
    paths = {"model": str(save_tiny_model(root / "model"))}
    for method in ("lora", "dora", "ia3"):
        trained_looking(method).save_pretrained(root / method)
        paths[method] = str(root / method)
    slight = get_peft_model(tiny_model("llama"), peft_config("lora", "llama"))
    perturb_adapter(slight, scale=1e-3)  # too small a change to move W's top singular directions
    slight.save_pretrained(root / "slight")
    paths["slight"] = str(root / "slight")
    return paths


@pytest.mark.parametrize(
    ("adapter", "value", "scale", "message"),
    [
        ("ia3", 0.5, 1.0, "vanilla LoRA adapters only, not IA3"),
        ("dora", 0.5, 1.0, "cannot reduce a DoRA adapter"),
        (None, 0.5, 1.0, "reduce_intruders needs an adapter"),
        ("lora", 1.5, 1.0, r"a number in \[0, 1\]"),
        ("lora", float("nan"), 1.0, r"a number in \[0, 1\]"),
        ("lora", 0.5, 0.5, "two mitigations"),
    ],
)
def test_refusals_come_from_the_saved_files(saved, adapter, value, scale, message):
    with pytest.raises(IMSMError, match=message):
        check_variant(saved.get(adapter), None, scale, value)


def test_the_variant_loads_from_disk_as_peft_reduces_it(saved):
    options = ModelOptions(model=saved["model"], adapter=saved["lora"], reduce_intruders=0.5, dtype="fp32")
    model, _ = load_evaluated_model(options)
    assert options.describe(model)["reduce_intruders"] == 0.5
    torch.testing.assert_close(logits(model), peft_reduced(trained_looking(), 0.5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("adapter", "reduces"), [("lora", True), ("slight", False)])
def test_a_reduction_that_changed_no_weight_is_told_from_one_that_did(saved, adapter, reduces):
    """What lets a study reuse the adapter's own evaluations for an intruder variant: every weight
    bitwise as loaded from the saved file, or not."""
    as_trained, _ = load_evaluated_model(ModelOptions(model=saved["model"], adapter=saved[adapter], dtype="fp32"))
    assert holds_saved_adapter(as_trained.peft_model, saved[adapter])
    options = ModelOptions(model=saved["model"], adapter=saved[adapter], reduce_intruders=0.5, dtype="fp32")
    reduced, _ = load_evaluated_model(options)
    assert holds_saved_adapter(reduced.peft_model, saved[adapter]) is not reduces
    assert not holds_saved_adapter(reduced.peft_model, saved["dora"])  # another adapter's weights


@pytest.mark.parametrize(("adapter", "message"), [("dora", "cannot reduce a DoRA adapter"), ("ia3", "not IA3")])
def test_eval_refuses_what_it_cannot_reduce_in_one_line_before_loading(saved, adapter, message, capsys, tmp_path):
    argv = ["eval", "--model", saved["model"], "--adapter", saved[adapter], "--reduce-intruders", "0.5"]
    code = main([*argv, "--task", "mrpc", "--output", str(tmp_path / "metrics.json")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and message in error[0]
    assert not (tmp_path / "metrics.json").exists()


def test_trained_modules_to_save_stay_as_trained():
    """peft's second adapter would start `modules_to_save` afresh; the copy back keeps the trained ones."""
    config = peft_config("lora", "llama")
    config.modules_to_save = ["lm_head"]
    peft_model = get_peft_model(tiny_model("llama"), config)
    perturb_adapter(peft_model, scale=0.5)  # moves the lm_head copy too: it is trainable
    head = peft_model.base_model.model.lm_head
    trained = head.modules_to_save["default"].weight.detach().clone()
    reduce_intruders(peft_model.eval(), 0.5)
    assert list(head.modules_to_save) == ["default"] and head.active_adapters == ["default"]
    assert torch.equal(head.modules_to_save["default"].weight, trained)
    assert not torch.equal(trained, tiny_model("llama").lm_head.weight)


def test_a_peft_without_intruders_py_is_refused_by_name(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft.tuners.lora.intruders", None)  # as on peft < 0.21
    with pytest.raises(IMSMError, match=r"reduce_intruders .* needs peft >= 0.21 \(installed: "):
        reduce_intruders(trained_looking(), 0.5)
