"""Shared lower layers change nothing but the work done.

When the adapter leaves the bottom decoder layers alone, both branches compute them once. The
spec: logits, decoded tokens, losses and gradients are those of the unshared computation (the
switch `share_lower_layers` off, or the naive decoder), and the layers below the adapter really
run once, on B rows. Four-layer models adapted on layers 2-3 leave an upper layer above the
first adapted one, which receives the doubled batch's arguments second-hand.
"""

from __future__ import annotations

import pytest
import torch
from peft import IA3Config, LoraConfig

from conftest import ARCHITECTURES, perturb_adapter, random_batch, tiny_model
from imsm import IMSMConfig, get_imsm_model
from imsm.model.decode import generate_and_score, naive_generate

LAYERS = 4
UPPER = [2, 3]
# The adapted projections, as paths inside one decoder layer, and the stack's attribute name.
_INNER = {
    "llama": ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"],
    "qwen2": ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"],
    "gpt2": ["attn.c_attn", "mlp.c_proj"],
}
_STACK = {"llama": "layers", "qwen2": "layers", "gpt2": "h"}
_EMBEDDING = {"llama": "embed_tokens", "qwen2": "embed_tokens", "gpt2": "wte"}
_NO_DROPOUT = {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0, "summary_first_dropout": 0.0}


def deep_model(architecture: str, **overrides):
    """conftest's tiny model of `architecture` with four layers (same seed and sizes)."""
    config = tiny_model(architecture).config.to_dict()
    config.pop("layer_types", None)  # derived from the layer count when the config is built
    config["n_layer" if "n_layer" in config else "num_hidden_layers"] = LAYERS
    config.update(overrides)
    model_class = type(tiny_model(architecture))
    torch.manual_seed(0)
    return model_class(model_class.config_class(**config)).eval()


def module_targets(architecture: str, layers) -> list[str]:
    return [f"{_STACK[architecture]}.{i}.{inner}" for i in layers for inner in _INNER[architecture]]


def adapter_config(method: str, architecture: str, layers=UPPER):
    """LoRA through peft's `layers_to_transform`; (IA)3, which lacks it, through module paths."""
    if method == "lora":
        targets = sorted({inner.split(".")[-1] for inner in _INNER[architecture]})
        return LoraConfig(r=4, lora_alpha=8, target_modules=targets, layers_to_transform=layers, lora_dropout=0.0)
    targets = module_targets(architecture, layers)
    return IA3Config(target_modules=targets, feedforward_modules=[t for t in targets if ".mlp." in t])


def build(architecture: str, peft_config, fusion: str = "imsm", **overrides):
    model = get_imsm_model(deep_model(architecture, **overrides), peft_config, IMSMConfig(fusion=fusion))
    perturb_adapter(model)
    if model.gate is not None:
        torch.nn.init.normal_(model.gate.W_B, std=2.0)  # a decisive gate, so fusion matters
    return model.eval()


class RowsSeen:
    """The batch sizes a decoder layer's MLP receives: proof of where work is done."""

    def __init__(self, model, layer: int):
        self.rows: list[int] = []
        model.decoder_layers[layer].mlp.register_forward_hook(lambda m, args, out: self.rows.append(args[0].shape[0]))


