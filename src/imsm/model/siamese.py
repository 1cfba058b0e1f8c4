"""`IMSMModel`: one peft model seen two ways, frozen (M) and tuned (M'), fused by a gate.

Equations (paper §3): h_M, h_M' are the last-layer states after the final norm (eq. 2); the
query memories q_M, q_M' are their means over the prompt tokens (eq. 3); the gate g mixes them
per position and feature (eq. 4); h_N = g * h_M + (1 - g) * h_M' feeds the frozen model's
output head (eq. 5-6); training minimises cross-entropy on the response tokens (eq. 7). Eq. 2-6
are `BranchModel` (`imsm.model.branch_model`); `forward` adds eq. 7.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from imsm.model.branch_model import IGNORE_INDEX, BranchModel, FrozenMemory, resolve_query_mask
from imsm.model.decode import DecodingMixin
from imsm.model.persist import PersistMixin
from imsm.model.trainer_compat import TrainerCompatMixin

__all__ = ["IGNORE_INDEX", "FrozenMemory", "IMSMModel", "IMSMOutput"]


@dataclass
class IMSMOutput(ModelOutput):
    """What `IMSMModel.forward` returns: a transformers `ModelOutput`, so `out.loss`, `out["loss"]`
    and `out[0]` (the first field that is not None) all work, as transformers' Trainer expects.

    Attributes:
        loss: Mean cross-entropy over label tokens, when labels were given.
        logits: Fused logits [B, T, V], unless `return_logits=False`.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class IMSMModel(DecodingMixin, PersistMixin, TrainerCompatMixin, BranchModel):
    """The siamese model: a peft model whose frozen and tuned views are fused before the head.

    Build it with `get_imsm_model` or `IMSMModel.from_pretrained`. Trainable parameters are the
    peft parameters and the gate's `W_A`, `W_B`; the base weights exist once and stay frozen.
    The two branches and their fusion come from `BranchModel` (`imsm.model.branch_model`), cached
    decoding and scoring (`generate`, `score_continuations`) from `DecodingMixin`
    (`imsm.model.decode`), `save_pretrained` and `from_pretrained` from `PersistMixin`
    (`imsm.model.persist`), and what transformers' Trainer calls from `TrainerCompatMixin`.
    """

    def parameter_group(self, name: str) -> str:
        """ "gate", "peft" or "base", decided by the parameter's name alone (as peft's `lora_`
        prefix does), so optimiser groups, saving and the frozen-base check agree."""
        if name.startswith("gate."):
            return "gate"
        tuner_prefix = getattr(self.peft_model.base_model, "prefix", None) if self.has_adapter else None
        if (tuner_prefix and tuner_prefix in name) or "modules_to_save" in name:
            return "peft"
        return "base"

    def trainable_parameter_count(self) -> tuple[int, int]:
        """(trainable, total) parameter counts; the base weights are counted once."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.trainable_parameter_count()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool = True,
        frozen_memory: FrozenMemory | None = None,
    ) -> IMSMOutput:
        """Fused logits for every position, and the loss on labelled tokens.

        Args:
            input_ids: [B, T], left or right padded.
            attention_mask: [B, T], 1 for real tokens; all ones if omitted.
            query_mask: [B, T], true on prompt tokens. Defaults: the attended tokens whose label
                is -100 when labels are given, else every attended token.
            labels: [B, T], aligned with `input_ids` (shifted inside, as in transformers), -100
                where no loss is taken.
            return_logits: Set False when only the loss is needed: the gate and the head then
                run only at labelled positions, never building [B, T, V] logits.
            frozen_memory: The frozen branch's states for this batch from `frozen_memory()`,
                cached by the training loop so the frozen model runs once per example, not once
                per epoch. Needs labels and `return_logits=False`.
        """
        self.router.check_unmerged()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if frozen_memory is not None and (labels is None or return_logits):
            raise ValueError("frozen_memory serves the loss only: pass labels and return_logits=False")
        query_mask = resolve_query_mask(attention_mask, query_mask, labels)
        run_frozen = None if frozen_memory is None else False  # the training loop's cache stands in for h_M
        states = self.branch_states(input_ids, attention_mask, query_mask, run_frozen)
        loss = logits = None
        if return_logits:
            logits = self.fused_logits(states).logits  # [B, T, V]
        if labels is not None:
            targets = labels[:, 1:]  # position t predicts token t + 1
            rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)  # [N], [N]
            if logits is not None:
                selected = logits[rows, cols]  # [N, V]
            else:
                if frozen_memory is not None and self.imsm_config.is_siamese:
                    # The cached h_M holds the labelled positions only; put them where they belong.
                    frozen = states.tuned.new_zeros(states.tuned.shape, dtype=frozen_memory.hidden.dtype)
                    frozen[rows, cols] = frozen_memory.hidden  # [B, T, d]
                    states.frozen, states.query_frozen = frozen, frozen_memory.query
                selected = self.fused_logits(states, (rows, cols)).logits  # [N, V]
            loss = F.cross_entropy(selected.float(), targets[rows, cols])
        return IMSMOutput(loss=loss, logits=logits)
