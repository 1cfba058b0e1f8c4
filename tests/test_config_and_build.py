"""Bad configuration is refused before any model work, with the fix in the message."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig

from conftest import peft_config, perturb_adapter, tiny_model
from imsm import IMSMConfig, IMSMError, get_imsm_model
from imsm.peft_methods.builders import PEFT_METHODS, build_peft_config


def test_unknown_fusion_suggests_the_nearest():
    with pytest.raises(IMSMError, match="unknown fusion mode 'imsn': did you mean 'imsm'"):
        IMSMConfig(fusion="imsn")


@pytest.mark.parametrize("rank", [0, -3, 2.5, True])
def test_gate_rank_below_one_or_not_an_integer_is_refused(rank):
    with pytest.raises(IMSMError, match="gate_rank must be an integer >= 1"):
        IMSMConfig(gate_rank=rank)


def test_gate_dropout_out_of_range_is_refused():
    with pytest.raises(IMSMError, match="gate_dropout"):
        IMSMConfig(gate_dropout=1.0)


def test_config_round_trips_and_rejects_unknown_fields():
    config = IMSMConfig(gate_rank=4, fusion="no-query", gate_dropout=0.0)
    assert IMSMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(IMSMError, match="unknown IMSMConfig field"):
        IMSMConfig.from_dict({"gate_rnak": 4})


def test_train_config_checks_the_options_it_shares_with_other_commands():
    from imsm.cli.options import DEFAULT_MODEL
    from imsm.train.config import TrainConfig

    assert TrainConfig(task="mrpc", output="run").model == DEFAULT_MODEL
    with pytest.raises(IMSMError, match="chat_template must be one of auto, on, off, got 'of'"):
        TrainConfig(task="mrpc", output="run", chat_template="of")
    with pytest.raises(IMSMError, match="epochs must be a positive integer, got 0"):
        TrainConfig(task="mrpc", output="run", epochs=0)


def test_unknown_peft_method_suggests_the_nearest():
    with pytest.raises(IMSMError, match="unknown peft method 'lorra': did you mean 'lora'"):
        build_peft_config("lorra")


def test_paper_defaults_are_the_builders_defaults():
    lora = build_peft_config("lora")
    dora = build_peft_config("dora")
    assert (lora.r, lora.lora_alpha, lora.use_dora) == (16, 16, False)
    assert (dora.r, dora.lora_alpha, dora.use_dora) == (16, 32, True)
    assert build_peft_config("adalora", total_step=100).total_step == 100
    assert PEFT_METHODS.get("ia3").optimizer == "adafactor" and PEFT_METHODS.get("ia3").learning_rate == 3e-3
    assert PEFT_METHODS.get("adalora").learning_rate == 2e-3 and PEFT_METHODS.get("dora").learning_rate == 1e-4


def test_adalora_without_total_step_and_unknown_options_are_refused():
    with pytest.raises(IMSMError, match="total_step"):
        build_peft_config("adalora")
    with pytest.raises(IMSMError, match="has no option"):
        build_peft_config("lora", rank=8)


def test_prompt_learning_methods_are_not_offered_or_accepted():
    assert "prompt_tuning" not in PEFT_METHODS and "prefix_tuning" not in PEFT_METHODS
    with pytest.raises(IMSMError, match="prompt-learning"):
        get_imsm_model(tiny_model("llama"), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))


def test_missing_target_modules_are_named_with_the_available_ones():
    with pytest.raises(IMSMError, match=r"target module\(s\) \['query'\] not found.*q_proj"):
        get_imsm_model(tiny_model("llama"), LoraConfig(target_modules=["q_proj", "query"]))


def test_a_merged_adapter_is_refused_because_the_frozen_branch_is_gone():
    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig())
    perturb_adapter(model)
    model.peft_model.merge_adapter()
    with pytest.raises(IMSMError, match="merged"):
        model(torch.tensor([[3, 4, 5]]))


def test_wrapping_an_existing_peft_model():
    from peft import get_peft_model

    peft_model = get_peft_model(tiny_model("llama"), peft_config("lora", "llama"))
    model = get_imsm_model(peft_model, imsm_config=IMSMConfig(gate_rank=2))
    assert model.peft_model is peft_model and model.gate.W_A.shape == (128, 2)
    with pytest.raises(IMSMError, match="already a PeftModel"):
        get_imsm_model(peft_model, peft_config("lora", "llama"))


def test_the_model_keeps_its_dtype_and_the_gate_stays_fp32():
    base = tiny_model("llama").to(torch.bfloat16)
    model = get_imsm_model(base, peft_config("lora", "llama"), IMSMConfig())
    assert base.lm_head.weight.dtype == torch.bfloat16 and model.gate.W_A.dtype == torch.float32
    assert model(torch.tensor([[3, 4, 5]])).logits.dtype == torch.bfloat16


def test_building_and_loading_print_no_checkpointing_rename_warning(tmp_path):
    """peft probes transformers' renamed `is_gradient_checkpointing` on every wrap; users see nothing of it."""
    import warnings

    from imsm import IMSMModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"))
        model.save_pretrained(tmp_path / "adapter")
        IMSMModel.from_pretrained(tiny_model("llama"), tmp_path / "adapter")
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_only_the_rename_warning_is_silenced():
    import warnings

    from imsm.model.peft_wrapping import peft_wrapping

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with peft_wrapping():
            warnings.warn(
                "`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1
            )
            warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
