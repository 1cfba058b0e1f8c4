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

from imsm.generate import left_padded
from imsm.model.siamese import IMSMModel


@dataclass(frozen=True)
class Scored:
    """One continuation's reading.

    Attributes:
        log_likelihood: Sum of the continuation tokens' log-probabilities (nats).
        is_greedy: Whether each continuation token is the most likely one where it stands.
        tokens: How many tokens the continuation has.
        frozen_weight: The gate's mean weight on the frozen branch over those tokens, or None.
    """

    log_likelihood: float
    is_greedy: bool
    tokens: int
    frozen_weight: float | None


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
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    batch_size: int = 8,
    max_length: int | None = None,
    on_batch_done: Callable[[int], None] | None = None,
) -> list[Scored]:
    """Score (context ids, continuation ids) requests; those with the same context share one prefill.

    Args:
        model: Any `IMSMModel` (base, peft or IMSM).
        requests: Token ids, e.g. from `encode_pair`. Every continuation needs a token.
        pad_id: Padding id for batching contexts.
        batch_size: Contexts encoded together (each with all of its continuations).
        max_length: The model's window: a context is cut from the left so that context and
            continuation fit in `max_length + 1` tokens, as lm-eval does.
        on_batch_done: Called with the number of requests each batch finished.

    Returns:
        One `Scored` per request, in request order.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (context, continuation) in enumerate(requests):
        if not continuation:
            raise ValueError(f"request {index} has an empty continuation: nothing to score")
        context = tuple(context)
        if max_length is not None and len(context) + len(continuation) > max_length + 1:
            context = context[len(context) + len(continuation) - max_length - 1 :]
        if not context:
            raise ValueError(f"request {index}: the continuation alone fills the model's window of {max_length}")
        groups.setdefault(context, []).append(index)

    # Longest first by context plus longest continuation, so a batch pads little in either pass
    # (SciQ's cost is in its contexts, PIQA's in its options).
    def length(context: tuple[int, ...]) -> int:
        return len(context) + max(len(requests[i][1]) for i in groups[context])

    results: list[Scored | None] = [None] * len(requests)
    for batch in _similar_lengths(sorted(groups, key=length, reverse=True), length, batch_size):
        input_ids, attention_mask = left_padded(batch, pad_id)
        continuations = [[list(requests[i][1]) for i in groups[context]] for context in batch]
        scores = model.score_continuations(input_ids.to(model.device), attention_mask.to(model.device), continuations)
        done = 0
        for row, context in enumerate(batch):
            for column, index in enumerate(groups[context]):
                log_probs = scores.log_probs[row][column]
                results[index] = Scored(
                    log_likelihood=float(log_probs.sum()),
                    is_greedy=scores.is_greedy[row][column],
                    tokens=len(log_probs),
                    frozen_weight=scores.frozen_weights[row][column],
                )
                done += 1
        if on_batch_done is not None:
            on_batch_done(done)
    return results


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
