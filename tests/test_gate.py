"""The gate and fusion in isolation: eq. 4-5 on hand-made tensors."""

from __future__ import annotations

import torch

from imsm.model.gate import FusionGate, fuse, masked_mean
from tolerance import tolerance


def test_masked_mean_ignores_masked_positions():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(masked_mean(hidden, mask), torch.tensor([[2.0, 3.0]], dtype=torch.float32))  # fp32


def test_masked_mean_of_an_empty_query_is_zero_not_nan():
    assert torch.equal(masked_mean(torch.ones(1, 2, 3), torch.zeros(1, 2)), torch.zeros(1, 3))


def test_gate_equals_sigmoid_of_the_concatenated_input_times_W_A_W_B():
    torch.manual_seed(0)
    gate = FusionGate(hidden_size=6, rank=3, query_aware=True, dropout=0.0)
    h_frozen, h_tuned = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    q_frozen, q_tuned = torch.randn(2, 6), torch.randn(2, 6)
    x = torch.cat([q_frozen[:, None].expand(-1, 5, -1), h_frozen, h_tuned, q_tuned[:, None].expand(-1, 5, -1)], -1)
    expected = torch.sigmoid(x.float() @ gate.W_A @ gate.W_B)
    actual = gate(h_frozen, h_tuned, gate.query_term(q_frozen, q_tuned)[:, None])
    torch.testing.assert_close(actual, expected, **tolerance(1, torch.float32))  # the gate computes in fp32


def test_no_query_gate_reads_only_the_two_states():
    torch.manual_seed(0)
    gate = FusionGate(hidden_size=4, rank=2, query_aware=False)
    h_frozen, h_tuned = torch.randn(3, 4), torch.randn(3, 4)
    assert gate.W_A.shape == (8, 2) and gate.query_term(h_frozen, h_tuned) is None
    torch.testing.assert_close(
        gate(h_frozen, h_tuned, None),
        torch.sigmoid(torch.cat([h_frozen, h_tuned], -1).float() @ gate.W_A @ gate.W_B),
        **tolerance(1, torch.float32),
    )


def test_fusion_is_a_convex_combination_weighted_towards_the_frozen_branch():
    torch.manual_seed(0)
    gate = FusionGate(hidden_size=4, rank=2)
    h_frozen, h_tuned = torch.randn(3, 4), torch.randn(3, 4)
    query = gate.query_term(torch.randn(3, 4), torch.randn(3, 4))
    g = gate(h_frozen, h_tuned, query)
    fused, used = fuse("imsm", gate, h_frozen, h_tuned, query)
    # Mixed in fp32 (g is), returned in the states' dtype.
    mixed = g * h_frozen.float() + (1 - g) * h_tuned.float()
    torch.testing.assert_close(fused, mixed.to(h_tuned.dtype), **tolerance(1))
    torch.testing.assert_close(used, g, atol=0, rtol=0)
    fused, used = fuse("mean", None, h_frozen, h_tuned, None)
    torch.testing.assert_close(fused, ((h_frozen.float() + h_tuned.float()) / 2).to(h_tuned.dtype), **tolerance(1))
    assert used is None
    fused, used = fuse("none", None, None, h_tuned, None)
    assert fused is h_tuned and used is None


def test_gate_keeps_fp32_parameters_and_returns_the_models_dtype():
    gate = FusionGate(hidden_size=4, rank=2)
    h = torch.randn(2, 4, dtype=torch.bfloat16)
    query = gate.query_term(h, h)
    assert gate.W_A.dtype == torch.float32
    assert fuse("imsm", gate, h, h, query)[0].dtype == torch.bfloat16


def test_gate_is_fp32_even_when_the_default_dtype_is_bf16():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        gate = FusionGate(hidden_size=4, rank=2)
        h = torch.randn(2, 4)  # bf16, as every tensor built here now is
        fused, g = fuse("imsm", gate, h, h, gate.query_term(h, h))
    finally:
        torch.set_default_dtype(previous)
    assert gate.W_A.dtype == gate.W_B.dtype == torch.float32
    assert g.dtype == torch.float32 and fused.dtype == torch.bfloat16


def test_a_gate_cast_to_bf16_still_computes_in_fp32():
    # model.to(torch.bfloat16) casts every parameter, the gate's too; the gate must still run.
    torch.manual_seed(0)
    gate = FusionGate(hidden_size=4, rank=2)
    h = torch.randn(2, 4, dtype=torch.bfloat16)
    expected = gate(h, h, gate.query_term(h, h))
    gate.to(torch.bfloat16)
    actual = gate(h, h, gate.query_term(h, h))
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, **tolerance(1, torch.bfloat16))  # the weights rounded to bf16


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    gate = FusionGate(hidden_size=8, rank=4, dropout=0.5)
    h = torch.randn(4, 8)
    query = gate.query_term(h, h)
    gate.eval()
    assert torch.equal(gate(h, h, query), gate(h, h, query))
    gate.train()
    assert not torch.equal(gate(h, h, query), gate(h, h, query))
