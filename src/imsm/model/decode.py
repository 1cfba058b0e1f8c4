"""Cached inference, mixed into `IMSMModel` as `DecodingMixin`: decoding (paper Algorithm 1: greedy;
sampling on request) and prefill scoring.

Both start from one prefill of the prompts through `BranchModel.cached_branch_states`: the frozen
and tuned branches run as one doubled batch with one KV cache, and the query memory is taken
there, once. Scoring then runs given continuations through the prompts' cache (several per
prompt side by side, each prompt's cache rows repeated for its continuations) and reads their
log-probabilities (or, given the frozen branch's states from an earlier frozen-only pass,
`frozen_continuation_states`, runs the tuned branch alone); decoding feeds each greedy token to
both halves of the doubled batch (`imsm.model.decoding_step`: a growing cache, or a static one
whose step can be compiled). Every logit comes from `BranchModel.fused_logits`. `naive_generate`
is the slow reference: both branches recomputed from scratch at every step through
`IMSMModel.forward`, as in the authors' decoder.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from imsm.model.branches import FROZEN, SPLIT, TUNED
from imsm.model.decoding_plan import DecodingPlan, plan_decoding
from imsm.model.decoding_step import DecodingStep, compilable, last_positions, static_cache
from imsm.model.gate import masked_mean
from imsm.model.states import BranchStates, ContinuationScores, FrozenPromptStates, SiameseModel


def to_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every row's padding to the left, so new tokens append at a common last column."""
    if bool(attention_mask[:, -1].all()):
        return input_ids, attention_mask
    # A stable sort on "is real token" puts pads first and keeps the tokens' order.
    order = torch.sort(attention_mask.long(), dim=1, stable=True).indices  # [B, T]
    return input_ids.gather(1, order), attention_mask.gather(1, order)


def stop_token_ids(model) -> list[int]:
    """The tokens greedy decoding stops at: the generation config's EOS, else the model config's."""
    generation_config = getattr(model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def _eos_ids(model: SiameseModel, eos_token_id: int | Sequence[int] | None) -> list[int]:
    if eos_token_id is None:
        return stop_token_ids(model.causal_lm)
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)


