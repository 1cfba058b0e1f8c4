"""`BranchModel`: one peft model run as two branches, frozen (M) and tuned (M'), and fused before
the head: everything from tokens to fused logits (paper eq. 2-6), with and without a KV cache.

`IMSMModel` builds on it (loss, decoding, saving); the decoder (`imsm.model.decode`) reads only the
two steps defined here, `cached_branch_states` and `fused_logits`.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from imsm.config import IMSMConfig
from imsm.model.branches import FROZEN, SPLIT, TUNED, BranchRouter, install_router
from imsm.model.gate import FusionGate, fuse, interpolate, masked_mean
from imsm.model.shared_layers import (
    DOUBLING_ATTENTION,
    capture_input,
    doubled_from,
    find_decoder_layers,
    first_adapted_layer,
    start_from,
    trains_like_it_evaluates,
)
from imsm.model.states import BranchStates, FusedLogits

IGNORE_INDEX = -100


@dataclass
class FrozenMemory:
    """What training needs of the frozen branch, which depends on the input tokens alone.

    Attributes:
        query: q_M, the frozen query memory, [B, d], fp32 as `masked_mean` makes it: the gate reads
            the uncached q_M in fp32, so a cached one rounded to a bf16 model's dtype would train
            on other numbers than the uncached computation.
        hidden: h_M at the labelled positions (those predicting a label), row-major, [N, d].
    """

    query: torch.Tensor
    hidden: torch.Tensor


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore padding, so a left-padded row sees the same positions as unpadded."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def resolve_query_mask(
    attention_mask: torch.Tensor, query_mask: torch.Tensor | None, labels: torch.Tensor | None
) -> torch.Tensor:
    """Which tokens are the prompt (query), padding excluded.

    Given explicitly, or else the attended tokens without a label, or else every attended token.
    """
    attended = attention_mask.bool()
    if query_mask is not None:
        return query_mask.bool() & attended
    if labels is not None:
        return (labels == IGNORE_INDEX) & attended
    return attended


class BranchModel(nn.Module):
    """A peft model seen two ways and fused by a gate: the two branches and their fusion.

    The trainable parameters are the peft parameters and the gate's `W_A`, `W_B`; the base
    weights exist once and stay frozen.
    """

    def __init__(self, peft_model: PeftModel | nn.Module, imsm_config: IMSMConfig):
        super().__init__()
        if not isinstance(peft_model, PeftModel) and imsm_config.is_siamese:
            raise ValueError("a model without a peft adapter has no tuned branch; use IMSMConfig(fusion='none')")
        # The peft model, or the bare causal LM for fusion "none" without an adapter (the
        # "Original" baseline run through the same code).
        self.peft_model = peft_model
        self.imsm_config = imsm_config
        self.router: BranchRouter = install_router(peft_model)
        model = self.causal_lm
        backbone = model.base_model  # the decoder stack, ending in the final norm
        head = model.get_output_embeddings()
        if backbone is model or head is None:
            raise TypeError(f"{type(model).__name__} has no separate backbone and output head")
        # Plain attributes, not submodules: they are already inside peft_model, and registering
        # them twice would duplicate every base weight in state_dict().
        object.__setattr__(self, "backbone", backbone)
        object.__setattr__(self, "head", head)
        # Eq. 6 uses the frozen model's head; it differs from the tuned one only if the peft
        # method adapts the head itself.
        object.__setattr__(self, "frozen_head", head.get_base_layer() if isinstance(head, BaseTunerLayer) else head)
        self.hidden_size = self.frozen_head.weight.shape[-1]
        parameters = inspect.signature(self.backbone.forward).parameters
        self._takes_position_ids = "position_ids" in parameters
        # transformers renamed `past_key_values` to `cache` in 5.x; accept either.
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        # Shared lower layers (imsm/model/shared_layers.py): decoder layers below the first
        # adapted one give both branches the same states, so they run once. The switch exists
        # for benchmarks and debugging; results are the same either way.
        self.share_lower_layers = True
        layers = find_decoder_layers(backbone, getattr(model.config, "num_hidden_layers", None))
        object.__setattr__(self, "decoder_layers", layers)  # a handle, like backbone: not registered
        self.first_adapted_layer = 0 if layers is None else first_adapted_layer(layers, self.router.layers, head)
        self._lower_layers_train_like_eval = layers is not None and trains_like_it_evaluates(
            backbone, layers, self.first_adapted_layer
        )
        self.gate: FusionGate | None = None
        if imsm_config.has_gate:
            self.gate = FusionGate(
                self.hidden_size,
                imsm_config.gate_rank,
                query_aware=imsm_config.fusion == "imsm",
                dropout=imsm_config.gate_dropout,
            ).to(self.frozen_head.weight.device)

    # ----------------------------------------------------------------------------------------
    # Properties that mirror transformers/peft so the model drops into existing code.

    @property
    def causal_lm(self) -> nn.Module:
        """The transformers model (adapted in place by peft when there is an adapter)."""
        return self.peft_model.get_base_model() if isinstance(self.peft_model, PeftModel) else self.peft_model

    @property
    def has_adapter(self) -> bool:
        return isinstance(self.peft_model, PeftModel)

    @property
    def config(self):
        return self.causal_lm.config

    @property
    def device(self) -> torch.device:
        return self.frozen_head.weight.device

    @property
    def fusion(self) -> str:
        return self.imsm_config.fusion

    def shared_layer_count(self, doubled_batch: bool = False) -> int:
        """k: how many lower decoder layers both branches share in the next forward; 0 for none.

        Nothing is shared when the switch `share_lower_layers` is off, without a frozen branch,
        when the adapter touches layer 0 or anything before the stack, or in training mode when
        the layers below k have dropout (the frozen branch never sees dropout, the tuned one
        would). `doubled_batch`: for one call whose batch doubles at layer k (decoding), which
        also needs an attention implementation whose arguments can be repeated by rows.
        """
        k = self.first_adapted_layer
        if not (self.share_lower_layers and self.imsm_config.is_siamese and 0 < k < len(self.decoder_layers or ())):
            return 0
        if self.causal_lm.training and not self._lower_layers_train_like_eval:
            return 0
        if doubled_batch and getattr(self.config, "_attn_implementation", None) not in DOUBLING_ATTENTION:
            return 0
        return k

    # ----------------------------------------------------------------------------------------
    # The two branches.

    def branch_hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        branch: str,
        position_ids: torch.Tensor | None = None,
        cache=None,
        use_cache: bool = False,
    ):
        """Run the backbone as one branch (FROZEN, TUNED, or SPLIT for a doubled batch).

        Returns the backbone's output: `last_hidden_state` [rows, T, d] after the final norm
        (what the head reads) and, with `use_cache`, the cache.
        """
        route = {FROZEN: self.router.frozen, TUNED: self.router.tuned, SPLIT: self.router.split}[branch]
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache}
        if self._takes_position_ids:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask) if position_ids is None else position_ids
        if cache is not None:
            kwargs[self.cache_argument] = cache
        with route():
            return self.backbone(**kwargs)

    def _output_head(self, hidden: torch.Tensor, own_fusion: bool = True) -> torch.Tensor:
        """Logits from fused states: the frozen head (eq. 6), or, for the model's own fusion
        "none", the tuned one (a vanilla adapter may adapt the head too)."""
        if self.fusion == "none" and own_fusion:
            with self.router.tuned():
                return self.head(hidden)
        return self.frozen_head(hidden)

    @contextlib.contextmanager
    def _frozen_model_in_eval_mode(self):
        """The frozen model M is the base model as it is deployed: no dropout, ever (as in the
        authors' code), so its states are deterministic and can be cached."""
        was_training = self.causal_lm.training
        self.causal_lm.train(False)
        try:
            yield
        finally:
            self.causal_lm.train(was_training)

    def frozen_hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """h_M [B, T, d], without gradient, dropout or stored activations."""
        with torch.no_grad(), self._frozen_model_in_eval_mode():
            return self.branch_hidden_states(input_ids, attention_mask, FROZEN).last_hidden_state

    def frozen_memory(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, query_mask=None
    ) -> FrozenMemory:
        """The frozen branch's share of a training batch, to compute once and reuse every epoch."""
        hidden = self.frozen_hidden_states(input_ids, attention_mask)  # [B, T, d]
        rows, cols = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
        query = masked_mean(hidden, resolve_query_mask(attention_mask, query_mask, labels))  # [B, d]
        return FrozenMemory(query=query, hidden=hidden[rows, cols])

    def branch_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        query_mask: torch.Tensor,
        run_frozen: bool | None = None,
    ) -> BranchStates:
        """Both branches over whole sequences: h_M (without gradient), h_M' and their query memories.

        Args:
            input_ids, attention_mask: [B, T].
            query_mask: [B, T], true on the prompt tokens (eq. 3), padding already excluded.
            run_frozen: None: when the fusion reads the frozen branch. False: not at all (the
                training loop holds its states already; `frozen` and `query_frozen` are then
                None). True: also for fusion "none", whose frozen branch is the base model
                (what drift from the base model compares against), at the cost of one more
                branch, never of another model.
        """
        hidden_frozen = query_frozen = query_tuned = None
        if run_frozen is None:
            run_frozen = self.imsm_config.is_siamese
        run_frozen = run_frozen and self.has_adapter  # without an adapter the tuned branch is the base model
        shared = self.shared_layer_count() if run_frozen else 0
        if shared:
            # The frozen branch runs whole and leaves layer k's input behind; the tuned branch
            # starts there. Nothing below k is trainable, so the tuned branch loses no gradient.
            with capture_input(self.decoder_layers[shared]) as captured:
                hidden_frozen = self.frozen_hidden_states(input_ids, attention_mask)  # [B, T, d]
            with start_from(self.decoder_layers, shared, captured["hidden"]):
                hidden_tuned = self.branch_hidden_states(input_ids, attention_mask, TUNED).last_hidden_state
        else:
            hidden_tuned = self.branch_hidden_states(input_ids, attention_mask, TUNED).last_hidden_state  # [B, T, d]
            if run_frozen:
                hidden_frozen = self.frozen_hidden_states(input_ids, attention_mask)  # [B, T, d]
        if self.gate is not None:  # only the gate reads the query memories
            query_tuned = masked_mean(hidden_tuned, query_mask)  # [B, d]
            if hidden_frozen is not None:
                query_frozen = masked_mean(hidden_frozen, query_mask)  # [B, d]
        return BranchStates(hidden_frozen, hidden_tuned, query_frozen, query_tuned)

    def cached_branch_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cache=None,
        query_mask: torch.Tensor | None = None,
        branches: str = SPLIT,
    ) -> tuple[BranchStates, Any]:
        """Both branches over R rows in one forward with a KV cache (decoding and prefill scoring).

        The rows run as a doubled batch [frozen rows | tuned rows] through the shared weights:
        each base weight is read once, the adapter touches the tuned half only, and the cache
        holds 2R rows. When the adapter leaves the lower k layers alone, those run (and cache) on
        R rows and the batch doubles at layer k (`imsm.model.shared_layers`). Without a frozen
        branch this is the tuned model alone.

        Args:
            input_ids: [R, t], the new tokens.
            attention_mask: [R, past + t], the cached tokens' mask followed by the new ones'.
            position_ids: [R, t]; from the mask when None (a prefill).
            cache: The cache of earlier calls on these rows, or None for a prefill.
            query_mask: [R, t], the prompt (eq. 3), at prefill: the query memories are taken
                from it once and reused for every later position. Padding must be excluded.
            branches: SPLIT for both (the model's own: the tuned one alone for fusion "none");
                TUNED for the tuned branch alone, when the frozen branch's states are at hand
                already (`imsm.evaluation.frozen_states`); FROZEN for the frozen branch alone,
                which computes them. The cache then holds R rows of that branch, and `tuned`
                (or `frozen`) is None.

        Returns:
            (states [R, t, d] per branch, with query memories when `query_mask` was given and
            there is a gate; the cache to pass to the next call).
        """
        if cache is None:
            self.router.check_unmerged()
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        if branches not in (SPLIT, TUNED, FROZEN):
            raise ValueError(f"branches must be {SPLIT!r}, {TUNED!r} or {FROZEN!r}, got {branches!r}")
        R = input_ids.shape[0]
        both = self.imsm_config.is_siamese and branches == SPLIT
        shared = self.shared_layer_count(doubled_batch=True) if both else 0
        entering = 2 if both and not shared else 1  # copies of each row entering the stack
        sharing = doubled_from(self.decoder_layers, shared, R) if shared else contextlib.nullcontext()
        with sharing:
            output = self.branch_hidden_states(
                input_ids.repeat(entering, 1),
                attention_mask.repeat(entering, 1),
                SPLIT if both else (FROZEN if branches == FROZEN else TUNED),
                position_ids.repeat(entering, 1),
                cache=cache,
                use_cache=True,
            )
        cache = output[self.cache_argument] if self.cache_argument in output else output["past_key_values"]
        hidden = output.last_hidden_state  # [copies*R, t, d]: rows [0, R) frozen, [R, 2R) tuned
        if branches == FROZEN:
            states = BranchStates(hidden, None)
        else:
            states = BranchStates(hidden[:R] if both else None, hidden[-R:])
        if query_mask is not None and self.gate is not None:
            if states.frozen is not None:
                states.query_frozen = masked_mean(states.frozen, query_mask)  # [R, d]
            if states.tuned is not None:
                states.query_tuned = masked_mean(states.tuned, query_mask)  # [R, d]
        return states, cache

    def fused_logits(
        self,
        states: BranchStates,
        positions: tuple[torch.Tensor, torch.Tensor] | None = None,
        gate: FusionGate | float | None = None,
    ) -> FusedLogits:
        """Gate, fusion and output head (eq. 4-6): the one place the two branches become logits.

        Args:
            states: Both branches' last hidden states [B, T, d] and query memories [B, d].
            positions: (rows [N], cols [N]) to compute only there -> logits [N, V]; all
                positions -> [B, T, V] when None.
            gate: Another gate in place of the model's own (gate inspection's stand-ins, the
                base model's distribution): a `FusionGate` (e.g. the initial one), or a constant
                g (0: the tuned branch alone, 0.5: a fixed mix, 1: the base model). Needs the
                frozen branch's states; the head is then always the frozen model's (eq. 6).

        Returns:
            The logits and the gate values g [..., d] (fp32) that weighted the frozen branch,
            None for fusions without a gate.
        """
        frozen, tuned = states.frozen, states.tuned
        rows = None
        if positions is not None:
            rows, cols = positions
            tuned = tuned[rows, cols]  # [N, d]
            frozen = None if frozen is None else frozen[rows, cols]  # [N, d]
        if gate is not None and frozen is None:
            raise ValueError("a stand-in gate needs the frozen branch; this model has none (fusion 'none')")
        if gate is not None and not isinstance(gate, FusionGate):
            g = torch.full(tuned.shape, float(gate), dtype=torch.float32, device=tuned.device)
            return FusedLogits(self._output_head(interpolate(frozen, tuned, g), own_fusion=False), g)
        gate = self.gate if gate is None else gate
        query_term = None
        if gate is not None and gate.query_aware:
            # Per sequence, then per position: [B, r] -> [N, r] or [B, 1, r].
            query_term = gate.query_term(states.query_frozen, states.query_tuned)
            query_term = query_term[:, None, :] if rows is None else query_term[rows]
        own = gate is self.gate
        fused, g = fuse(self.fusion if own else "imsm", gate, frozen, tuned, query_term)  # [..., d]
        return FusedLogits(self._output_head(fused, own_fusion=own), g)
