"""Shared lower layers change nothing but the work done.

When the adapter leaves the bottom decoder layers alone, both branches compute them once. The
spec: logits, losses and gradients are those of the unshared computation (the switch
`share_lower_layers` off), decoded tokens the naive decoder's (tests/test_decoding_equivalence.py),
and the layers below the adapter really run once, on B rows. Four-layer models adapted on layers
2-3 leave an upper layer above the first adapted one, which receives the doubled batch's arguments
second-hand.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from conftest import (
    ARCHITECTURES,
    DEEP_LAYERS,
    LAYER_MODULES,
    UPPER_LAYERS,
    deep_model,
    layers_adapter_config,
    module_targets,
    perturb_adapter,
    random_batch,
)
from imsm import IMSMConfig, get_imsm_model
from imsm.model.decode import naive_generate
from tolerance import (
    assert_decodes_agree_until_a_near_tie,
    assert_same_tokens_until_a_near_tie,
    greedy_step_logits,
    model_depth,
    tolerance,
)

_EMBEDDING = {"llama": "embed_tokens", "qwen2": "embed_tokens", "gpt2": "wte"}
_NO_DROPOUT = {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0, "summary_first_dropout": 0.0}


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
    assert build(architecture, layers_adapter_config(method, architecture)).first_adapted_layer == 2
    assert build(architecture, layers_adapter_config(method, architecture, [1, 3])).first_adapted_layer == 1
    everywhere = build(architecture, layers_adapter_config(method, architecture, list(range(DEEP_LAYERS))))
    assert everywhere.first_adapted_layer == 0 and everywhere.shared_layer_count() == 0


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")
@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to True:UserWarning")
def test_an_adapted_embedding_shares_nothing_and_an_adapted_head_does_not_matter(architecture):
    upper = module_targets(architecture, UPPER_LAYERS)
    embedding = build(architecture, LoraConfig(r=4, target_modules=[*upper, _EMBEDDING[architecture]]))
    assert embedding.first_adapted_layer == 0 and embedding.shared_layer_count() == 0
    head = build(architecture, LoraConfig(r=4, target_modules=[*upper, "lm_head"]))
    assert head.first_adapted_layer == 2 and head.shared_layer_count() == 2


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_forward_with_shared_layers_gives_the_unshared_logits_and_loss(architecture, method):
    model = build(architecture, layers_adapter_config(method, architecture))
    assert model.shared_layer_count() == 2
    input_ids, attention_mask = random_batch()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :5] = -100
    lowest, highest = RowsSeen(model, 0), RowsSeen(model, DEEP_LAYERS - 1)
    with torch.no_grad():
        unshared, shared = forward_both_ways(model, input_ids, attention_mask=attention_mask, labels=labels)
    # The same arithmetic, layer k's input handed over: one layer's worth of slack.
    torch.testing.assert_close(shared.logits, unshared.logits, **tolerance(1))
    torch.testing.assert_close(shared.loss, unshared.loss, **tolerance(1))
    # Unshared, both branches run layer 0; shared, the frozen branch alone. Both run the top layer.
    assert lowest.rows == [3, 3] + [3] and highest.rows == [3, 3] + [3, 3]


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_shared_decoding_runs_the_layers_below_the_adapter_once(architecture, method):
    """The tokens are the naive decoder's (tests/test_decoding_equivalence.py); this is the work."""
    model = build(architecture, layers_adapter_config(method, architecture))
    input_ids, attention_mask = random_batch()
    lowest, first_adapted, highest = RowsSeen(model, 0), RowsSeen(model, 2), RowsSeen(model, DEEP_LAYERS - 1)
    model.generate(input_ids, attention_mask, max_new_tokens=10, eos_token_id=[])
    # Prefill and nine steps: B rows below the adapter (its cache too), 2B from layer 2 up.
    assert lowest.rows == [3] * 10 and first_adapted.rows == [6] * 10 and highest.rows == [6] * 10


def test_a_prompt_decodes_the_same_alone_and_in_a_padded_batch_with_shared_layers(architecture):
    model = build(architecture, layers_adapter_config("lora", architecture))
    input_ids, attention_mask = random_batch()
    batched = model.generate(input_ids, attention_mask, max_new_tokens=8, eos_token_id=[])
    T = input_ids.shape[1]
    alone = []
    for row in range(input_ids.shape[0]):
        prompt = input_ids[row][attention_mask[row].bool()][None]
        alone.append(model.generate(prompt, max_new_tokens=8, eos_token_id=[])[0, prompt.shape[1] :])
    # One row against a padded batch: products of other shapes. Up to the first near-tie.
    step_logits = greedy_step_logits(model, batched, attention_mask, T)
    assert_same_tokens_until_a_near_tie(torch.stack(alone), batched[:, T:], step_logits, model_depth(model))


