"""The query-aware low-rank gate (paper eq. 4) and the fusion of the two branches (eq. 5).

Shapes: B batch, T positions, d hidden size, r gate rank. Hidden states are the last layer's,
after the final norm, i.e. exactly what the output head reads.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` [B, T, d] over the positions where `mask` [B, T] is true -> [B, d] (fp32).

    This is the query memory of eq. 3: prompt tokens only, padding never counted.
    """
    weights = mask.to(torch.float32).unsqueeze(-1)  # [B, T, 1]
    total = (hidden.float() * weights).sum(dim=1)  # [B, d]
    # A row with no query token would divide by zero; its mean is defined as 0.
    return total / weights.sum(dim=1).clamp(min=1.0)


class FusionGate(nn.Module):
    """g = sigmoid(concat(q_M, h_M, h_M', q_M') @ W_A @ W_B), no bias (eq. 4).

    `W_A` [n*d, r] and `W_B` [r, d] are stored in the paper's orientation, so the saved tensors
    read like the equation. With `query_aware=False` the input is concat(h_M, h_M') (the
    "w/o query" ablation) and W_A is [2d, r]. Parameters stay fp32 whatever the model's dtype,
    as in the authors' code; the gate is tiny, so this costs nothing and avoids bf16 rounding
    in the sigmoid.
    """

    def __init__(self, hidden_size: int, rank: int, query_aware: bool = True, dropout: float = 0.0):
        super().__init__()
        self.hidden_size = hidden_size
        self.query_aware = query_aware
        n_inputs = 4 if query_aware else 2
        # fp32 named explicitly: under torch.set_default_dtype(torch.bfloat16) the gate would
        # otherwise be built in bf16.
        self.W_A = nn.Parameter(torch.empty(n_inputs * hidden_size, rank, dtype=torch.float32))
        self.W_B = nn.Parameter(torch.empty(rank, hidden_size, dtype=torch.float32))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default init (kaiming-uniform, a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
        # which is what the authors' Linear layers started from.
        for weight in (self.W_A, self.W_B):
            bound = 1.0 / math.sqrt(weight.shape[0])
            nn.init.uniform_(weight, -bound, bound)

    def _block(self, index: int) -> torch.Tensor:
        """Rows of W_A that multiply the index-th d-wide part of the concatenated input."""
        d = self.hidden_size
        # .float(): the arithmetic stays fp32 even after a caller's model.to(torch.bfloat16).
        return self.W_A[index * d : (index + 1) * d].float()  # [d, r]

    def query_term(self, query_frozen: torch.Tensor, query_tuned: torch.Tensor) -> torch.Tensor | None:
        """The query memories' share of concat(...) @ W_A, computed once per sequence -> [B, r].

        concat(q_M, h_M, h_M', q_M') @ W_A splits into four d-wide blocks; the two query blocks
        do not change along the sequence, so decoding computes them once at prefill.
        """
        if not self.query_aware:
            return None
        return query_frozen.float() @ self._block(0) + query_tuned.float() @ self._block(3)

    def forward(
        self, hidden_frozen: torch.Tensor, hidden_tuned: torch.Tensor, query_term: torch.Tensor | None
    ) -> torch.Tensor:
        """Gate values in (0, 1) for every position and feature.

        Args:
            hidden_frozen: h_M, [..., d].
            hidden_tuned: h_M', [..., d].
            query_term: `query_term(...)` broadcastable to [..., r] (e.g. [B, 1, r] for [B, T, d]
                inputs), or None for the no-query gate.

        Returns:
            g, [..., d], fp32.
        """
        if self.query_aware:
            projected = hidden_frozen.float() @ self._block(1) + hidden_tuned.float() @ self._block(2)
            projected = projected + query_term  # [..., r]
        else:
            projected = hidden_frozen.float() @ self._block(0) + hidden_tuned.float() @ self._block(1)
        # Dropout after both projections, as in the authors' code (identity in eval mode).
        logits = self.dropout(self.dropout(projected) @ self.W_B.float())  # [..., d]
        return torch.sigmoid(logits)


def interpolate(hidden_frozen: torch.Tensor, hidden_tuned: torch.Tensor, g: torch.Tensor | float) -> torch.Tensor:
    """h_N = g * h_M + (1 - g) * h_M' (eq. 5), in the tuned branch's dtype.

    Written as h_M' + g * (h_M - h_M'), the same value with one multiply fewer, and exactly h_M'
    when the two branches agree (as they do at initialisation).
    """
    tuned = hidden_tuned.float()
    return (tuned + g * (hidden_frozen.float() - tuned)).to(hidden_tuned.dtype)


def fuse(
    fusion: str,
    gate: FusionGate | None,
    hidden_frozen: torch.Tensor | None,
    hidden_tuned: torch.Tensor,
    query_term: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused state h_N for a fusion, and the gate values g that made it (None without a gate).

    "imsm"/"no-query": the gate (eq. 4-5); "mean": the fixed 50/50 mix (the "w/o gate"
    ablation); "none": the tuned branch alone.
    """
    if fusion == "none":
        return hidden_tuned, None
    if fusion == "mean":
        return (0.5 * (hidden_frozen.float() + hidden_tuned.float())).to(hidden_tuned.dtype), None
    g = gate(hidden_frozen, hidden_tuned, query_term)  # [..., d], fp32
    return interpolate(hidden_frozen, hidden_tuned, g), g
