"""The one path from the branches to logits: `fused_logits` and prefill scoring of continuations."""

from __future__ import annotations

import pytest
import torch

from conftest import deep_model, layers_adapter_config, peft_config, perturb_adapter, random_batch, tiny_model
from imsm import FUSION_MODES, IMSMConfig, get_imsm_model
from imsm.model.decode import naive_generate
from imsm.model.gate import FusionGate
from tolerance import assert_decodes_agree_until_a_near_tie, model_depth, tolerance


def build(fusion: str = "imsm", shared_layers: bool = False, architecture: str = "llama"):
    if shared_layers:  # an adapter on the upper layers only: the lower ones run once for both branches
        base, config = deep_model(architecture), layers_adapter_config("lora", architecture)
    else:
        base, config = tiny_model(architecture), peft_config("lora", architecture)
    model = get_imsm_model(base, config, IMSMConfig(fusion=fusion))
    perturb_adapter(model)
    if model.gate is not None:
        torch.nn.init.normal_(model.gate.W_B, std=2.0)  # a decisive gate, so fusion matters
    model.eval()
    assert (model.shared_layer_count(doubled_batch=True) > 0) == (shared_layers and fusion != "none")
    return model


def forward_scores(model, prompt: list[int], continuation: list[int]):
    """log p of each continuation token and the first token's distribution, from one full forward."""
    query_mask = torch.tensor([[True] * len(prompt) + [False] * len(continuation)])
    with torch.no_grad():
        logits = model(torch.tensor([prompt + continuation]), query_mask=query_mask).logits[0].float()
    log_probs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # [L, V]
    return log_probs.gather(1, torch.tensor(continuation)[:, None])[:, 0], log_probs[0]


@pytest.mark.parametrize("shared_layers", [False, True])
@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_several_continuations_per_prompt_score_as_a_full_forward_does(fusion, shared_layers):
    model = build(fusion, shared_layers)
    input_ids, attention_mask = random_batch(batch_size=3, length=8)  # left padded
    continuations = [[[5, 6, 7], [8], [9, 10]], [[11]], [[12, 13], [14, 15, 16, 17]]]
    scores = model.score_continuations(input_ids, attention_mask, continuations, first_token_log_probs=True)
    assert scores.sequences is None
    for row, group in enumerate(continuations):
        prompt = input_ids[row][attention_mask[row].bool()].tolist()
        assert len(scores.log_probs[row]) == len(group)
        for index, continuation in enumerate(group):
            expected, first = forward_scores(model, prompt, continuation)
            torch.testing.assert_close(scores.log_probs[row][index], expected, **tolerance(model_depth(model)))
            torch.testing.assert_close(scores.first_log_probs[row][index], first, **tolerance(model_depth(model)))
            weight = scores.frozen_weights[row][index]
            assert (weight is None) == (model.gate is None) and (weight is None or 0 < weight < 1)


def test_scoring_several_continuations_leaves_the_prompts_cache_for_decoding():
    model = build()
    input_ids, attention_mask = random_batch(batch_size=2, length=6)
    continuations = [[[5, 6], [7, 8, 9]], [[10], [11], [12]]]
    scores = model.score_continuations(input_ids, attention_mask, continuations, max_new_tokens=5, eos_token_id=[])
    expected = naive_generate(model, input_ids, attention_mask, max_new_tokens=5, eos_token_id=[])
    # Cached against full recomputation: up to the first near-tie.
    assert_decodes_agree_until_a_near_tie(model, scores.sequences, expected, attention_mask, input_ids.shape[1])


def test_the_query_memory_of_a_scored_continuation_is_its_prompt():
    """A continuation's tokens never enter the query memory: scores after the same prompt do not
    depend on which other continuations, or how long ones, share the prefill."""
    model = build()
    input_ids, attention_mask = random_batch(batch_size=1, length=6)
    alone = model.score_continuations(input_ids, attention_mask, [[[5, 6]]])
    beside_others = model.score_continuations(input_ids, attention_mask, [[[9, 9, 9, 9, 9], [5, 6], [7]]])
    # Beside others the continuation runs in a longer, padded batch: products of another shape.
    torch.testing.assert_close(beside_others.log_probs[0][1], alone.log_probs[0][0], **tolerance(model_depth(model)))


