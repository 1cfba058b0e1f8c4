"""Text in, text out: batched answers for a list of prompts (greedy unless told), or one streamed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TextIO

import torch
from transformers import TextStreamer

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
    **generation_options: Any,
) -> list[str]:
    """Answers to `prompts`, decoded without special tokens, in input order: greedy, or as
    `generation_options` (`IMSMModel.generate`'s keywords: do_sample, temperature, ...) say.

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
            tokenizer=tokenizer,
            **generation_options,
        )
        texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        texts = [text.strip() for text in texts]
        for index, text in zip(rows, texts, strict=True):
            answers[index] = text
        if on_batch_done is not None:
            on_batch_done(rows, texts)
    return answers


class WriterStreamer(TextStreamer):
    """transformers' `TextStreamer` (new text only, no special tokens), writing to any text stream."""

    def __init__(self, tokenizer, output: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.output = output

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.output.write(text + ("\n" if stream_end else ""))
        self.output.flush()


@torch.no_grad()
def stream_answer(
    model: IMSMModel, formatter: PromptFormatter, prompt: str, max_new_tokens: int, output: TextIO, **generation_options
) -> str:
    """One prompt's answer, written to `output` as it is decoded; returns it whole."""
    ids = torch.tensor([formatter.prompt_ids(prompt)], device=model.device)
    streamer = WriterStreamer(formatter.tokenizer, output)
    sequences = model.generate(
        ids,
        max_new_tokens=max_new_tokens,
        streamer=streamer,
        tokenizer=formatter.tokenizer,
        **generation_options,
    )
    return formatter.tokenizer.decode(sequences[0, ids.shape[1] :], skip_special_tokens=True).strip()
