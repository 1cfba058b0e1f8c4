"""Training examples as tokens: prompt, answer and EOS, with labels on the answer only.

Long examples are cut from the middle of the prompt: its opening (the instruction) and its end
(the answer cue, e.g. "Output:" and the chat template's assistant header) are kept, so the model
always sees where the answer starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imsm.errors import IMSMError
from imsm.model.siamese import IGNORE_INDEX
from imsm.prompting import PromptFormatter
from imsm.tasks.base import Record, Task

PROMPT_HEAD_TOKENS = 32  # instruction tokens kept at the start of a cut prompt
MIN_PROMPT_TOKENS = 8


@dataclass(frozen=True)
class TrainExample:
    input_ids: list[int]
    prompt_length: int


@dataclass(frozen=True)
class TokenizedSet:
    examples: list[TrainExample]
    truncated: int  # prompts cut to fit max_length
    dropped: int  # examples that could not fit at all


def _fit(prompt: list[int], answer: list[int], max_length: int) -> list[int] | None:
    budget = max_length - len(answer)
    if len(prompt) <= budget:
        return prompt
    if budget < MIN_PROMPT_TOKENS:
        return None
    head = min(PROMPT_HEAD_TOKENS, budget // 4)
    return prompt[:head] + prompt[len(prompt) - (budget - head) :]


def tokenize_examples(task: Task, records: list[Record], formatter: PromptFormatter, max_length: int) -> TokenizedSet:
    """Prompt ids + answer ids + EOS for every record that fits `max_length`."""
    eos = formatter.tokenizer.eos_token_id
    examples, truncated, dropped = [], 0, 0
    for record in records:
        prompt = formatter.prompt_ids(task.prompt(record))
        answer = formatter.answer_ids(task.target(record)) + ([eos] if eos is not None else [])
        fitted = _fit(prompt, answer, max_length)
        if fitted is None:
            dropped += 1
            continue
        truncated += len(fitted) < len(prompt)
        examples.append(TrainExample(fitted + answer, len(fitted)))
    if not examples:
        raise IMSMError(
            f"every one of the {len(records)} {task.name} examples is longer than max_length={max_length} tokens "
            "even with its prompt cut; raise --max-length"
        )
    return TokenizedSet(examples, truncated, dropped)


def collate(examples: list[TrainExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask, prompt (query) mask and labels."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    query_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        attention_mask[row, :n] = 1
        query_mask[row, : example.prompt_length] = True
        labels[row, example.prompt_length : n] = torch.tensor(example.input_ids[example.prompt_length :])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "query_mask": query_mask, "labels": labels}
