"""A saved adapter evaluated another way: its change scaled by λ, or another fusion than its own.

λ = 0 is the base model, λ = 1 the adapter, and in between every adapted layer's change is scaled
exactly; `mean` on a vanilla adapter is the untrained 50/50 mix of the two branches. What cannot be
done exactly is refused with one line, before any model is loaded.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from conftest import peft_config, perturb_adapter, random_batch, save_tiny_model, seeded_generator, tiny_model
from imsm import IMSMConfig, IMSMModel, get_imsm_model
from imsm.cli import main
from imsm.cli.model_options import ModelOptions
from imsm.errors import IMSMError
from imsm.model.adapter_scale import scale_adapter
from imsm.model.variant import apply_variant, check_variant, load_evaluated_model
from tolerance import tolerance

SCALABLE = ["lora", "adalora", "ia3", "loramoe"]


def adapted(method: str, fusion: str = "none", seed: int = 1) -> IMSMModel:
    model = get_imsm_model(tiny_model("llama"), peft_config(method, "llama"), IMSMConfig(fusion=fusion))
    perturb_adapter(model, seed=seed)
    return model.eval()


def logits(model: IMSMModel) -> torch.Tensor:
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits


def base_logits() -> torch.Tensor:
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        return tiny_model("llama")(input_ids=input_ids, attention_mask=attention_mask).logits


@pytest.mark.parametrize("method", SCALABLE)
def test_scale_zero_is_the_base_model_and_one_the_adapter(method):
    as_trained = logits(adapted(method))
    assert not torch.allclose(as_trained, base_logits(), **tolerance())  # the adapter does change the model
    unchanged = adapted(method)
    scale_adapter(unchanged.peft_model, 1.0)
    torch.testing.assert_close(logits(unchanged), as_trained, **tolerance())  # (IA)3's 1 + (v - 1) may round
    zero = adapted(method)
    assert scale_adapter(zero.peft_model, 0.0) > 0
    torch.testing.assert_close(logits(zero), base_logits(), **tolerance())


@pytest.mark.parametrize("method", SCALABLE)
@pytest.mark.parametrize("scale", [0.25, 0.5, 2.0])
def test_every_adapted_layer_changes_its_output_by_exactly_lambda_times(method, scale):
    """Layer by layer (same input): scaled output - base output = λ (adapter output - base output)."""
    full, scaled = adapted(method), adapted(method)
    scale_adapter(scaled.peft_model, scale)
    x = torch.randn(5, 32, generator=seeded_generator(0))
    layers = 0
    for (_, layer), (_, scaled_layer) in zip(full.named_modules(), scaled.named_modules(), strict=True):
        if not isinstance(layer, BaseTunerLayer):
            continue
        base_layer = layer.get_base_layer()
        with torch.no_grad():
            inputs = x if base_layer.in_features == 32 else torch.randn(5, base_layer.in_features)
            base, trained, moved = base_layer(inputs), layer(inputs), scaled_layer(inputs)
        # Differences of nearby outputs: their rounding is that of the outputs, up to 1 + λ times
        # the largest, whatever the size of the difference.
        outputs = max(float(t.abs().max()) for t in (base, trained, moved))
        bound = tolerance(1)["atol"] * (1 + scale) * (1 + outputs)
        torch.testing.assert_close(moved - base, scale * (trained - base), atol=bound, rtol=0)
        layers += 1
    assert layers >= 2  # at least one projection in each of the two layers


def test_ia3_vectors_move_towards_one():
    model = adapted("ia3")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "ia3_l" in n}
    scale_adapter(model.peft_model, 0.25)
    after = dict(model.named_parameters())
    for name, vector in before.items():
        torch.testing.assert_close(after[name].detach(), 1 + 0.25 * (vector - 1), **tolerance(1))


@pytest.mark.parametrize(
    ("method", "message"),
    [("dora", "cannot scale a DoRA adapter"), ("vera", "cannot scale a VERA adapter")],
)
def test_adapters_that_cannot_be_scaled_exactly_are_refused(method, message):
    model = adapted(method)
    with pytest.raises(IMSMError, match=message):
        scale_adapter(model.peft_model, 0.5)
    with pytest.raises(IMSMError, match=message):
        apply_variant(model, adapter_scale=0.5)


def test_mean_on_a_vanilla_adapter_is_the_untrained_half_half_mix():
    vanilla = adapted("lora")
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        states = vanilla.branch_states(input_ids, attention_mask, attention_mask.bool(), run_frozen=True)
        expected = vanilla.fused_logits(states, gate=0.5).logits
    mixed = apply_variant(vanilla, fusion="mean")
    assert mixed.fusion == "mean" and mixed.peft_model is vanilla.peft_model  # same weights, no copy
    torch.testing.assert_close(logits(mixed), expected, **tolerance())
    assert not torch.allclose(expected, logits(vanilla), **tolerance())


def test_none_on_an_imsm_adapter_is_its_tuned_branch_alone():
    gated = adapted("lora", fusion="imsm")
    alone = apply_variant(gated, fusion="none")
    # Same seed, the same adapter, the same arithmetic: bit-identical.
    torch.testing.assert_close(logits(alone), logits(adapted("lora")), atol=0, rtol=0)


def test_a_gate_cannot_be_conjured():
    with pytest.raises(IMSMError, match="needs a gate trained that way"):
        apply_variant(adapted("lora"), fusion="imsm")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model directory and adapters of several kinds, as a user would have them on disk."""
    root = tmp_path_factory.mktemp("variants")
    paths = {"model": str(save_tiny_model(root / "model"))}
    for method in ("lora", "dora", "ia3"):
        peft_model = get_peft_model(tiny_model("llama"), peft_config(method, "llama"))
        perturb_adapter(peft_model)
        peft_model.save_pretrained(root / method)
        paths[method] = str(root / method)
    gated = adapted("lora", fusion="imsm")
    gated.save_pretrained(str(root / "gated"))
    paths["gated"] = str(root / "gated")
    return paths


