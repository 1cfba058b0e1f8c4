"""LoRAMoE: vectorised experts, the localized balancing constraint, and LoRAMoE as IMSM's tuner.

Reference values are written out here (a loop over experts, the LBC by hand), never taken from
the code under test.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from conftest import perturb_adapter, random_batch, save_tiny_model, seeded_generator, tiny_model
from imsm import IMSMConfig, IMSMError, IMSMModel, get_imsm_model
from imsm.peft_methods.builders import PEFT_METHODS, build_peft_config
from imsm.peft_methods.loramoe import (
    LoRAMoEConfig,
    LoRAMoELinear,
    localized_balancing_constraint,
    loramoe_balance_loss,
    loramoe_config_for,
    loramoe_layers,
)
from imsm.train import loop
from imsm.train.config import TrainConfig
from imsm.train.run import train

# GPT-2's feed-forward layers are transformers' Conv1D (weights stored transposed).
TARGETS = {"llama": None, "qwen2": None, "gpt2": ["c_fc", "mlp.c_proj"]}


def loramoe_config(architecture: str = "llama", **overrides) -> LoRAMoEConfig:
    values = dict(r=2, lora_alpha=8, num_experts=4, lora_dropout=0.0, balance_delta=0.1, balance_weight=0.1)
    if TARGETS[architecture] is not None:
        values["target_modules"] = TARGETS[architecture]
    return LoRAMoEConfig(**{**values, **overrides})


def build(architecture: str = "llama", fusion: str = "imsm", perturb: bool = True, **overrides) -> IMSMModel:
    model = get_imsm_model(
        tiny_model(architecture), loramoe_config(architecture, **overrides), IMSMConfig(fusion=fusion)
    )
    if perturb:
        perturb_adapter(model)
    if model.gate is not None:
        torch.nn.init.normal_(model.gate.W_B, std=2.0)  # a decisive gate, so fusion matters
    return model.eval()


def first_layer(model: IMSMModel) -> LoRAMoELinear:
    return loramoe_layers(model.peft_model)[0]


# ---------------------------------------------------------------------------------------------
# The layer.


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_vectorised_experts_equal_a_loop_over_experts(architecture):
    model = build(architecture, num_experts=3, r=2, lora_alpha=6, balance_weight=0.0)
    layer = first_layer(model)
    route = layer.lora_route["default"].weight  # [N, d_in]
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # [N·r, d_in], [d_out, N·r]
    x = torch.randn(2, 5, layer.in_features, generator=seeded_generator(0))
    with torch.no_grad():
        expected = layer.get_base_layer()(x)
        weights = torch.softmax(x @ route.T, dim=-1)  # [2, 5, N]
        for i in range(3):
            A_i, B_i = A[2 * i : 2 * i + 2], B[:, 2 * i : 2 * i + 2]  # [r, d_in], [d_out, r]
            expected = expected + weights[..., i : i + 1] * (x @ A_i.T @ B_i.T) * (6 / 2)
        actual = layer(x)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer.routing_weights["default"], weights, atol=1e-7, rtol=0)


@pytest.mark.parametrize("fusion", ["none", "imsm"])
def test_fresh_adapter_gives_the_base_models_logits(fusion):
    model = build("llama", fusion, perturb=False)
    layer = first_layer(model)
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    assert torch.count_nonzero(layer.lora_A["default"].weight) > 0
    assert torch.count_nonzero(layer.lora_route["default"].weight) > 0
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        expected = tiny_model("llama")(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
        ).logits
        actual = model(input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    torch.testing.assert_close(actual[real], expected[real], atol=2e-5, rtol=0)


def test_split_batch_runs_the_base_layer_on_the_first_half_and_loramoe_on_the_second():
    model = build()
    layer = first_layer(model)
    x = torch.randn(2, 4, layer.in_features, generator=seeded_generator(1))
    with torch.no_grad():
        frozen = layer.get_base_layer()(x)
        tuned = layer(x)
        with model.router.split():
            split = layer(torch.cat([x, x]))
        recorded = layer.routing_weights["default"]
        with model.router.frozen():
            assert torch.equal(layer(x), frozen)
    torch.testing.assert_close(split, torch.cat([frozen, tuned]), atol=1e-6, rtol=0)
    assert recorded.shape == (2, 4, 4)  # routed on the tuned half only


def test_merging_is_refused():
    model = build()
    with pytest.raises(ValueError, match="LoRAMoE cannot be merged"):
        model.peft_model.merge_and_unload()
    assert not model.router.check_unmerged()


def test_parameter_counts_are_router_plus_stacked_experts():
    model = build("llama", "imsm", num_experts=4, r=2)
    d, intermediate, layers = 32, 64, 2  # the tiny Llama of conftest

    def per_projection(d_in, d_out):  # router N·d_in, A N·r·d_in, B d_out·N·r
        return 4 * d_in + 4 * 2 * d_in + d_out * 4 * 2

    adapter = layers * (2 * per_projection(d, intermediate) + per_projection(intermediate, d))
    gate = 5 * d * 8  # W_A [4d, 8] + W_B [8, d]
    trainable, total = model.trainable_parameter_count()
    assert trainable == adapter + gate
    assert total == sum(p.numel() for p in tiny_model("llama").parameters()) + adapter + gate
    assert len(loramoe_layers(model.peft_model)) == layers * 3


# ---------------------------------------------------------------------------------------------
# The localized balancing constraint.


def test_the_lbc_equals_a_hand_computation():
    weights = [  # [B=2, T=3, N=4], each row a distribution
        [[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]],
        [[0.9, 0.05, 0.03, 0.02], [0.4, 0.3, 0.2, 0.1], [0.1, 0.1, 0.4, 0.4]],
    ]
    mask = [[1, 1, 1], [0, 1, 1]]  # the second sample's first token is padding
    delta = 0.1

    def by_hand(task_types):
        entries = []
        for m in range(2):
            for n in range(4):
                importance = sum(weights[m][t][n] for t in range(3) if mask[m][t])  # Q[n, m]
                first_half = n < 2
                matches = first_half == (task_types[m] == 1)
                entries.append(importance * (1 + delta if matches else 1 - delta))  # I[n, m] Q[n, m]
        mean = sum(entries) / len(entries)
        variance = sum((e - mean) ** 2 for e in entries) / (len(entries) - 1)
        return variance / mean**2

    routing = torch.tensor(weights)
    attention_mask = torch.tensor(mask)
    single_task = localized_balancing_constraint(routing, attention_mask, delta=delta)
    assert float(single_task) == pytest.approx(by_hand([1, 1]), rel=1e-5)
    mixed = localized_balancing_constraint(routing, attention_mask, torch.tensor([1, 0]), delta=delta)
    assert float(mixed) == pytest.approx(by_hand([1, 0]), rel=1e-5)
    # Padding is masked out of Q (a deliberate deviation from the reference code).
    assert float(localized_balancing_constraint(routing, None, delta=delta)) != pytest.approx(by_hand([1, 1]))


def test_the_model_lbc_is_beta_times_the_sum_over_layers():
    model = build("llama", "none", balance_weight=0.3, balance_delta=0.2)
    inputs = {}
    hooks = [
        layer.register_forward_hook(lambda module, args, output: inputs.__setitem__(module, args[0]))
        for layer in loramoe_layers(model.peft_model)
    ]
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        model(input_ids, attention_mask=attention_mask)
    for hook in hooks:
        hook.remove()
    expected = 0.0
    with torch.no_grad():
        for layer, x in inputs.items():
            routing = torch.softmax(x @ layer.lora_route["default"].weight.T, dim=-1)  # [B, T, N]
            expected += float(localized_balancing_constraint(routing, attention_mask, delta=0.2))
    assert len(inputs) == 6
    assert float(loramoe_balance_loss(model, attention_mask)) == pytest.approx(0.3 * expected, rel=1e-5)


def test_beta_zero_adds_nothing_and_other_methods_have_no_lbc():
    model = build(balance_weight=0.0)
    input_ids, attention_mask = random_batch()
    model(input_ids, attention_mask=attention_mask)
    assert loramoe_balance_loss(model, attention_mask) is None  # no term, no graph, no gradient
    from conftest import peft_config

    lora = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig())
    lora(input_ids, attention_mask=attention_mask)
    assert loramoe_balance_loss(lora, attention_mask) is None


def test_the_lbc_alone_trains_the_router_of_a_fresh_adapter():
    # B = 0: cross-entropy cannot see the router or A yet, but the LBC reaches the router.
    model = build(perturb=False)
    model.train()
    input_ids, attention_mask = random_batch()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    loss = model(input_ids, attention_mask=attention_mask, labels=labels, return_logits=False).loss
    loss.backward(retain_graph=True)
    layer = first_layer(model)
    assert torch.count_nonzero(layer.lora_route["default"].weight.grad) == 0
    assert torch.count_nonzero(layer.lora_B["default"].weight.grad) > 0
    model.zero_grad()
    loramoe_balance_loss(model, attention_mask).backward()
    assert torch.count_nonzero(layer.lora_route["default"].weight.grad) > 0
    assert layer.lora_A["default"].weight.grad is None or torch.count_nonzero(layer.lora_A["default"].weight.grad) == 0


@pytest.mark.parametrize("fusion", ["none", "imsm"])
def test_gradients_reach_router_a_and_b_and_never_the_base(fusion):
    model = build("llama", fusion, lora_dropout=0.1)
    model.train()
    input_ids, attention_mask = random_batch()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :4] = -100
    loss = model(input_ids, attention_mask=attention_mask, labels=labels, return_logits=False).loss
    (loss + loramoe_balance_loss(model, attention_mask)).backward()
    for name, parameter in model.named_parameters():
        if model.parameter_group(name) == "base":
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.grad is not None and torch.count_nonzero(parameter.grad) > 0, name
    names = {name.split(".")[-3] for name, p in model.named_parameters() if p.requires_grad and "lora_" in name}
    assert names == {"lora_route", "lora_A", "lora_B"}


# ---------------------------------------------------------------------------------------------
# Saving, loading and decoding.


@pytest.mark.parametrize("fusion", ["none", "imsm"])
def test_save_then_load_gives_identical_logits(fusion, tmp_path):
    model = build("llama", fusion)
    model.save_pretrained(tmp_path)
    assert {p.suffix for p in tmp_path.iterdir() if p.is_file()} <= {".json", ".safetensors", ".md"}
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["num_experts"] == 4 and saved["balance_weight"] == 0.1
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert tensors["base_model.model.model.layers.0.mlp.up_proj.lora_route.weight"].shape == (4, 32)
    assert tensors["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"].shape == (8, 32)
    assert tensors["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"].shape == (64, 8)

    loaded = IMSMModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert isinstance(first_layer(loaded), LoRAMoELinear)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        assert torch.equal(model(input_ids, attention_mask).logits, loaded(input_ids, attention_mask).logits)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    trainable = IMSMModel.from_pretrained(tiny_model("llama"), tmp_path, is_trainable=True)
    assert trainable.trainable_parameter_count()[0] == model.trainable_parameter_count()[0]


def test_peft_loads_the_tuned_branch_given_the_loramoe_config(tmp_path):
    model = build("llama", "imsm")
    model.save_pretrained(tmp_path)
    # From adapter_config.json alone peft builds plain LoRA layers, which do not fit: never silent.
    with pytest.raises(RuntimeError, match="size mismatch"), pytest.warns(UserWarning, match="num_experts"):
        PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    peft_model = PeftModel.from_pretrained(tiny_model("llama"), tmp_path, config=loramoe_config_for(tmp_path))
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        expected = model.peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
        actual = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.equal(actual, expected)
    assert loramoe_config_for(tmp_path / "missing") is None


# ---------------------------------------------------------------------------------------------
# Registry, validation and training.


def test_registry_defaults_are_the_papers():
    method = PEFT_METHODS.get("loramoe")
    assert method.learning_rate == 2e-4 and method.batch_size == 16 and method.optimizer == "adamw"
    config = build_peft_config("loramoe")
    assert isinstance(config, LoRAMoEConfig)
    assert (config.num_experts, config.r, config.lora_alpha, config.lora_dropout) == (6, 4, 32, 0.05)
    assert (config.balance_delta, config.balance_weight) == (0.1, 0.1)
    assert set(config.target_modules) == {"gate_proj", "up_proj", "down_proj"}
    assert build_peft_config("loramoe", ["up_proj"], num_experts=8).num_experts == 8


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_experts": 3}, "must be even"),
        ({"num_experts": 0}, "num_experts must be an integer"),
        ({"balance_delta": 1.5}, "balance_delta"),
        ({"balance_weight": -1.0}, "balance_weight"),
        ({"use_dora": True}, "does not support use_dora"),
        ({"init_lora_weights": "gaussian"}, "init_lora_weights"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(IMSMError, match=message):
        build_peft_config("loramoe", **options)


def test_odd_experts_are_fine_without_the_lbc():
    assert build_peft_config("loramoe", num_experts=3, balance_weight=0.0).num_experts == 3


def test_non_linear_and_missing_targets_are_refused():
    with pytest.raises(IMSMError, match="linear layers only"):
        get_imsm_model(tiny_model("llama"), loramoe_config(target_modules=["embed_tokens"]), IMSMConfig())
    with pytest.raises(IMSMError, match="gate_proj"):  # GPT-2 has no gate_proj: name the fix
        get_imsm_model(tiny_model("gpt2"), LoRAMoEConfig(), IMSMConfig())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("loramoe")
    save_tiny_model(root / "model")
    same = [{"q": f"w{3 + i} w{10 + i}", "a": "w40 w41"} for i in range(8)]
    (root / "same.jsonl").write_text("".join(json.dumps(r) + "\n" for r in same))
    (root / "same.yaml").write_text("name: same\ndata: same.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [exact_match]\n")
    return root


@pytest.mark.parametrize("fusion", ["none", "imsm"])
def test_training_lowers_the_loss_with_the_lbc_in_it(workspace, tmp_path, monkeypatch, fusion):
    balances = []

    def recording_balance_loss(model, attention_mask):
        value = loramoe_balance_loss(model, attention_mask)
        balances.append(value)
        return value

    monkeypatch.setattr(loop, "loramoe_balance_loss", recording_balance_loss)
    output = tmp_path / "run"
    config = TrainConfig(
        task=str(workspace / "same.yaml"),
        output=str(output),
        model=str(workspace / "model"),
        peft="loramoe",
        fusion=fusion,
        epochs=8,
        learning_rate=1e-2,
        batch_size=4,
        micro_batch_size=4,
        schedule="constant",
        dtype="fp32",
    )
    summary = train(config, progress=False)
    losses = [json.loads(line)["loss"] for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == summary["steps"] == 16
    assert max(losses[-3:]) < 0.85 * losses[0], losses
    assert len(balances) == 16 and all(b is not None and b.requires_grad for b in balances)
    resolved = json.loads((output / "train_config.json").read_text())["resolved"]
    assert resolved["learning_rate"] == 1e-2 and resolved["target_modules"] == ["down_proj", "gate_proj", "up_proj"]
    model = IMSMModel.from_pretrained(tiny_model("llama"), output)
    assert model.fusion == fusion and isinstance(first_layer(model), LoRAMoELinear)
