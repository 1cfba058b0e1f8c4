"""Text in, text out: batched greedy answers for a list of prompts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from imsm.model.siamese import IMSMModel
from imsm.prompting import PromptFormatter


def left_padded(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as a left-padded batch: (input_ids [B, T], attention_mask [B, T])."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids) :] = torch.tensor(list(ids))
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def generate_answers(
    model: IMSMModel,
    formatter: PromptFormatter,
    prompts: Sequence[str],
    max_new_tokens: int = 128,
    batch_size: int = 8,
    on_batch_done: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Greedy answers to `prompts`, decoded without special tokens, in input order.

    Prompts are batched by length (longest first) so little padding is decoded. After each batch
    `on_batch_done(indices, answers)` receives the batch's prompt indices and answers.
    """
    tokenizer = formatter.tokenizer
    pad_id = formatter.pad_id
    encoded = [formatter.prompt_ids(p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    answers: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, attention_mask = left_padded([encoded[i] for i in rows], pad_id)
        width = input_ids.shape[1]
        output = model.generate(
            input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
        )
        texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        texts = [text.strip() for text in texts]
        for index, text in zip(rows, texts, strict=True):
            answers[index] = text
        if on_batch_done is not None:
            on_batch_done(rows, texts)
    return answers