def forward_both_ways(model, *args, **kwargs):
    outputs = []
    for share in (False, True):
        model.share_lower_layers = share
        outputs.append(model(*args, **kwargs))
    return outputs


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_the_first_adapted_layer_is_found(architecture, method):
    assert build(architecture, adapter_config(method, architecture)).first_adapted_layer == 2
    assert build(architecture, adapter_config(method, architecture, [1, 3])).first_adapted_layer == 1
    everywhere = build(architecture, adapter_config(method, architecture, list(range(LAYERS))))
    assert everywhere.first_adapted_layer == 0 and everywhere.shared_layer_count() == 0


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")
@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to True:UserWarning")
def test_an_adapted_embedding_shares_nothing_and_an_adapted_head_does_not_matter(architecture):
    upper = module_targets(architecture, UPPER)
    embedding = build(architecture, LoraConfig(r=4, target_modules=[*upper, _EMBEDDING[architecture]]))
    assert embedding.first_adapted_layer == 0 and embedding.shared_layer_count() == 0
    head = build(architecture, LoraConfig(r=4, target_modules=[*upper, "lm_head"]))
    assert head.first_adapted_layer == 2 and head.shared_layer_count() == 2


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_forward_with_shared_layers_gives_the_unshared_logits_and_loss(architecture, method):
    model = build(architecture, adapter_config(method, architecture))
    assert model.shared_layer_count() == 2
    input_ids, attention_mask = random_batch()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :5] = -100
    lowest, highest = RowsSeen(model, 0), RowsSeen(model, LAYERS - 1)
    with torch.no_grad():
        unshared, shared = forward_both_ways(model, input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(shared.logits, unshared.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(shared.loss, unshared.loss, atol=1e-6, rtol=0)
    # Unshared, both branches run layer 0; shared, the frozen branch alone. Both run the top layer.
    assert lowest.rows == [3, 3] + [3] and highest.rows == [3, 3] + [3, 3]


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_shared_decoding_equals_naive_recomputation(architecture, method):
    model = build(architecture, adapter_config(method, architecture))
    input_ids, attention_mask = random_batch()
    model.share_lower_layers = False
    naive = naive_generate(model, input_ids, attention_mask, max_new_tokens=10, eos_token_id=[])
    unshared = model.generate(input_ids, attention_mask, max_new_tokens=10, eos_token_id=[])
    model.share_lower_layers = True
    lowest, first_adapted, highest = RowsSeen(model, 0), RowsSeen(model, 2), RowsSeen(model, LAYERS - 1)
    shared = model.generate(input_ids, attention_mask, max_new_tokens=10, eos_token_id=[])
    assert torch.equal(shared, naive) and torch.equal(unshared, naive)
    # Prefill and nine steps: B rows below the adapter (its cache too), 2B from layer 2 up.
    assert lowest.rows == [3] * 10 and first_adapted.rows == [6] * 10 and highest.rows == [6] * 10


def test_a_prompt_decodes_the_same_alone_and_in_a_padded_batch_with_shared_layers(architecture):
    model = build(architecture, adapter_config("lora", architecture))
    input_ids, attention_mask = random_batch()
    batched = model.generate(input_ids, attention_mask, max_new_tokens=8, eos_token_id=[])
    T = input_ids.shape[1]
    for row in range(input_ids.shape[0]):
        prompt = input_ids[row][attention_mask[row].bool()][None]
        alone = model.generate(prompt, max_new_tokens=8, eos_token_id=[])
        model.share_lower_layers = False
        reference = naive_generate(model, prompt, max_new_tokens=8, eos_token_id=[])
        model.share_lower_layers = True
        assert torch.equal(alone, reference)
        assert torch.equal(alone[0, prompt.shape[1] :], batched[row, T:])


def test_one_pass_scoring_with_shared_layers_reads_the_full_forwards_log_probs(architecture, method):
    """Targets fed through the prefilled cache (with the batch doubling at the first adapted
    layer), then cut off again: the scores are a full forward's, the answers `generate`'s."""
    model = build(architecture, adapter_config(method, architecture))
    input_ids, attention_mask = random_batch(batch_size=3, length=7)
    targets = [[5, 6, 7], [8], [9, 10]]
    model.share_lower_layers = True
    ids, scores = generate_and_score(model, input_ids, attention_mask, targets, max_new_tokens=4, eos_token_id=[])
    assert torch.equal(ids, naive_generate(model, input_ids, attention_mask, max_new_tokens=4, eos_token_id=[]))
    for row, target in enumerate(targets):
        prompt = input_ids[row][attention_mask[row].bool()].tolist()
        full = torch.tensor([prompt + target])
        query_mask = torch.tensor([[True] * len(prompt) + [False] * len(target)])
        with torch.no_grad():
            logits = model(full, query_mask=query_mask).logits[0].float()  # [T, V]
        expected = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # the positions predicting the target
        gathered = expected.gather(1, torch.tensor(target)[:, None])[:, 0]
        assert torch.allclose(scores.log_probs[row], gathered, atol=1e-4)
        assert torch.allclose(scores.first_log_probs[row], expected[0], atol=1e-4)


def test_eager_attention_decodes_the_same_with_shared_layers():
    model = build("llama", adapter_config("lora", "llama"))
    model.causal_lm.set_attn_implementation("eager")
    input_ids, attention_mask = random_batch()
    shared = model.generate(input_ids, attention_mask, max_new_tokens=8, eos_token_id=[])
    model.share_lower_layers = False
    assert torch.equal(shared, naive_generate(model, input_ids, attention_mask, max_new_tokens=8, eos_token_id=[]))


def test_an_adapted_head_decodes_like_naive_recomputation():
    model = build("qwen2", LoraConfig(r=4, target_modules=[*module_targets("qwen2", [3]), "lm_head"]))
    assert model.shared_layer_count(doubled_batch=True) == 3
    input_ids, attention_mask = random_batch()
    shared = model.generate(input_ids, attention_mask, max_new_tokens=8, eos_token_id=[])
    model.share_lower_layers = False
    assert torch.equal(shared, naive_generate(model, input_ids, attention_mask, max_new_tokens=8, eos_token_id=[]))


def training_losses_and_gradients(model, frozen_memory: bool = False):
    input_ids, attention_mask = random_batch()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :5] = -100
    memory = model.frozen_memory(input_ids, attention_mask, labels) if frozen_memory else None
    model.zero_grad()
    torch.manual_seed(7)  # the same dropout masks in the adapter and the gate
    loss = model(input_ids, attention_mask, labels=labels, return_logits=False, frozen_memory=memory).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_training_gradients_are_the_same_with_shared_layers(architecture, method):
    config = adapter_config(method, architecture)
    if method == "lora":
        config.lora_dropout = 0.1  # dropout above the shared layers is allowed
    model = build(architecture, config, **_NO_DROPOUT if architecture == "gpt2" else {})
    model.train()
    assert model.shared_layer_count() == 2
    lowest = RowsSeen(model, 0)
    results = []
    for share, frozen_memory in [(False, False), (True, False), (True, True)]:
        model.share_lower_layers = share
        results.append(training_losses_and_gradients(model, frozen_memory))
    assert lowest.rows == [3, 3] + [3] + [3, 3]  # unshared: both branches; shared: once; memory: build + tuned
    (reference_loss, reference_gradients), *others = results
    for loss, gradients in others:
        torch.testing.assert_close(loss, reference_loss, atol=1e-6, rtol=0)
        for a, b in zip(gradients, reference_gradients, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert any(bool(g.abs().sum() > 0) for g in reference_gradients)


def test_dropout_below_the_adapter_turns_sharing_off_in_training_only():
    model = build("gpt2", adapter_config("lora", "gpt2"))  # GPT-2's residual and embedding dropout
    assert model.shared_layer_count() == 2
    model.train()
    assert model.shared_layer_count() == 0
    lowest = RowsSeen(model, 0)
    training_losses_and_gradients(model)
    assert lowest.rows == [3, 3]


def test_nothing_is_shared_when_layer_zero_is_adapted(architecture):
    model = build(architecture, adapter_config("lora", architecture, list(range(LAYERS))))
    assert model.shared_layer_count() == 0 and model.shared_layer_count(doubled_batch=True) == 0
    input_ids, attention_mask = random_batch()
    lowest = RowsSeen(model, 0)
    with torch.no_grad():
        unshared, shared = forward_both_ways(model, input_ids, attention_mask=attention_mask)
    assert torch.equal(shared.logits, unshared.logits)
    decoded = model.generate(input_ids, attention_mask, max_new_tokens=4, eos_token_id=[])
    assert lowest.rows == [3, 3, 3, 3] + [6] * 4  # two forwards of both branches, then 2B rows
    assert torch.equal(decoded, naive_generate(model, input_ids, attention_mask, max_new_tokens=4, eos_token_id=[]))


def test_the_switch_and_vanilla_peft_share_nothing():
    model = build("llama", adapter_config("lora", "llama"))
    model.share_lower_layers = False
    assert model.shared_layer_count() == 0 and model.shared_layer_count(doubled_batch=True) == 0
    vanilla = build("llama", adapter_config("lora", "llama"), fusion="none")
    assert vanilla.first_adapted_layer == 2 and vanilla.shared_layer_count(doubled_batch=True) == 0


def test_decoding_with_shared_layers_leaves_no_hooks_behind():
    model = build("gpt2", adapter_config("ia3", "gpt2"))
    input_ids, attention_mask = random_batch()
    model.generate(input_ids, attention_mask, max_new_tokens=3, eos_token_id=[])
    model(input_ids, attention_mask)
    for layer in model.decoder_layers:
        assert not layer._forward_pre_hooks and "forward" not in layer.__dict__
    assert model.router.mode == "tuned"


def test_grid_covers_every_architecture():
    assert set(_INNER) == set(ARCHITECTURES)
