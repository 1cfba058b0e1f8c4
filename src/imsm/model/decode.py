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
import copy
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass
class TargetScores:
    """What one teacher-forced target reads, taken from the prompt's prefill (`generate_and_score`).

    Attributes:
        log_probs: per row, log p of each target token given the prompt and the tokens before
            it, fp32 [L_i].
        first_log_probs: log-distribution of each row's first answer token, fp32 [B, V].
        frozen_weights: per row, the gate's mean weight on the frozen branch over the positions
            that predict the target; None for models without a gate.
    """

    log_probs: list[torch.Tensor]
    first_log_probs: torch.Tensor
    frozen_weights: list[float | None]


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
    return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id)[0]


@torch.no_grad()
def generate_and_score(
    model: IMSMModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    targets: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> tuple[torch.Tensor, TargetScores]:
    """`generate`, plus the teacher-forced scores of a given target after each prompt.

    Evaluation wants both the greedy answer and the gold answer's likelihood. Both start from the
    same prompt, so the prompt is encoded once: after prefill the targets (one per row, at least
    one token each) run through the cache, the cache is cut back to the prompt, and decoding goes
    on exactly as `generate` would. The answers are `generate`'s; the scores equal a separate
    teacher-forced pass over prompt + target.
    """
    if len(targets) != input_ids.shape[0] or any(len(t) == 0 for t in targets):
        raise ValueError("generate_and_score needs one non-empty target per prompt")
    ids, scores = _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, targets)
    return ids, scores


def _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, targets=None):
    """Prefill, optionally score `targets` from the prompt's cache, then decode greedily."""
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
    scores = None

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
        last = hidden[:, -1]  # [copies*B, d]
        position = positions[:, -1:]  # [entering*B, 1]
        if targets is not None:
            # Full-attention transformers caches are cut back in place; a sliding-window layer may
            # refuse to roll back once its window is full, so those (and unknown caches) are copied.
            croppable = hasattr(cache, "crop") and not any(getattr(cache, "is_sliding", None) or ())
            scoring_cache = cache if croppable else copy.deepcopy(cache)
            scores = _score_from_cache(
                model, scoring_cache, mask, position, last, query_term, targets, entering, branch
            )
            added = max(len(t) for t in targets) - 1  # target tokens fed through the cache
            if croppable and added:
                cache.crop(-added)  # back to the prompt alone (a negative count in every version)

        unfinished = torch.ones(B, dtype=torch.bool, device=input_ids.device)
        new_tokens = []
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
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1), scores


_LOGIT_SLICE = 2048  # target positions whose logits are held at once


def _score_from_cache(model, cache, mask, position, last, query_term, targets, entering, branch) -> TargetScores:
    """Teacher-forced log-probabilities of `targets` after the prefilled prompts in `cache`.

    Position j of a target is predicted by the prompt's last state (j = 0) or by target token
    j - 1, so only the first L - 1 target tokens run through the model: a one-token answer
    ("yes") costs no forward at all.
    """
    B = len(targets)
    L = max(len(t) for t in targets)
    device = mask.device
    target_ids = torch.zeros((B, L), dtype=torch.long, device=device)
    target_mask = torch.zeros((B, L), dtype=torch.bool, device=device)
    for row, ids in enumerate(targets):  # right padding: a row's pads follow its last token
        target_ids[row, : len(ids)] = torch.tensor(list(ids), device=device)
        target_mask[row, : len(ids)] = True
    states = last[:, None]  # [copies*B, 1, d]
    if L > 1:
        fed = target_ids[:, : L - 1].repeat(entering, 1)  # [entering*B, L-1]
        fed_mask = torch.cat([mask, target_mask[:, : L - 1].to(mask.dtype).repeat(entering, 1)], dim=1)
        fed_positions = position + torch.arange(1, L, device=device)  # [entering*B, L-1]
        output = model.branch_hidden_states(fed, fed_mask, branch, fed_positions, cache=cache, use_cache=True)
        states = torch.cat([states, output.last_hidden_state], dim=1)  # [copies*B, L, d]
    rows, cols = target_mask.nonzero(as_tuple=True)  # [N] row-major: each row's targets in order
    tuned = states[-B:][rows, cols]  # [N, d]
    frozen = states[:B][rows, cols] if model.imsm_config.is_siamese else None
    selected_query = None if query_term is None else query_term[rows]  # [N, r]
    fused = fuse(model.fusion, model.gate, frozen, tuned, selected_query)  # [N, d]
    gold = target_ids[rows, cols]  # [N]
    counts = [len(t) for t in targets]
    first_rows = torch.tensor([sum(counts[:row]) for row in range(B)], device=device)  # [B] index in N
    # Logits in slices: long targets (GSM8K's worked answers) times a 50k vocabulary would
    # otherwise hold gigabytes at once.
    token_log_probs = torch.empty(len(gold), dtype=torch.float32, device=device)  # [N]
    first_log_probs = None  # [B, V]
    for start in range(0, len(gold), _LOGIT_SLICE):
        end = min(start + _LOGIT_SLICE, len(gold))
        log_probs = torch.log_softmax(model.output_head(fused[start:end]).float(), dim=-1)  # [n, V]
        token_log_probs[start:end] = log_probs.gather(1, gold[start:end, None])[:, 0]
        if first_log_probs is None:
            first_log_probs = torch.empty((B, log_probs.shape[1]), dtype=torch.float32, device=device)
        here = (first_rows >= start) & (first_rows < end)  # rows whose first target token is in the slice
        first_log_probs[here] = log_probs[first_rows[here] - start]
    frozen_weights: list[float | None] = [None] * B
    if model.gate is not None:
        g = model.gate(frozen, tuned, selected_query).float().mean(dim=-1)  # [N]
        frozen_weights = [float(part.mean()) for part in torch.split(g.cpu(), counts)]
    return TargetScores(
        log_probs=list(torch.split(token_log_probs.cpu(), counts)),
        first_log_probs=first_log_probs.cpu(),
        frozen_weights=frozen_weights,
    )


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
