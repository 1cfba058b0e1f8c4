"""Reusing the frozen branch's states: scoring with them equals scoring without, the frozen model
is not run when they are at hand, and the store on disk is checked, invalidated and rebuilt."""

from __future__ import annotations

import pytest
import torch

from conftest import random_batch
from imsm.model.branches import FROZEN
from test_scoring import build

CONTINUATIONS = [[[5, 6, 7], [8], [9, 10]], [[11]], [[12, 13], [14, 15, 16, 17]]]


def count_frozen_runs(model) -> list[str]:
    """Record every forward that runs the frozen branch alone, or both branches."""
    calls: list[str] = []
    real = model.branch_hidden_states

    def spy(input_ids, attention_mask, branch, *args, **kwargs):
        calls.append(branch)
        return real(input_ids, attention_mask, branch, *args, **kwargs)

    model.branch_hidden_states = spy
    return calls


@pytest.mark.parametrize("shared_layers", [False, True])
@pytest.mark.parametrize("fusion", ["imsm", "no-query", "mean"])
def test_scores_with_reused_frozen_states_equal_those_without(fusion, shared_layers):
    model = build(fusion, shared_layers)
    input_ids, attention_mask = random_batch(batch_size=3, length=8)
    reference = model.score_continuations(input_ids, attention_mask, CONTINUATIONS, first_token_log_probs=True)
    frozen = model.frozen_continuation_states(input_ids, attention_mask, CONTINUATIONS)
    assert [[h.shape[0] for h in p.hidden] for p in frozen] == [[len(c) for c in g] for g in CONTINUATIONS]
    calls = count_frozen_runs(model)
    reused = model.score_continuations(
        input_ids, attention_mask, CONTINUATIONS, first_token_log_probs=True, frozen_states=frozen
    )
    assert calls and set(calls) == {"tuned"}  # the tuned branch alone, B rows
    for row, group in enumerate(CONTINUATIONS):
        for index in range(len(group)):
            torch.testing.assert_close(reused.log_probs[row][index], reference.log_probs[row][index], atol=1e-5, rtol=0)
            torch.testing.assert_close(
                reused.first_log_probs[row][index], reference.first_log_probs[row][index], atol=1e-5, rtol=0
            )
            if reference.frozen_weights[row][index] is not None:
                assert reused.frozen_weights[row][index] == pytest.approx(reference.frozen_weights[row][index], abs=1e-6)
            assert reused.is_greedy[row][index] == reference.is_greedy[row][index]


def test_the_frozen_pass_runs_the_frozen_branch_alone():
    model = build("imsm")
    input_ids, attention_mask = random_batch(batch_size=2, length=6)
    calls = count_frozen_runs(model)
    model.frozen_continuation_states(input_ids, attention_mask, [[[5, 6]], [[7], [8, 9]]])
    assert set(calls) == {FROZEN}


def test_given_states_that_do_not_fit_or_would_decode_are_refused():
    model = build("imsm")
    input_ids, attention_mask = random_batch(batch_size=2, length=6)
    frozen = model.frozen_continuation_states(input_ids, attention_mask, [[[5, 6]], [[7]]])
    with pytest.raises(ValueError, match="one \\[L, d\\] tensor per continuation"):
        model.score_continuations(input_ids, attention_mask, [[[5]], [[7]]], frozen_states=frozen)
    with pytest.raises(ValueError, match="scoring only"):
        model.score_continuations(input_ids, attention_mask, [[[5, 6]], [[7]]], max_new_tokens=2, frozen_states=frozen)


def test_fusion_none_ignores_given_states_and_never_runs_the_frozen_branch():
    model = build("none")
    input_ids, attention_mask = random_batch(batch_size=2, length=6)
    reference = model.score_continuations(input_ids, attention_mask, [[[5, 6]], [[7]]])
    calls = count_frozen_runs(model)
    given = model.score_continuations(input_ids, attention_mask, [[[5, 6]], [[7]]], frozen_states=[None, None])
    assert set(calls) == {"tuned"}
    torch.testing.assert_close(given.log_probs[0][0], reference.log_probs[0][0])
