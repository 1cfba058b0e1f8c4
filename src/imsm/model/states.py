"""The small named types that carry the two branches' states and what is read from them.

`BranchStates` is what both branches produce (eq. 2-3): their last hidden states after the final
norm and their query memories. `BranchModel.fused_logits` turns it into `FusedLogits` (eq. 4-6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class BranchStates:
    """Last-layer hidden states of both branches, and their query memories.

    Attributes:
        frozen: h_M, [B, T, d]; None without a frozen branch (fusion "none").
        tuned: h_M', [B, T, d]; None only where the frozen branch ran alone.
        query_frozen: q_M, the mean of h_M over the prompt, [B, d]; None when no gate reads it.
        query_tuned: q_M', [B, d]; None when no gate reads it.
    """

    frozen: torch.Tensor | None
    tuned: torch.Tensor | None
    query_frozen: torch.Tensor | None = None
    query_tuned: torch.Tensor | None = None


@dataclass
class FrozenPromptStates:
    """The frozen branch's share of scoring continuations after one prompt: what
    `IMSMModel.score_continuations` needs of it, to reuse instead of running it again.

    Attributes:
        query: q_M, the mean of h_M over the prompt, [d] (fp32).
        hidden: Per continuation, h_M at the positions that predict its tokens (the prompt's
            last position, then each continuation token but the last), [L, d].
    """

    query: torch.Tensor
    hidden: list[torch.Tensor]


@dataclass
class FusedLogits:
    """Logits of the fused states, and the gate values that weighted the frozen branch.

    Attributes:
        logits: [N, V] at chosen positions, or [B, T, V].
        gate: g, fp32, shaped like the states ([N, d] or [B, T, d]); None without a gate.
    """

    logits: torch.Tensor
    gate: torch.Tensor | None


@dataclass
class ContinuationScores:
    """What `IMSMModel.score_continuations` reads of each continuation, grouped by prompt.

    Attributes:
        log_probs: [prompt][continuation] -> log p of each continuation token given the prompt
            and the tokens before it, fp32 [L].
        frozen_weights: [prompt][continuation] -> the gate's mean weight on the frozen branch
            over the positions that predict the continuation; None without a gate.
        is_greedy: [prompt][continuation] -> whether every token of the continuation is the
            most likely one where it stands (lm-eval's `is_greedy`).
        first_log_probs: [prompt][continuation] -> the log-distribution [V] of the
            continuation's first token, when asked for.
        sequences: [B, T + new] greedy ids, when decoding was asked for.
    """

    log_probs: list[list[torch.Tensor]]
    frozen_weights: list[list[float | None]]
    is_greedy: list[list[bool]] | None = None
    first_log_probs: list[list[torch.Tensor]] | None = None
    sequences: torch.Tensor | None = None

    @classmethod
    def grouped(
        cls,
        per_prompt: Sequence[int],
        log_probs: Sequence[torch.Tensor],
        frozen_weights: Sequence[float | None],
        is_greedy: Sequence[bool],
        first_log_probs: Sequence[torch.Tensor] | None = None,
    ) -> ContinuationScores:
        """The scores of continuations read one per row, grouped by prompt: the first
        `per_prompt[0]` rows are prompt 0's continuations, and so on. The one place scores are grouped."""

        def group(values):
            if values is None:
                return None
            out, start = [], 0
            for count in per_prompt:
                out.append(list(values[start : start + count]))
                start += count
            return out

        return cls(group(log_probs), group(frozen_weights), group(is_greedy), group(first_log_probs))


class SiameseModel(Protocol):
    """What cached inference (`imsm.model.decode`) needs of the model it is mixed into: the two
    steps from tokens to logits (`imsm.model.branch_model.BranchModel`), the wrapped model's
    configs for the stop tokens, and (for the naive reference decoder) `forward`."""

    causal_lm: nn.Module
    config: Any

    def cached_branch_states(
        self, input_ids, attention_mask, position_ids=None, cache=None, query_mask=None, branches=...
    ): ...

    def fused_logits(self, states: BranchStates, positions=None, gate=None) -> FusedLogits: ...

    def __call__(self, input_ids, attention_mask=None, query_mask=None, labels=None, return_logits=True): ...
