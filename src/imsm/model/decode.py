"""Greedy decoding for `IMSMModel` (paper Algorithm 1), with one KV cache for both branches.

The frozen and tuned branches run as one doubled batch [frozen rows | tuned rows] through the
shared weights: each step reads every base weight once, the adapter touches the tuned half
only, and the cache holds 2B rows. When the adapter leaves the lower layers alone, those run on
B rows only and the batch doubles above them (`imsm.model.shared_layers`). The query memory is
taken once, at prefill; the gate and the head run on the last position only. `naive_generate`
is the slow reference: both branches recomputed from scratch at every step, as in the authors'
decoder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from imsm.model.gate import fuse, masked_mean
from imsm.model.shared_layers import doubled_from
from imsm.model.siamese import IMSMModel, position_ids_from_mask


def to_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every row's padding to the left, so new tokens append at a common last column."""
    if bool(attention_mask[:, -1].all()):
        return input_ids, attention_mask
    # A stable sort on "is real token" puts pads first and keeps the tokens' order.
    order = torch.sort(attention_mask.long(), dim=1, stable=True).indices  # [B, T]
    return input_ids.gather(1, order), attention_mask.gather(1, order)


def _eos_ids(model: IMSMModel, eos_token_id: int | Sequence[int] | None) -> list[int]:
    if eos_token_id is None:
        generation_config = getattr(model.causal_lm, "generation_config", None)
        eos_token_id = getattr(generation_config, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = model.config.eos_token_id
    if eos_token_id is None:
        return []
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)


def _prepare(model: IMSMModel, input_ids, attention_mask, eos_token_id, pad_token_id):
    """Shared by both decoders: left padding, the stop ids, and the id written after a stop."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    input_ids, attention_mask = to_left_padding(input_ids, attention_mask)
    eos_ids = _eos_ids(model, eos_token_id)
    if pad_token_id is None:
        pad_token_id = eos_ids[0] if eos_ids else 0
    return input_ids, attention_mask, eos_ids, pad_token_id


@torch.no_grad()
def generate(
    model: IMSMModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 64,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Greedy decoding; returns [B, T + new] ids like transformers' `generate`.

    Args:
        model: The siamese model.
        input_ids: [B, T] prompts; any padding side (right padding is moved to the left).
        attention_mask: [B, T]; all ones if omitted.
        max_new_tokens: Cap on generated tokens.
        eos_token_id: Stop token(s); defaults to the model's generation config.
        pad_token_id: Written after a row has finished; defaults to the first EOS id.

    A row stops at its first EOS; decoding stops when every row has, or at the cap.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    model.router.check_unmerged()
    input_ids, attention_mask, eos_ids, pad_token_id = _prepare(
        model, input_ids, attention_mask, eos_token_id, pad_token_id
    )
    eos = torch.tensor(eos_ids, device=input_ids.device, dtype=input_ids.dtype)

    B = input_ids.shape[0]
    siamese = model.imsm_config.is_siamese
    copies = 2 if siamese else 1  # doubled batch: rows [0, B) frozen, [B, 2B) tuned
    branch = "split" if siamese else "tuned"
    # With k shared lower layers, B rows enter the stack and double at layer k: the layers below
    # k run, and keep keys and values, for B rows, since both halves would hold the same there.
    shared = model.shared_layer_count(doubled_batch=True)
    entering = 1 if shared else copies  # copies of each prompt entering the stack
    sharing = doubled_from(model.decoder_layers, shared, B) if shared else contextlib.nullcontext()
    mask = attention_mask.repeat(entering, 1)  # [entering*B, T]
    positions = position_ids_from_mask(mask)  # [entering*B, T]

    with sharing:
        # Prefill: both branches over the prompt, one forward.
        output = model.branch_hidden_states(input_ids.repeat(entering, 1), mask, branch, positions, use_cache=True)
        cache = output["cache"] if "cache" in output else output["past_key_values"]
        hidden = output.last_hidden_state  # [copies*B, T, d]
        query_term = None
        if model.gate is not None:
            # The query memory (eq. 3): mean over the whole prompt, padding excluded, computed once.
            query_term = model.gate.query_term(
                masked_mean(hidden[:B], attention_mask), masked_mean(hidden[B:], attention_mask)
            )  # [B, r]

        unfinished = torch.ones(B, dtype=torch.bool, device=input_ids.device)
        new_tokens = []
        last = hidden[:, -1]  # [copies*B, d]
        position = positions[:, -1:]  # [entering*B, 1]
        for _ in range(max_new_tokens):
            frozen_last = last[:B] if siamese else None
            fused = fuse(model.fusion, model.gate, frozen_last, last[-B:], query_term)  # [B, d]
            token = model.output_head(fused).argmax(dim=-1)  # [B]
            token = torch.where(unfinished, token, torch.full_like(token, pad_token_id))
            new_tokens.append(token)
            if eos.numel():
                unfinished &= ~torch.isin(token, eos)
            if not bool(unfinished.any()) or len(new_tokens) == max_new_tokens:
                break
            # The same greedy token goes to both halves of the doubled batch.
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            position = position + 1
            step_ids = token.repeat(entering)[:, None]  # [entering*B, 1]
            output = model.branch_hidden_states(step_ids, mask, branch, position, cache=cache, use_cache=True)
            cache = output["cache"] if "cache" in output else output["past_key_values"]
            last = output.last_hidden_state[:, -1]  # [copies*B, d]
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)


@torch.no_grad()
def naive_generate(
    model: IMSMModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 64,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """The reference decoder: no cache, both branches recomputed over the whole sequence at
    every step through `IMSMModel.forward`. Slow by design; used to check `generate` and as the
    baseline that shows what the cache buys. The query is the original prompt throughout.
    """
    input_ids, attention_mask, eos_ids, pad_token_id = _prepare(
        model, input_ids, attention_mask, eos_token_id, pad_token_id
    )
    ids, mask, query_mask = input_ids, attention_mask, attention_mask.bool()
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits = model(ids, attention_mask=mask, query_mask=query_mask).logits  # [B, T, V]
        token = logits[:, -1].argmax(dim=-1)
        token = torch.where(unfinished, token, torch.full_like(token, pad_token_id))
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        query_mask = torch.cat([query_mask, query_mask.new_zeros(query_mask.shape[0], 1)], dim=1)
        for eos in eos_ids:
            unfinished &= token != eos
        if not bool(unfinished.any()):
            break
    return ids
