"""The small named types that carry the two branches' states and what is read from them.

`BranchStates` is what both branches produce (eq. 2-3): their last hidden states after the final
norm and their query memories. `BranchModel.fused_logits` turns it into `FusedLogits` (eq. 4-6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class BranchStates:
    """Last-layer hidden states of both branches, and their query memories.

    Attributes:
        frozen: h_M, [B, T, d]; None without a frozen branch (fusion "none").
        tuned: h_M', [B, T, d].
        query_frozen: q_M, the mean of h_M over the prompt, [B, d]; None when no gate reads it.
        query_tuned: q_M', [B, d]; None when no gate reads it.
    """

    frozen: torch.Tensor | None
    tuned: torch.Tensor
    query_frozen: torch.Tensor | None = None
    query_tuned: torch.Tensor | None = None


@dataclass
class FusedLogits:
    """Logits of the fused states, and the gate values that weighted the frozen branch.

    Attributes:
        logits: [N, V] at chosen positions, or [B, T, V].
        gate: g, fp32, shaped like the states ([N, d] or [B, T, d]); None without a gate.
    """

    logits: torch.Tensor
    gate: torch.Tensor | None


class SiameseModel(Protocol):
    """What cached inference (`imsm.model.decode`) needs of the model it is mixed into: the two
    steps from tokens to logits (`imsm.model.branch_model.BranchModel`), the wrapped model's
    configs for the stop tokens, and (for the naive reference decoder) `forward`."""

    causal_lm: nn.Module
    config: Any

    def cached_branch_states(self, input_ids, attention_mask, position_ids=None, cache=None, query_mask=None): ...

    def fused_logits(self, states: BranchStates, positions=None, gate=None) -> FusedLogits: ...

    def __call__(self, input_ids, attention_mask=None, query_mask=None, labels=None, return_logits=True): ...
