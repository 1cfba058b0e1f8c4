"""`imsm generate` and `imsm chat`: answers decoded from a model, with or without an adapter."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from imsm.chat import Conversation, run_chat
from imsm.cli.model_options import ModelOptions
from imsm.cli.options import DecodingOptions, chat_template_option, check_options, option, system_option
from imsm.errors import IMSMError
from imsm.generate import generate_answers, stream_answer
from imsm.model.variant import load_evaluated_model
from imsm.prompting import PromptFormatter


@dataclass
class DecodedModelOptions(ModelOptions, DecodingOptions):
    """The model `imsm generate` and `imsm chat` decode from, and how its tokens are picked."""

    def __post_init__(self) -> None:
        check_options(self)
        super().__post_init__()


@dataclass
class GenerateOptions(DecodedModelOptions):
    """`imsm generate`: answers to prompts, greedy unless --do-sample."""

    prompt: list[str] = option(default_factory=list, repeat=True, help="the prompt")
    max_new_tokens: int = option(128, positive=True, help="cap on generated tokens")
    chat_template: str = chat_template_option()
    system: str | None = system_option()
    batch_size: int = option(8, positive=True, help="prompts decoded together")
    stream: bool = option(False, help="print each answer as it is decoded (one prompt at a time)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prompt:
            raise IMSMError("no prompt given; pass --prompt TEXT (repeat it for several prompts)")


@dataclass
class ChatOptions(DecodedModelOptions):
    """`imsm chat`: a conversation through the model's chat template, each reply streamed."""

    system: str | None = system_option()
    max_new_tokens: int = option(256, positive=True, help="cap on each reply's tokens")


def cmd_generate(options: GenerateOptions) -> int:
    model, tokenizer = load_evaluated_model(options)
    formatter = PromptFormatter.for_tokenizer(tokenizer, options.chat_template, options.system)
    if options.seed is not None:
        torch.manual_seed(options.seed)
    generation = options.generation_options()
    several = len(options.prompt) > 1
    if options.stream:
        for index, prompt in enumerate(options.prompt):
            if several:
                print(f"[{index + 1}] {prompt}", flush=True)
            stream_answer(model, formatter, prompt, options.max_new_tokens, sys.stdout, **generation)
            if several and index + 1 < len(options.prompt):
                print()
        return 0
    answers = generate_answers(
        model, formatter, options.prompt, options.max_new_tokens, options.batch_size, **generation
    )
    for index, answer in enumerate(answers):
        if several:
            print(f"[{index + 1}] {options.prompt[index]}")
        print(answer)
        if several and index + 1 < len(answers):
            print()
    return 0


def cmd_chat(options: ChatOptions) -> int:
    model, tokenizer = load_evaluated_model(options)
    if options.seed is not None:
        torch.manual_seed(options.seed)
    generation = {"max_new_tokens": options.max_new_tokens, **options.generation_options()}
    run_chat(Conversation(model, tokenizer, options.system, generation))
    return 0