def _prepare(model: SiameseModel, input_ids, attention_mask, eos_token_id, pad_token_id):
    """Shared by both decoders: left padding, the stop ids, and the id written after a stop."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    input_ids, attention_mask = to_left_padding(input_ids, attention_mask)
    eos_ids = _eos_ids(model, eos_token_id)
    if pad_token_id is None:
        pad_token_id = eos_ids[0] if eos_ids else 0
    return input_ids, attention_mask, eos_ids, pad_token_id


class DecodingMixin:
    """`generate` and `score_continuations` for a model with `cached_branch_states`, `fused_logits`
    and `causal_lm` (`imsm.model.branch_model.BranchModel`), as transformers' `GenerationMixin`
    gives a causal LM its `generate`."""

    @torch.no_grad()
    def generate(
        self: SiameseModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        streamer: BaseStreamer | None = None,
        tokenizer: Any = None,
        **options: Any,
    ) -> torch.Tensor:
        """Decoding with one KV cache for both branches; returns [B, T + new] ids like transformers'.

        Args:
            input_ids: [B, T] prompts; any padding side (right padding is moved to the left).
            attention_mask: [B, T]; all ones if omitted.
            generation_config: A `transformers.GenerationConfig`; greedy, 64 new tokens, if omitted.
            streamer: A transformers streamer; it receives the prompt, then each new token.
            tokenizer: For `stop_strings`.
            options: `GenerationConfig` fields over `generation_config`: max_new_tokens, do_sample,
                temperature, top_k, top_p, min_p, repetition_penalty, eos_token_id (one or several),
                pad_token_id, stop_strings (`imsm.model.decoding_plan` says what is refused and why).

        A row stops at its first stop token (or stop string); decoding stops when every row has, or
        at the cap. Sampling draws from torch's global generator, so `torch.manual_seed` repeats it.
        `cache_implementation="static"` (with `compile_config` / `disable_compile`) fixes the shapes
        so the per-token step can be compiled (`imsm.model.decoding_step`); the tokens are the same.
        """
        plan = plan_decoding(stop_token_ids(self.causal_lm), generation_config, streamer, tokenizer, **options)
        with compilable(self, plan.compiling(self.device)):
            return _run(self, input_ids, attention_mask, None, False, plan).sequences

    @torch.no_grad()
    def score_continuations(
        self: SiameseModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        continuations: Sequence[Sequence[Sequence[int]]],
        first_token_log_probs: bool = False,
        max_new_tokens: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        frozen_states: Sequence[FrozenPromptStates] | None = None,
    ) -> ContinuationScores:
        """Log-probabilities of given continuations after each prompt, from one prefill per prompt.

        Each prompt is encoded once (both branches, one doubled batch); its continuations run
        through that prompt's cache, several per prompt side by side, and read the fused logits.
        The query memory is the prompt's, never a continuation's. The scores equal a
        teacher-forced `forward` over prompt + continuation with the prompt as query.

        Args:
            input_ids: [B, T] prompts, any padding side.
            attention_mask: [B, T]; all ones if omitted.
            continuations: per prompt, a list of continuations (token id lists, each non-empty).
            first_token_log_probs: Also return the log-distribution [V] each continuation's
                first token is drawn from (what a yes/no margin reads).
            max_new_tokens: When above 0, also decode greedily from the same prefill, as
                `generate` would, into `ContinuationScores.sequences`: evaluation's answer and
                its scores from one encoding of the prompt. The prompt's cache is cut back after
                scoring (or the scoring ran on a copy), so decoding goes on exactly as `generate`'s.
            eos_token_id, pad_token_id: As for `generate`.
            frozen_states: Per prompt, the frozen branch's states for these continuations, computed
                before (`frozen_continuation_states`, kept by `imsm.evaluation.frozen_states`):
                then only the tuned branch runs, B rows instead of 2B, and the same fusion reads
                the given states. Ignored where the fusion does not read the frozen branch;
                scoring only (decoding needs the frozen branch at every new token).
        """
        if len(continuations) != input_ids.shape[0]:
            raise ValueError(f"{input_ids.shape[0]} prompts but continuations for {len(continuations)}")
        if any(len(group) == 0 for group in continuations) or any(len(c) == 0 for g in continuations for c in g):
            raise ValueError("every prompt needs at least one continuation, and every continuation a token")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        eos_ids = _eos_ids(self, eos_token_id)
        pad = pad_token_id if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        plan = DecodingPlan.greedy(max_new_tokens, eos_ids, pad) if max_new_tokens > 0 else None
        if frozen_states is not None and not self.imsm_config.is_siamese:
            frozen_states = None  # the fusion never reads the frozen branch
        if frozen_states is not None:
            _check_frozen_states(frozen_states, continuations, plan)
        return _run(self, input_ids, attention_mask, continuations, first_token_log_probs, plan, frozen_states)

    @torch.no_grad()
    def frozen_continuation_states(
        self: SiameseModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        continuations: Sequence[Sequence[Sequence[int]]],
    ) -> list[FrozenPromptStates]:
        """The frozen branch alone over prompts and their continuations: what `score_continuations`
        reads of it, to compute once and pass as its `frozen_states` for any adapter on this base
        model. The same prefill and cache as scoring, with R rows of one branch."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        input_ids, attention_mask = to_left_padding(input_ids, attention_mask)
        prompt, cache = self.cached_branch_states(input_ids, attention_mask, None, branches=FROZEN)
        query = masked_mean(prompt.frozen, attention_mask.bool())  # [B, d]: the whole prompt is query
        counts = [len(group) for group in continuations]
        flat = [list(continuation) for group in continuations for continuation in group]
        index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(input_ids.device)
        last = BranchStates(prompt.frozen[index, -1:], None)  # [R, 1, d]
        states, _, _ = _continuation_states(
            self, _cache_rows(cache, index, len(counts)), attention_mask[index], last, flat, FROZEN
        )
        hidden = [states.frozen[row, : len(c)].cpu() for row, c in enumerate(flat)]  # [L_c, d] each
        out, start = [], 0
        for b, count in enumerate(counts):
            out.append(FrozenPromptStates(query[b].cpu(), hidden[start : start + count]))
            start += count
        return out


