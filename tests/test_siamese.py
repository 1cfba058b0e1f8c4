"""The method's invariants (STYLE rule 10), over a grid of architectures x peft methods.

Reference values come from peft's own forward (with and without `disable_adapter()`) and from
the saved gate tensors, never from the code under test.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import (
    ARCHITECTURES,
    PEFT_METHODS,
    peft_config,
    perturb_adapter,
    random_batch,
    seeded_generator,
    tiny_model,
)
from imsm import FUSION_MODES, IMSMConfig, get_imsm_model
from tolerance import tolerance


def build(architecture: str, method: str, fusion: str = "imsm", perturb: bool = True, seed: int = 0):
    model = get_imsm_model(tiny_model(architecture, seed), peft_config(method, architecture), IMSMConfig(fusion=fusion))
    if perturb:
        perturb_adapter(model)
    return model.eval()


def peft_states(model, input_ids, attention_mask):
    """(h_M, h_M', logits_M, logits_M') from peft alone: the adapter switched off, then on."""
    peft_model = model.peft_model
    with torch.no_grad():
        with peft_model.disable_adapter():
            frozen = peft_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        tuned = peft_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return frozen.hidden_states[-1], tuned.hidden_states[-1], frozen.logits, tuned.logits


def unpadded_batch(seed: int = 3):
    generator = seeded_generator(seed)
    input_ids = torch.randint(3, 96, (2, 8), generator=generator)
    return input_ids, torch.ones_like(input_ids)


def test_fresh_adapter_gives_the_frozen_models_logits(architecture, method):
    # At initialisation M' = M (LoRA B = 0, IA3 = 1, ...), so h_N = h_M whatever the gate says.
    model = build(architecture, method, perturb=False)
    input_ids, attention_mask = random_batch()
    base_model = tiny_model(architecture)  # same seed: the untouched base weights
    with torch.no_grad():
        expected = base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
        ).logits
        fused = model(input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    torch.testing.assert_close(fused[real], expected[real], **tolerance())


@pytest.mark.parametrize("forced, branch", [(1.0, "frozen"), (0.0, "tuned")])
def test_forced_gate_selects_one_branch(architecture, method, forced, branch):
    model = build(architecture, method)
    model.gate.forward = lambda hidden_frozen, hidden_tuned, query: torch.full_like(
        hidden_frozen, forced, dtype=torch.float32
    )
    input_ids, attention_mask = unpadded_batch()
    _, _, frozen_logits, tuned_logits = peft_states(model, input_ids, attention_mask)
    with torch.no_grad():
        fused = model(input_ids, attention_mask=attention_mask).logits
    expected = frozen_logits if branch == "frozen" else tuned_logits
    torch.testing.assert_close(fused, expected, **tolerance())
    assert not torch.allclose(frozen_logits, tuned_logits, **tolerance()), "the branches should differ"


def independent_fusion(fusion, gate, head, hidden_frozen, hidden_tuned):
    """Equations 3-6 written out from scratch, on [B, T, d] states of unpadded prompts: the gate and
    the mix in fp32, as the paper's gate runs (its saved tensors are fp32), the head in the model's dtype."""
    if fusion == "none":
        return None
    if fusion == "mean":
        return head((0.5 * hidden_frozen.float() + 0.5 * hidden_tuned.float()).to(hidden_tuned.dtype))
    T = hidden_frozen.shape[1]
    query_frozen = hidden_frozen.mean(dim=1, keepdim=True).expand(-1, T, -1)  # every token is query
    query_tuned = hidden_tuned.mean(dim=1, keepdim=True).expand(-1, T, -1)
    if fusion == "imsm":
        x = torch.cat([query_frozen, hidden_frozen, hidden_tuned, query_tuned], dim=-1)  # [B, T, 4d]
    else:
        x = torch.cat([hidden_frozen, hidden_tuned], dim=-1)  # [B, T, 2d]
    g = torch.sigmoid(x.float() @ gate["W_A"] @ gate["W_B"])
    return head((g * hidden_frozen.float() + (1 - g) * hidden_tuned.float()).to(hidden_tuned.dtype))


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_fused_logits_match_an_independent_computation(architecture, method, fusion, tmp_path):
    model = build(architecture, method, fusion=fusion)
    if model.gate is not None:
        torch.nn.init.normal_(model.gate.W_B, std=2.0)  # a gate far from 0.5 everywhere
    model.save_pretrained(tmp_path)
    input_ids, attention_mask = unpadded_batch()
    hidden_frozen, hidden_tuned, frozen_logits, tuned_logits = peft_states(model, input_ids, attention_mask)
    head = tiny_model(architecture).get_output_embeddings()
    torch.testing.assert_close(head(hidden_frozen), frozen_logits, **tolerance(1))  # states are post-norm
    gate = load_file(tmp_path / "imsm_gate.safetensors") if model.gate is not None else None
    with torch.no_grad():
        expected = independent_fusion(fusion, gate, head, hidden_frozen, hidden_tuned)
        fused = model(input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(fused, tuned_logits if fusion == "none" else expected, **tolerance())


def test_gate_tensors_are_saved_in_the_papers_orientation(tmp_path):
    for fusion, inputs in [("imsm", 4), ("no-query", 2)]:
        model = build("llama", "lora", fusion=fusion)
        model.save_pretrained(tmp_path / fusion)
        tensors = load_file(tmp_path / fusion / "imsm_gate.safetensors")
        d, r = 32, 8
        assert tensors["W_A"].shape == (inputs * d, r) and tensors["W_B"].shape == (r, d)
        assert sum(p.numel() for p in model.gate.parameters()) == (inputs + 1) * d * r  # 5dr: the paper's count


def test_padding_side_and_padding_do_not_change_the_result(architecture):
    model = build(architecture, "lora")
    left_ids, left_mask = random_batch(padding="left")
    right_ids, right_mask = random_batch(padding="right")
    with torch.no_grad():
        left = model(left_ids, attention_mask=left_mask).logits
        right = model(right_ids, attention_mask=right_mask).logits
        for ids, mask, logits in [(left_ids, left_mask, left), (right_ids, right_mask, right)]:
            for row in range(ids.shape[0]):
                real = mask[row].bool()
                alone = model(ids[row][real][None]).logits[0]
                torch.testing.assert_close(logits[row][real], alone, **tolerance())


def test_query_memory_uses_prompt_tokens_only():
    # Changing a response token changes no logit before it; with the query limited to the
    # prompt, it must not change the gate at earlier positions either.
    model = build("llama", "lora")
    torch.nn.init.normal_(model.gate.W_B, std=2.0)
    input_ids, _ = unpadded_batch()
    query_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    query_mask[:, :5] = True
    changed = input_ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 96
    with torch.no_grad():
        a = model(input_ids, query_mask=query_mask).logits
        b = model(changed, query_mask=query_mask).logits
        c = model(changed).logits  # every token is query: the change reaches all positions
    # Rows of a matrix product and causally masked attention do not read later positions, so
    # without the query memory the earlier logits are bit-identical: exact, in any dtype.
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=0, rtol=0)
    # Hence any difference here comes through the query memory.
    assert not torch.equal(a[:, :6], c[:, :6])


def test_labels_mark_the_query_and_the_loss_skips_logits(architecture, method):
    model = build(architecture, method)
    input_ids, attention_mask = random_batch()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :6] = -100
    with torch.no_grad():
        full = model(input_ids, attention_mask=attention_mask, labels=labels)
        lean = model(input_ids, attention_mask=attention_mask, labels=labels, return_logits=False)
        query_mask = (labels == -100) & attention_mask.bool()
        explicit = model(input_ids, attention_mask=attention_mask, query_mask=query_mask).logits
    assert lean.logits is None
    torch.testing.assert_close(full.logits, explicit, atol=0, rtol=0)
    targets = labels[:, 1:]
    keep = targets != -100
    expected = torch.nn.functional.cross_entropy(full.logits[:, :-1][keep].float(), targets[keep])  # in fp32
    torch.testing.assert_close(full.loss, expected, atol=0, rtol=0)  # the same computation
    # The head at the labelled positions only: another shape of product, and the loss over it.
    torch.testing.assert_close(lean.loss, expected, **tolerance(2))


def test_training_step_moves_only_peft_and_gate_parameters(architecture, method):
    model = build(architecture, method)
    model.train()
    input_ids, attention_mask = random_batch()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :5] = -100
    groups = {name: model.parameter_group(name) for name, _ in model.named_parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model(input_ids, attention_mask=attention_mask, labels=labels, return_logits=False).loss.backward()
    for name, parameter in model.named_parameters():
        if groups[name] == "base":
            assert not parameter.requires_grad and parameter.grad is None, name
        elif parameter.requires_grad:
            assert parameter.grad is not None, name
    assert model.gate.W_A.grad.abs().sum() > 0 and model.gate.W_B.grad.abs().sum() > 0
    assert any(
        p.grad.abs().sum() > 0 for n, p in model.named_parameters() if groups[n] == "peft" and p.grad is not None
    )
    assert all(groups[n] != "base" for n, p in model.named_parameters() if p.requires_grad)
    optimizer.step()
    for name, parameter in model.named_parameters():
        if groups[name] == "base":
            assert torch.equal(parameter, before[name]), f"base weight {name} changed"
    assert not torch.equal(model.gate.W_A, before["gate.W_A"])


def test_one_copy_of_the_base_weights():
    base = tiny_model("llama")
    base_count = sum(p.numel() for p in base.parameters())
    storages = {p.data_ptr() for p in base.parameters()}
    model = get_imsm_model(base, peft_config("lora", "llama"), IMSMConfig(gate_rank=8))
    trainable, total = model.trainable_parameter_count()
    assert total - trainable == base_count
    assert storages <= {p.data_ptr() for p in model.parameters()}
    # The backbone and head handles are not registered twice, so no weight is saved twice.
    assert all(key.startswith(("peft_model.", "gate.")) for key in model.state_dict())


def test_adapted_output_head_is_bypassed_by_the_fusion():
    # Eq. 6 reads the frozen model's head; vanilla PEFT ("none") reads the adapted one.
    from peft import LoraConfig

    for fusion in ("mean", "none"):
        model = get_imsm_model(
            tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]), IMSMConfig(fusion=fusion)
        )
        perturb_adapter(model)
        model.eval()
        input_ids, attention_mask = unpadded_batch()
        hidden_frozen, hidden_tuned, _, tuned_logits = peft_states(model, input_ids, attention_mask)
        with torch.no_grad():
            fused = model(input_ids, attention_mask=attention_mask).logits
            mixed = 0.5 * hidden_frozen.float() + 0.5 * hidden_tuned.float()  # in fp32, as the fusion mixes
            expected = tiny_model("llama").lm_head(mixed.to(hidden_tuned.dtype))
        torch.testing.assert_close(fused, tuned_logits if fusion == "none" else expected, **tolerance())


def test_grid_is_what_the_issue_asks_for():
    assert {"llama", "qwen2", "gpt2"} <= set(ARCHITECTURES)
    assert {"lora", "ia3", "adalora", "dora"} < set(PEFT_METHODS)


def test_cached_frozen_memory_gives_the_same_loss_and_gradients(architecture, method):
    model = build(architecture, method)
    model.train()
    input_ids, attention_mask = random_batch()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :5] = -100
    memory = model.frozen_memory(input_ids, attention_mask, labels)
    losses, gradients = [], []
    for frozen_memory in (None, memory):
        model.zero_grad()
        torch.manual_seed(7)  # the same dropout masks in the tuned branch and the gate
        loss = model(input_ids, attention_mask, labels=labels, return_logits=False, frozen_memory=frozen_memory).loss
        loss.backward()
        losses.append(loss.detach())
        gradients.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    # The same arithmetic, the frozen states read from the cache: one layer's worth of slack (the
    # backward's index_put may accumulate in another order on CUDA).
    torch.testing.assert_close(losses[0], losses[1], **tolerance(1))
    for a, b in zip(*gradients, strict=True):
        torch.testing.assert_close(a, b, **tolerance(1))


def test_a_bf16_models_cached_frozen_memory_keeps_the_query_in_fp32():
    # The gate reads q_M in fp32; a cached q_M rounded to the model's bf16 trained on other numbers
    # than the uncached computation (the loss moved by about 1e-4 here before the fix).
    model = build("llama", "lora").to(torch.bfloat16)
    model.train()
    input_ids, attention_mask = random_batch()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :5] = -100
    memory = model.frozen_memory(input_ids, attention_mask, labels)
    assert memory.query.dtype == torch.float32
    losses = []
    for frozen_memory in (None, memory):
        torch.manual_seed(7)  # the same dropout masks in the tuned branch and the gate
        with torch.no_grad():
            losses.append(
                model(input_ids, attention_mask, labels=labels, return_logits=False, frozen_memory=frozen_memory).loss
            )
    uncached, cached = losses
    torch.testing.assert_close(cached, uncached, **tolerance(1, torch.float32))


def test_the_frozen_branch_never_sees_dropout():
    model = build("gpt2", "lora")  # GPT-2 has residual and embedding dropout
    input_ids, attention_mask = unpadded_batch()
    model.train()
    first = model.frozen_hidden_states(input_ids, attention_mask)
    second = model.frozen_hidden_states(input_ids, attention_mask)
    assert torch.equal(first, second) and model.training and model.causal_lm.training
