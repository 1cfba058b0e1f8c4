"""Log-likelihoods of continuations after contexts, tokenised as lm-evaluation-harness does it.

The field measures knowledge by comparing the log-likelihood of each option after a question
(ARC, PIQA, SciQ, WinoGrande ...). To give the same numbers as lm-evaluation-harness 0.4.13's
`hf` model, a (context, continuation) pair is tokenised as it does: trailing spaces of the context
move to the continuation, the pair is encoded whole and the continuation is what follows the
context's own encoding; an empty context becomes the tokenizer's BOS (else EOS) token.

Unlike lm-eval's `hf` model, which runs context + continuation once per option, the requests
that share a context are scored from one prefill of it (`IMSMModel.score_continuations`), both
branches at once, with the context as IMSM's query memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from imsm.evaluation.frozen_states import TaskStates, state_key, uses_frozen_states
from imsm.model.siamese import IMSMModel

Request = tuple[Sequence[int], Sequence[int]]  # (context ids, continuation ids)


@dataclass
class ChoiceReading:
    """What the model gave each request of one group (a question's options), in request order.

    Attributes:
        log_likelihoods: Sum of the continuation tokens' log-probabilities (nats).
        is_greedy: Whether every continuation token was the most likely one (lm-eval's is_greedy).
        tokens: The continuation's length in tokens.
        frozen_weights: The gate's mean weight on the frozen branch over those tokens, or None.
    """

    log_likelihoods: list[float]
    is_greedy: list[bool]
    tokens: list[int]
    frozen_weights: list[float | None]

    def frozen_weight(self) -> float | None:
        """The gate's weight on the frozen branch averaged over every option's tokens."""
        if any(w is None for w in self.frozen_weights):
            return None
        return sum(w * n for w, n in zip(self.frozen_weights, self.tokens, strict=True)) / sum(self.tokens)


def prefix_token_id(tokenizer) -> int:
    """The token an empty context stands for: BOS, else EOS (lm-eval's `prefix_token_id`)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as lm-eval 0.4.13's causal `hf` model makes them."""
    if context == "":
        continuation_ids = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        if continuation_ids and continuation_ids[0] == prefix:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix], continuation_ids
    spaces = len(context) - len(context.rstrip())
    if spaces:  # "Answer: " + "Paris" is scored as "Answer:" + " Paris", as the tokenizer would split it
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    # Text that already starts with the prefix token (a chat-templated context) gets no second one.
    special = not context.startswith(tokenizer.decode(prefix_token_id(tokenizer)))
    whole = tokenizer.encode(context + continuation, add_special_tokens=special)
    context_ids = tokenizer.encode(context, add_special_tokens=special)
    return context_ids, whole[len(context_ids) :]


def score_requests(
    model: IMSMModel,
    groups: Sequence[Sequence[Request]],
    pad_id: int,
    batch_size: int = 8,
    max_length: int | None = None,
    on_batch_done: Callable[[int], None] | None = None,
    frozen_states: TaskStates | None = None,
) -> list[ChoiceReading]:
    """Score groups of (context ids, continuation ids) requests; requests with the same context,
    in any group, share one prefill.

    Args:
        model: Any `IMSMModel` (base, peft or IMSM).
        groups: Requests grouped as their readings are wanted (a question's options; lm-eval's
            requests one by one), token ids e.g. from `encode_pair`. Every continuation needs a token.
        pad_id: Padding id for batching contexts.
        batch_size: Contexts encoded together (each with all of its continuations).
        max_length: The model's window: a context is cut from the left so that context and
            continuation fit in `max_length + 1` tokens, as lm-eval does.
        on_batch_done: Called with the number of requests each batch finished.
        frozen_states: Where the frozen branch's states are kept (`FrozenStateStore.open`): those
            it lacks are computed first, by the frozen branch alone, and added; then every batch
            runs the tuned branch alone. Left alone when the model's fusion does not read them.

    Returns:
        One `ChoiceReading` per group, its lists in request order.
    """
    contexts, continuations = _by_context(groups, max_length)
    readings = [ChoiceReading([0.0] * len(g), [False] * len(g), [0] * len(g), [None] * len(g)) for g in groups]
    batches, asked = _batches(contexts, continuations, batch_size)
    if frozen_states is not None and not uses_frozen_states(model):
        frozen_states = None
    if frozen_states is not None:
        _add_missing_states(model, frozen_states, batches, asked, pad_id)
    for batch, wanted in zip(batches, asked, strict=True):
        input_ids, attention_mask = right_padded(batch, pad_id)  # moved to the left by the model
        frozen = None
        if frozen_states is not None:
            frozen = [
                frozen_states.prompt_states([state_key(context, c) for c in group])
                for context, group in zip(batch, wanted, strict=True)
            ]
        scores = model.score_continuations(
            input_ids.to(model.device), attention_mask.to(model.device), wanted, frozen_states=frozen
        )
        done = 0
        for row, context in enumerate(batch):
            for column, (number, position) in enumerate(contexts[context]):
                reading = readings[number]
                reading.log_likelihoods[position] = float(scores.log_probs[row][column].sum())
                reading.is_greedy[position] = scores.is_greedy[row][column]
                reading.tokens[position] = len(continuations[number, position])
                reading.frozen_weights[position] = scores.frozen_weights[row][column]
                done += 1
        if on_batch_done is not None:
            on_batch_done(done)
    return readings


def _by_context(groups: Sequence[Sequence[Request]], max_length: int | None):
    """The requests by context: {context: its (group, position in group) slots}, {slot: continuation}."""
    contexts: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    continuations: dict[tuple[int, int], list[int]] = {}
    for number, group in enumerate(groups):
        for position, (context, continuation) in enumerate(group):
            where = f"request {position} of group {number}"
            if not continuation:
                raise ValueError(f"{where} has an empty continuation: nothing to score")
            context = tuple(context)
            if max_length is not None and len(context) + len(continuation) > max_length + 1:
                context = context[len(context) + len(continuation) - max_length - 1 :]
            if not context:
                raise ValueError(f"{where}: the continuation alone fills the model's window of {max_length}")
            contexts.setdefault(context, []).append((number, position))
            continuations[number, position] = list(continuation)
    return contexts, continuations


def _batches(contexts, continuations, batch_size: int) -> tuple[list[list], list[list]]:
    """Contexts in batches, and each batch's continuations per context."""

    # Longest first by context plus longest continuation, so a batch pads little in either pass
    # (SciQ's cost is in its contexts, PIQA's in its options).
    def length(context: tuple[int, ...]) -> int:
        return len(context) + max(len(continuations[slot]) for slot in contexts[context])

    batches = _similar_lengths(sorted(contexts, key=length, reverse=True), length, batch_size)
    asked = [[[continuations[slot] for slot in contexts[context]] for context in batch] for batch in batches]
    return batches, asked


def add_frozen_states(
    model: IMSMModel,
    groups: Sequence[Sequence[Request]],
    pad_id: int,
    store: TaskStates,
    batch_size: int = 8,
    max_length: int | None = None,
) -> None:
    """Compute the frozen branch's states that `score_requests` would read for `groups` and
    `store` lacks (the frozen branch alone, batched), add them and write the store once. A
    caller that scores in many small calls (a journal's batches) runs this first, over all."""
    if uses_frozen_states(model):
        contexts, continuations = _by_context(groups, max_length)
        _add_missing_states(model, store, *_batches(contexts, continuations, batch_size), pad_id)


def _add_missing_states(model: IMSMModel, store: TaskStates, batches, asked, pad_id: int) -> None:
    """Compute, by the frozen branch alone and in the same batches, the states `store` lacks for
    these contexts and continuations; add them and write the store once."""
    for batch, wanted in zip(batches, asked, strict=True):
        missing = [
            (context, [c for c in group if state_key(context, c) not in store])
            for context, group in zip(batch, wanted, strict=True)
        ]
        missing = [(context, group) for context, group in missing if group]
        if not missing:
            continue
        input_ids, attention_mask = right_padded([context for context, _ in missing], pad_id)
        states = model.frozen_continuation_states(
            input_ids.to(model.device), attention_mask.to(model.device), [group for _, group in missing]
        )
        for (context, group), prompt in zip(missing, states, strict=True):
            for continuation, hidden in zip(group, prompt.hidden, strict=True):
                store.add(state_key(context, continuation), prompt.query, hidden)
    if store.unsaved:
        store.save()


def right_padded(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as a right-padded batch: (input_ids [B, T], attention_mask [B, T])."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(list(ids))
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


# A batch ends early where the next context is this much shorter than the batch's longest: on a
# compute-bound machine padding costs as much as tokens, and a smaller batch costs nothing.
_PADDING_CUT = 0.75


def _similar_lengths(contexts: list, length, batch_size: int) -> list[list]:
    """Consecutive runs of at most `batch_size` contexts (sorted longest first) of similar length."""
    batches: list[list] = []
    for context in contexts:
        if batches and len(batches[-1]) < batch_size and length(context) >= _PADDING_CUT * length(batches[-1][0]):
            batches[-1].append(context)
        else:
            batches.append([context])
    return batches