def test_bad_continuations_are_refused():
    model = build()
    input_ids, attention_mask = random_batch(batch_size=2, length=6)
    with pytest.raises(ValueError, match="2 prompts"):
        model.score_continuations(input_ids, attention_mask, [[[5]]])
    with pytest.raises(ValueError, match="at least one continuation"):
        model.score_continuations(input_ids, attention_mask, [[[5]], []])
    with pytest.raises(ValueError, match="at least one continuation"):
        model.score_continuations(input_ids, attention_mask, [[[5]], [[]]])


def test_stand_in_gates_give_the_frozen_model_the_tuned_model_and_their_mix():
    model = build()
    input_ids, attention_mask = random_batch(batch_size=2, length=7)
    query = attention_mask.bool()
    with torch.no_grad():
        states = model.branch_states(input_ids, attention_mask, query)
        frozen = model.causal_lm.lm_head(states.frozen)
        tuned = model.causal_lm.lm_head(states.tuned)
        # g = 1 mixes h_M' + (h_M - h_M') in fp32, which may round; g = 0 is h_M' exactly.
        torch.testing.assert_close(model.fused_logits(states, gate=1.0).logits, frozen, **tolerance(1))
        torch.testing.assert_close(model.fused_logits(states, gate=0.0).logits, tuned, atol=0, rtol=0)
        half = model.fused_logits(states, gate=0.5)
        assert torch.all(half.gate == 0.5)
        own = model.fused_logits(states)
        assert own.gate.shape == states.tuned.shape and not torch.all(own.gate == own.gate.flatten()[0])
        # Another gate with the model's own weights gives the model's own fusion.
        twin = FusionGate(model.hidden_size, model.imsm_config.gate_rank).eval()
        twin.load_state_dict(model.gate.state_dict())
        torch.testing.assert_close(model.fused_logits(states, gate=twin).logits, own.logits, atol=0, rtol=0)


def test_fused_logits_at_chosen_positions_equal_those_of_every_position():
    model = build()
    input_ids, attention_mask = random_batch(batch_size=3, length=7)
    with torch.no_grad():
        states = model.branch_states(input_ids, attention_mask, attention_mask.bool())
        everywhere = model.fused_logits(states)
        rows, cols = torch.tensor([0, 2, 2]), torch.tensor([6, 3, 5])
        chosen = model.fused_logits(states, (rows, cols))
    # The gate and the head over N positions rather than B x T: products of another shape.
    torch.testing.assert_close(chosen.logits, everywhere.logits[rows, cols], **tolerance(1))
    torch.testing.assert_close(chosen.gate, everywhere.gate[rows, cols], **tolerance(1, torch.float32))


def test_a_stand_in_gate_needs_a_frozen_branch():
    model = build("none")
    input_ids, attention_mask = random_batch(batch_size=1, length=5)
    with torch.no_grad():
        states = model.branch_states(input_ids, attention_mask, attention_mask.bool())
        with pytest.raises(ValueError, match="frozen branch"):
            model.fused_logits(states, gate=0.5)


def test_contexts_are_batched_by_similar_length_and_never_beyond_the_batch_size():
    from imsm.evaluation.scoring import _similar_lengths

    lengths = [400, 390, 310, 290, 100, 99, 98, 97, 96, 95, 10]
    batches = _similar_lengths(lengths, lambda n: n, batch_size=4)
    assert [n for batch in batches for n in batch] == lengths  # order kept, nothing lost
    assert batches == [[400, 390, 310], [290], [100, 99, 98, 97], [96, 95], [10]]


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_the_frozen_branch_runs_only_where_the_fusion_reads_it_or_the_caller_asks(fusion):
    model = build(fusion)
    calls = []
    real = model.frozen_hidden_states
    model.frozen_hidden_states = lambda *args: calls.append(1) or real(*args)
    input_ids, attention_mask = random_batch(batch_size=2, length=5)
    with torch.no_grad():
        model(input_ids, attention_mask=attention_mask)
        assert len(calls) == (0 if fusion == "none" else 1)
        forced = model.branch_states(input_ids, attention_mask, attention_mask.bool(), run_frozen=True)
    assert forced.frozen is not None and len(calls) == (1 if fusion == "none" else 2)
