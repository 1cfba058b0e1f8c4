"""`imsm chat`: a multi-turn conversation with a model, base or adapted, through its chat template.

Each reply streams as it is decoded (transformers' `TextStreamer`) and joins the history, so the
next turn's prompt is the whole conversation; its query memory is therefore the whole
conversation too. `/reset` starts afresh (the system message stays), `/exit` or end of input
ends it. Input that is not a terminal (a pipe, a file) works the same, without the "> " prompt,
so conversations can be scripted and tested.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import torch

from imsm.errors import IMSMError
from imsm.generate import WriterStreamer
from imsm.model.siamese import IMSMModel

RESET, EXIT = "/reset", "/exit"


def _lines(source: TextIO, interactive: bool, output: TextIO) -> Iterator[str]:
    while True:
        if interactive:
            output.write("> ")
            output.flush()
        line = source.readline()
        if not line:
            return
        yield line.rstrip("\n")


class Conversation:
    """The messages so far, and how to ask the model for the next reply."""

    def __init__(self, model: IMSMModel, tokenizer, system: str | None, generation_options: dict[str, Any]):
        if not getattr(tokenizer, "chat_template", None):
            raise IMSMError("this model's tokenizer has no chat template; use `imsm generate --prompt TEXT` instead")
        self.model, self.tokenizer = model, tokenizer
        self.system, self.options = system, generation_options
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    @torch.no_grad()
    def reply(self, text: str, output: TextIO) -> str:
        """The model's answer to `text`, streamed to `output` as it is decoded, then kept."""
        self.messages.append({"role": "user", "content": text})
        prompt = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.model.device)
        sequences = self.model.generate(
            ids, streamer=WriterStreamer(self.tokenizer, output), tokenizer=self.tokenizer, **self.options
        )
        answer = self.tokenizer.decode(sequences[0, ids.shape[1] :], skip_special_tokens=True).strip()
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def run_chat(conversation: Conversation, source: TextIO | None = None, output: TextIO | None = None) -> int:
    """Read turns from `source` (stdin) until /exit or its end; answer each on `output` (stdout);
    return the number of replies."""
    source = sys.stdin if source is None else source  # looked up per call, so a replaced stdin is read
    output = sys.stdout if output is None else output
    interactive = source.isatty()
    replies = 0
    lines: Iterable[str] = _lines(source, interactive, output)
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text == EXIT:
            break
        if text == RESET:
            conversation.reset()
            output.write("(conversation reset)\n")
            continue
        conversation.reply(text, output)
        replies += 1
    return replies