def test_one_pass_scoring_with_shared_layers_reads_the_full_forwards_log_probs(architecture, method):
    """Targets fed through the prefilled cache (with the batch doubling at the first adapted
    layer), then cut off again: the scores are a full forward's, the answers `generate`'s."""
    model = build(architecture, layers_adapter_config(method, architecture))
    input_ids, attention_mask = random_batch(batch_size=3, length=7)
    targets = [[5, 6, 7], [8], [9, 10]]
    model.share_lower_layers = True
    scores = model.score_continuations(
        input_ids, attention_mask, [[t] for t in targets], first_token_log_probs=True, max_new_tokens=4, eos_token_id=[]
    )
    naive = naive_generate(model, input_ids, attention_mask, max_new_tokens=4, eos_token_id=[])
    # Cached against full recomputation: up to the first near-tie.
    assert_decodes_agree_until_a_near_tie(model, scores.sequences, naive, attention_mask, input_ids.shape[1])
    for row, target in enumerate(targets):
        prompt = input_ids[row][attention_mask[row].bool()].tolist()
        full = torch.tensor([prompt + target])
        query_mask = torch.tensor([[True] * len(prompt) + [False] * len(target)])
        with torch.no_grad():
            logits = model(full, query_mask=query_mask).logits[0].float()  # [T, V]
        expected = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # the positions predicting the target
        gathered = expected.gather(1, torch.tensor(target)[:, None])[:, 0]
        torch.testing.assert_close(scores.log_probs[row][0], gathered, **tolerance(model_depth(model)))
        torch.testing.assert_close(scores.first_log_probs[row][0], expected[0], **tolerance(model_depth(model)))


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
    config = layers_adapter_config(method, architecture)
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
        # The same arithmetic, reorganised: one layer's worth of slack (the backward's index_put
        # may accumulate in another order on CUDA).
        torch.testing.assert_close(loss, reference_loss, **tolerance(1))
        for a, b in zip(gradients, reference_gradients, strict=True):
            torch.testing.assert_close(a, b, **tolerance(1))
    assert any(bool(g.abs().sum() > 0) for g in reference_gradients)


def test_dropout_below_the_adapter_turns_sharing_off_in_training_only():
    model = build("gpt2", layers_adapter_config("lora", "gpt2"))  # GPT-2's residual and embedding dropout
    assert model.shared_layer_count() == 2
    model.train()
    assert model.shared_layer_count() == 0
    lowest = RowsSeen(model, 0)
    training_losses_and_gradients(model)
    assert lowest.rows == [3, 3]


def test_nothing_is_shared_when_layer_zero_is_adapted(architecture):
    model = build(architecture, layers_adapter_config("lora", architecture, list(range(DEEP_LAYERS))))
    assert model.shared_layer_count() == 0 and model.shared_layer_count(doubled_batch=True) == 0
    input_ids, attention_mask = random_batch()
    lowest = RowsSeen(model, 0)
    with torch.no_grad():
        unshared, shared = forward_both_ways(model, input_ids, attention_mask=attention_mask)
    assert torch.equal(shared.logits, unshared.logits)
    model.generate(input_ids, attention_mask, max_new_tokens=4, eos_token_id=[])
    assert lowest.rows == [3, 3, 3, 3] + [6] * 4  # two forwards of both branches, then 2B rows


def test_the_switch_and_vanilla_peft_share_nothing():
    model = build("llama", layers_adapter_config("lora", "llama"))
    model.share_lower_layers = False
    assert model.shared_layer_count() == 0 and model.shared_layer_count(doubled_batch=True) == 0
    vanilla = build("llama", layers_adapter_config("lora", "llama"), fusion="none")
    assert vanilla.first_adapted_layer == 2 and vanilla.shared_layer_count(doubled_batch=True) == 0


def test_decoding_with_shared_layers_leaves_no_hooks_behind():
    model = build("gpt2", layers_adapter_config("ia3", "gpt2"))
    input_ids, attention_mask = random_batch()
    model.generate(input_ids, attention_mask, max_new_tokens=3, eos_token_id=[])
    model(input_ids, attention_mask)
    for layer in model.decoder_layers:
        assert not layer._forward_pre_hooks and "forward" not in layer.__dict__
    assert model.router.mode == "tuned"


def test_grid_covers_every_architecture():
    assert set(LAYER_MODULES) == set(ARCHITECTURES)