@pytest.mark.parametrize(
    ("adapter", "fusion", "scale", "message"),
    [
        ("lora", "imsm", 1.0, "needs a gate trained as 'imsm', but .* holds a 'none' adapter"),
        ("gated", "no-query", 1.0, "needs a gate trained as 'no-query'"),
        (None, "mean", 1.0, "needs an adapter"),
        (None, None, 0.5, "adapter_scale needs an adapter"),
        ("dora", None, 0.5, "cannot scale the DoRA adapter"),
        ("lora", None, -0.5, "must be >= 0"),
        ("lora", None, float("nan"), "must be a number"),
        ("lora", "gated", 1.0, "unknown fusion 'gated'"),
    ],
)
def test_impossible_variants_are_refused_from_the_saved_files(saved, adapter, fusion, scale, message):
    with pytest.raises(IMSMError, match=message):
        check_variant(saved.get(adapter), fusion, scale)


def test_variants_load_from_disk(saved):
    model, _ = load_evaluated_model(
        ModelOptions(model=saved["model"], adapter=saved["ia3"], adapter_scale=0.0, dtype="fp32")
    )
    # Loaded in fp32; the reference runs in the tests' dtype, the coarser of the two.
    torch.testing.assert_close(logits(model), base_logits().float(), **tolerance())
    model, _ = load_evaluated_model(
        ModelOptions(model=saved["model"], adapter=saved["gated"], fusion="mean", dtype="fp32")
    )
    assert model.fusion == "mean" and model.gate is None and isinstance(model.peft_model, PeftModel)
    model, _ = load_evaluated_model(ModelOptions(model=saved["model"], adapter=saved["gated"], dtype="fp32"))
    assert model.fusion == "imsm" and model.gate is not None


def test_eval_command_refuses_a_dora_scale_in_one_line(saved, capsys):
    code = main(
        [
            "eval",
            "--model",
            saved["model"],
            "--adapter",
            saved["dora"],
            "--adapter-scale",
            "0.5",
            "--task",
            "mrpc",
            "--output",
            "unused.json",
        ]
    )
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "cannot scale the DoRA adapter" in error[0]


def test_saved_scale_and_fusion_reach_the_metrics_header(saved, tmp_path):
    records = [{"#1 String": "w5 w6", "#2 String": "w7 w8", "Quality": "1"}] * 2
    (tmp_path / "mrpc").mkdir()
    (tmp_path / "mrpc" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    output = tmp_path / "metrics.json"
    code = main(
        [
            "eval",
            "--model",
            saved["model"],
            "--adapter",
            saved["lora"],
            "--adapter-scale",
            "0.5",
            "--fusion",
            "mean",
            "--task",
            "mrpc",
            "--data-dir",
            str(tmp_path),
            "--output",
            str(output),
            "--max-new-tokens",
            "2",
            "--dtype",
            "fp32",
        ]
    )
    assert code == 0
    header = json.loads(output.read_text())
    assert header["adapter_scale"] == 0.5 and header["fusion"] == "mean"


def test_eval_with_a_scale_refuses_a_damaged_adapter_config_in_one_line(saved, tmp_path, capsys):
    adapter = shutil.copytree(saved["lora"], tmp_path / "adapter")
    (adapter / "adapter_config.json").write_bytes(b'["not", "a", "config"]')
    argv = ["eval", "--model", saved["model"], "--adapter", adapter, "--adapter-scale", "0.5", "--task", "mrpc"]
    code = main([str(a) for a in [*argv, "--output", tmp_path / "metrics.json"]])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1
    assert f"{adapter / 'adapter_config.json'} holds a JSON list, not an object; re-save the adapter" in error[0]
    assert not (tmp_path / "metrics.json").exists()
