"""The model tests' yardsticks (tests/tolerance.py): tolerances from the dtype, and decodes compared
up to the first near-tie."""

from __future__ import annotations

import pytest
import torch

import tolerance as tolerances
from tolerance import assert_same_tokens_until_a_near_tie, tolerance

FP32, BF16 = torch.finfo(torch.float32).eps, torch.finfo(torch.bfloat16).eps


def test_tolerances_grow_with_the_dtypes_epsilon_and_the_depth():
    assert tolerance(3, torch.float32) == {"rtol": 3 * 4 * 5 * FP32, "atol": 3 * 4 * 5 * FP32}
    # About the fp32-only tests' 2e-5 at the tiny models' logits (|logit| <= 2.5 or so).
    bound = tolerance(3, torch.float32)["atol"]
    assert bound < 2e-5 < bound * (1 + 2.5) < 3e-5
    # bf16 values, summed in fp32 inside each reduction.
    assert tolerance(1, torch.bfloat16)["atol"] == pytest.approx(4 * (BF16 + 4 * FP32))
    assert tolerance(5, torch.bfloat16)["atol"] == pytest.approx(5 * tolerance(1, torch.bfloat16)["atol"])


def test_tf32_and_half_precision_reductions_on_cuda_loosen_what_they_round(monkeypatch):
    monkeypatch.setattr(tolerances, "_on_cuda", lambda: True)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # TF32 allowed
        assert tolerances.rounding_eps(torch.float32) == 2.0**-10
        torch.set_float32_matmul_precision("highest")
        assert tolerances.rounding_eps(torch.float32) == FP32
    finally:
        torch.set_float32_matmul_precision(previous)
    matmul = torch.backends.cuda.matmul
    previous = matmul.allow_bf16_reduced_precision_reduction
    try:
        matmul.allow_bf16_reduced_precision_reduction = True  # cuBLAS's default
        assert tolerances.accumulation_eps(torch.bfloat16) == BF16
        matmul.allow_bf16_reduced_precision_reduction = False  # conftest's, on CUDA
        assert tolerances.accumulation_eps(torch.bfloat16) == FP32
    finally:
        matmul.allow_bf16_reduced_precision_reduction = previous


def step_logits(gaps: list[float]) -> torch.Tensor:
    """[1, N, 4] logits whose two best (tokens 0 and 1) are `gaps` apart at each step."""
    logits = torch.zeros(1, len(gaps), 4, dtype=torch.float32)
    logits[0, :, 0] = torch.tensor(gaps)
    return logits


def test_decodes_may_part_after_a_near_tie_but_not_before():
    expected = torch.tensor([[0, 0, 0, 0]])
    clear, tie = 1.0, 1e-7
    assert_same_tokens_until_a_near_tie(expected, expected, step_logits([clear] * 4), depth=1)
    parted = torch.tensor([[0, 0, 1, 3]])
    assert_same_tokens_until_a_near_tie(parted, expected, step_logits([clear, clear, tie, clear]), depth=1)
    with pytest.raises(AssertionError, match="new token 2: 1 != 0"):
        assert_same_tokens_until_a_near_tie(parted, expected, step_logits([clear] * 4), depth=1)