def _check_frozen_states(frozen_states, continuations, plan) -> None:
    """Given states must match the continuations one for one, and cover scoring alone."""
    if plan is not None:
        raise ValueError("frozen_states cover scoring only: decoding needs the frozen branch at every new token")
    shapes = [[len(h) for h in prompt.hidden] for prompt in frozen_states]
    if shapes != [[len(c) for c in group] for group in continuations]:
        raise ValueError("frozen_states must hold one [L, d] tensor per continuation, L its length in tokens")


def _run(
    model, input_ids, attention_mask, continuations, first_token_log_probs, plan: DecodingPlan | None, frozen=None
) -> ContinuationScores:
    """Prefill; then score `continuations` from the prompts' cache; then decode as `plan` says.
    With `frozen` (per prompt, the frozen branch's states) only the tuned branch runs."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    input_ids, attention_mask = to_left_padding(input_ids, attention_mask)
    max_new_tokens = 0 if plan is None else plan.max_new_tokens
    # Prefill: both branches over the prompt, one forward; the query memory is the whole prompt.
    branches = SPLIT if frozen is None else TUNED
    cache = None  # the backbone builds a DynamicCache
    if plan is not None and plan.static_cache:  # decoding alone: continuations are scored on a DynamicCache
        cache = static_cache(model, input_ids.shape[0], input_ids.shape[1] + max_new_tokens)
    states, cache = model.cached_branch_states(
        input_ids, attention_mask, None, cache, query_mask=attention_mask.bool(), branches=branches
    )
    if frozen is not None:  # the frozen branch's share, as it would have come out of the prefill
        states.query_frozen = torch.stack([prompt.query for prompt in frozen]).to(states.tuned.device)  # [B, d] fp32
        frozen = [hidden for prompt in frozen for hidden in prompt.hidden]  # per continuation, [L, d]
    last = BranchStates(
        None if states.frozen is None else states.frozen[:, -1:],  # [B, 1, d]
        states.tuned[:, -1:],  # [B, 1, d]
        states.query_frozen,
        states.query_tuned,
    )
    scores = ContinuationScores(log_probs=[], frozen_weights=[])
    if continuations is not None:
        B = input_ids.shape[0]
        counts = [len(group) for group in continuations]
        flat = [list(continuation) for group in continuations for continuation in group]
        if counts == [1] * B:
            # One continuation per prompt: run it through the prompt's own cache, then cut the
            # cache back for decoding. Full-attention caches are cut back in place; a
            # sliding-window layer may refuse to roll back once its window is full, so those
            # (and unknown caches) are copied.
            croppable = hasattr(cache, "crop") and not any(getattr(cache, "is_sliding", None) or ())
            decoding_follows = max_new_tokens > 0
            scoring_cache = copy.deepcopy(cache) if decoding_follows and not croppable else cache
            scores = _score(model, scoring_cache, attention_mask, last, flat, counts, first_token_log_probs, frozen)
            added = max(len(c) for c in flat) - 1  # continuation tokens fed through the cache
            if decoding_follows and croppable and added:
                cache.crop(-added)  # back to the prompt alone (a negative count in every version)
        else:
            # Several per prompt: each continuation gets its own copy of its prompt's cache rows.
            index = torch.repeat_interleave(
                torch.arange(B, device=input_ids.device), torch.tensor(counts).to(input_ids.device)
            )
            rows = _select(last, index)
            scoring_cache = _cache_rows(cache, index, B)
            scores = _score(
                model, scoring_cache, attention_mask[index], rows, flat, counts, first_token_log_probs, frozen
            )
    if plan is not None:
        scores.sequences = _decode(model, input_ids, attention_mask, cache, last, plan)
    return scores


def _select(states: BranchStates, index: torch.Tensor) -> BranchStates:
    """The rows `index` of every tensor in `states`."""
    pick = lambda tensor: None if tensor is None else tensor[index]  # noqa: E731
    return BranchStates(pick(states.frozen), pick(states.tuned), pick(states.query_frozen), pick(states.query_tuned))


def _cache_rows(cache, index: torch.Tensor, rows: int):
    """A new cache whose row r holds prompt row `index[r]`; `cache` is left as it was.

    A layer holds [frozen rows | tuned rows] (2 * `rows`), or `rows` rows when it is a shared
    lower layer (`imsm.model.shared_layers`); both halves take the same rows.
    """
    if not hasattr(cache, "layers"):
        raise TypeError(f"a {type(cache).__name__} cannot be copied by rows; score one continuation per prompt")
    expanded = copy.copy(cache)
    expanded.layers = []
    for layer in cache.layers:
        layer = copy.copy(layer)  # the selection below assigns new tensors; the original keeps its own
        held = layer.keys.shape[0]
        layer.batch_select_indices(index if held == rows else torch.cat([index, index + rows]))
        expanded.layers.append(layer)
    return expanded


_LOGIT_SLICE = 2048  # continuation positions whose logits are held at once


def _continuation_states(
    model, cache, mask, last: BranchStates, continuations, branches: str = SPLIT
) -> tuple[BranchStates, torch.Tensor, torch.Tensor]:
    """Run one continuation per cached row through the cache, teacher-forced.

    Position j of a continuation is predicted by the prompt's last state (j = 0) or by its token
    j - 1, so only the first L - 1 tokens run through the model: a one-token answer ("yes")
    costs no forward at all. Returns (states [R, L, d] at the predicting positions, the
    continuations' ids [R, L] right-padded, their mask [R, L]).
    """
    R = len(continuations)
    L = max(len(c) for c in continuations)
    device = mask.device
    target_ids = torch.zeros((R, L), dtype=torch.long, device=device)
    target_mask = torch.zeros((R, L), dtype=torch.bool, device=device)
    for row, ids in enumerate(continuations):  # right padding: a row's pads follow its last token
        target_ids[row, : len(ids)] = torch.tensor(ids, device=device)
        target_mask[row, : len(ids)] = True
    states = last  # [R, 1, d] per branch
    if L > 1:
        fed_mask = torch.cat([mask, target_mask[:, : L - 1].to(mask.dtype)], dim=1)  # [R, T + L-1]
        fed_positions = last_positions(mask) + torch.arange(1, L, device=device)  # [R, L-1]
        more, _ = model.cached_branch_states(target_ids[:, : L - 1], fed_mask, fed_positions, cache, branches=branches)
        grow = lambda a, b: None if a is None else torch.cat([a, b], dim=1)  # noqa: E731  [R, L, d]
        states = BranchStates(grow(last.frozen, more.frozen), grow(last.tuned, more.tuned))
        states.query_frozen, states.query_tuned = last.query_frozen, last.query_tuned
    return states, target_ids, target_mask


def _score(
    model, cache, mask, last: BranchStates, continuations, per_prompt: list[int], first_token_log_probs: bool, frozen
) -> ContinuationScores:
    """Teacher-forced log-probabilities of one continuation per cached row, grouped by prompt
    (`per_prompt[b]` consecutive rows are prompt b's continuations). `frozen`: each row's
    frozen-branch states [L_c, d] when the cache holds the tuned branch alone."""
    R = len(continuations)
    device = mask.device
    states, target_ids, target_mask = _continuation_states(
        model, cache, mask, last, continuations, SPLIT if frozen is None else TUNED
    )
    if frozen is not None:
        states.frozen = torch.nn.utils.rnn.pad_sequence(frozen, batch_first=True).to(states.tuned)  # [R, L, d]
    rows, cols = target_mask.nonzero(as_tuple=True)  # [N] row-major: each row's tokens in order
    gold = target_ids[rows, cols]  # [N]
    lengths = [len(c) for c in continuations]
    first_rows = torch.tensor([sum(lengths[:row]) for row in range(R)], device=device)  # [R] index in N
    token_log_probs = torch.empty(len(gold), dtype=torch.float32, device=device)  # [N]
    is_top = torch.empty(len(gold), dtype=torch.bool, device=device)  # [N]: the argmax is the token
    gate_means = None  # [N], the gate's mean over features at each position
    first = None  # [R, V]
    # Logits in slices: long continuations (GSM8K's worked answers) times a 50k vocabulary would
    # otherwise hold gigabytes at once.
    for start in range(0, len(gold), _LOGIT_SLICE):
        end = min(start + _LOGIT_SLICE, len(gold))
        fused = model.fused_logits(states, (rows[start:end], cols[start:end]))
        log_probs = torch.log_softmax(fused.logits.float(), dim=-1)  # [n, V]
        token_log_probs[start:end] = log_probs.gather(1, gold[start:end, None])[:, 0]
        is_top[start:end] = log_probs.argmax(dim=-1) == gold[start:end]
        if fused.gate is not None:
            if gate_means is None:
                gate_means = torch.empty(len(gold), dtype=torch.float32, device=device)
            gate_means[start:end] = fused.gate.float().mean(dim=-1)
        if first_token_log_probs:
            if first is None:
                first = torch.empty((R, log_probs.shape[1]), dtype=torch.float32, device=device)
            here = (first_rows >= start) & (first_rows < end)  # rows whose first token is in the slice
            first[here] = log_probs[first_rows[here] - start]
    weights: list[float | None] = [None] * R
    if gate_means is not None:
        weights = [float(part.mean()) for part in torch.split(gate_means.cpu(), lengths)]
    return ContinuationScores.grouped(
        per_prompt,
        log_probs=list(torch.split(token_log_probs.cpu(), lengths)),
        frozen_weights=weights,
        is_greedy=[bool(part.all()) for part in torch.split(is_top.cpu(), lengths)],
        first_log_probs=None if first is None else list(first.cpu()),
    )


def _decode(model, input_ids, mask, cache, last: BranchStates, plan: DecodingPlan) -> torch.Tensor:
    """Decode from a prefilled cache: each step's token, greedy or sampled from the fused logits
    after the plan's processors, goes to both branches."""
    device = input_ids.device
    eos = torch.tensor(plan.eos_ids, device=device, dtype=input_ids.dtype)
    step = DecodingStep(model, mask, cache, last, plan.compiling(device))
    logits = model.fused_logits(last).logits[:, -1]  # [B, V], from the prefill's last position
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=device)
    new_tokens = []
    sequences = input_ids  # grown only when a processor or stopping criterion reads it
    if plan.streamer is not None:
        plan.streamer.put(input_ids.cpu())
    for _ in range(plan.max_new_tokens):
        if plan.processors:
            logits = plan.processors(sequences, logits.float())
        if plan.do_sample:
            token = torch.multinomial(torch.softmax(logits.float(), dim=-1), num_samples=1)[:, 0]  # [B]
        else:
            token = logits.argmax(dim=-1)  # [B]
        token = torch.where(unfinished, token, torch.full_like(token, plan.pad_token_id))
        new_tokens.append(token)
        if plan.reads_sequences:
            sequences = torch.cat([sequences, token[:, None]], dim=1)
        if plan.streamer is not None:
            plan.streamer.put(token.cpu())
        if eos.numel():
            unfinished &= ~torch.isin(token, eos)
        if plan.stopping:
            unfinished &= ~plan.stopping(sequences, logits).to(device)
        if not bool(unfinished.any()) or len(new_tokens) == plan.max_new_tokens:
            break
        logits = step(token)  # [B, V]: both branches read the token; the query memory stays the prompt's
    if plan.streamer is not None:
        plan.streamer.end()
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)


@torch.no_grad()
def naive_generate(
    model: SiameseModel,
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
