"""Cached doubled-batch decoding: batching, padding, stopping, and scores read from the prefill.

That its tokens are naive recomputation's is stated once, in tests/test_decoding_equivalence.py.
"""

from __future__ import annotations

import pytest
import torch

from conftest import peft_config, perturb_adapter, random_batch, tiny_model
from imsm import IMSMConfig, get_imsm_model
from imsm.model.decode import naive_generate
from tolerance import (
    assert_decodes_agree_until_a_near_tie,
    assert_same_tokens_until_a_near_tie,
    greedy_step_logits,
    model_depth,
    tolerance,
)


def build(architecture: str, method: str, fusion: str = "imsm"):
    model = get_imsm_model(tiny_model(architecture), peft_config(method, architecture), IMSMConfig(fusion=fusion))
    perturb_adapter(model)
    if model.gate is not None:
        torch.nn.init.normal_(model.gate.W_B, std=2.0)  # a decisive gate, so fusion matters
    return model.eval()


def test_fusion_none_decodes_like_peft_generate():
    model = build("llama", "lora", "none")
    input_ids, attention_mask = random_batch()
    ours = model.generate(input_ids, attention_mask, max_new_tokens=8, eos_token_id=[])
    model.peft_model.get_base_model().generation_config.eos_token_id = None
    theirs = model.peft_model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    # Not bit-identical by construction: transformers runs the head on the last position only.
    assert_decodes_agree_until_a_near_tie(model, ours, theirs, attention_mask, input_ids.shape[1])


def test_a_prompt_decodes_the_same_alone_and_in_a_padded_batch(architecture, method):
    model = build(architecture, method)
    input_ids, attention_mask = random_batch()
    batched = model.generate(input_ids, attention_mask, max_new_tokens=8, eos_token_id=[])
    assert_alone_decodes_like_the_batch(model, input_ids, attention_mask, batched)


def assert_alone_decodes_like_the_batch(model, input_ids, attention_mask, batched):
    """Each prompt decoded alone gives its row of the padded batch's decode `batched`, up to the
    first near-tie: one row and a padded batch are products of other shapes, which may round
    differently."""
    T = input_ids.shape[1]
    alone = []
    for row in range(input_ids.shape[0]):
        prompt = input_ids[row][attention_mask[row].bool()][None]
        alone.append(model.generate(prompt, max_new_tokens=batched.shape[1] - T, eos_token_id=[])[0, prompt.shape[1] :])
    step_logits = greedy_step_logits(model, batched, attention_mask, T)
    assert_same_tokens_until_a_near_tie(torch.stack(alone), batched[:, T:], step_logits, model_depth(model))


def test_right_padded_prompts_decode_like_left_padded_ones():
    model = build("qwen2", "lora")
    input_ids, attention_mask = random_batch(padding="right")
    right = model.generate(input_ids, attention_mask, max_new_tokens=6, eos_token_id=[])
    assert_alone_decodes_like_the_batch(model, input_ids, attention_mask, right)


def test_rows_stop_at_eos_and_are_padded_after_it():
    model = build("llama", "dora")
    input_ids, attention_mask = random_batch()
    free = model.generate(input_ids, attention_mask, max_new_tokens=10, eos_token_id=[])
    T = input_ids.shape[1]
    eos = int(free[0, T + 2])  # a token row 0 emits at its third step
    cached = model.generate(input_ids, attention_mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    first_eos = (cached[0, T:] == eos).nonzero()[0].item()
    assert first_eos <= 2 and bool((cached[0, T + first_eos + 1 :] == 0).all())


def test_decoding_stops_early_when_every_row_has_finished():
    model = build("llama", "lora")
    prompt = torch.tensor([[5, 6, 7, 8]])
    first = int(model.generate(prompt, max_new_tokens=1, eos_token_id=[])[0, -1])
    assert model.generate(prompt, max_new_tokens=20, eos_token_id=first).shape == (1, 5)


def test_decoding_leaves_the_model_in_tuned_mode():
    model = build("gpt2", "ia3")
    input_ids, attention_mask = random_batch()
    model.generate(input_ids, attention_mask, max_new_tokens=3, eos_token_id=[])
    assert model.router.mode == "tuned"


def _reference_log_probs(model, input_ids, attention_mask, row, target):
    """log p of `target` after row `row`'s prompt, from one full forward without a cache."""
    prompt = input_ids[row][attention_mask[row].bool()].tolist()
    query_mask = torch.tensor([[True] * len(prompt) + [False] * len(target)])
    with torch.no_grad():
        logits = model(torch.tensor([prompt + target]), query_mask=query_mask).logits[0].float()
    expected = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # [L, V]
    return expected.gather(1, torch.tensor(target)[:, None])[:, 0], expected[0]


@pytest.mark.parametrize("sliding_window", [None, 4])
def test_targets_scored_from_the_prefill_leave_decoding_unchanged(sliding_window):
    """Gold tokens run through the prompt's cache and are cut off again (or, past a sliding
    window, scored on a copy): the answers are the naive decoder's, the scores a full forward's."""
    config = tiny_model("qwen2").config.to_dict()
    config.pop("layer_types", None)  # rebuilt from the window settings
    if sliding_window:
        config.update(use_sliding_window=True, sliding_window=sliding_window, max_window_layers=0)
    torch.manual_seed(0)
    base = type(tiny_model("qwen2"))(type(tiny_model("qwen2")).config_class(**config)).eval()
    assert ("sliding_attention" in base.config.layer_types) == bool(sliding_window)
    model = get_imsm_model(base, peft_config("lora", "qwen2"), IMSMConfig())
    perturb_adapter(model)
    model.eval()
    input_ids, attention_mask = random_batch(batch_size=3, length=8)
    targets = [[5, 6, 7], [8], [9, 10]]
    scores = model.score_continuations(
        input_ids, attention_mask, [[t] for t in targets], first_token_log_probs=True, max_new_tokens=4, eos_token_id=[]
    )
    naive = naive_generate(model, input_ids, attention_mask, max_new_tokens=4, eos_token_id=[])
    # Cached against full recomputation: up to the first near-tie.
    assert_decodes_agree_until_a_near_tie(model, scores.sequences, naive, attention_mask, input_ids.shape[1])
    for row, target in enumerate(targets):
        expected, first = _reference_log_probs(model, input_ids, attention_mask, row, target)
        torch.testing.assert_close(scores.log_probs[row][0], expected, **tolerance(model_depth(model)))
        torch.testing.assert_close(scores.first_log_probs[row][0], first, **tolerance(model_depth(model)))
    assert all(0 < w < 1 for [w] in scores.frozen_weights)
