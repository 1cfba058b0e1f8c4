"""Text in, text out: prompts through the chat template, greedy decoding, answers decoded."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from imsm.model.siamese import IMSMModel


def format_prompt(tokenizer, prompt: str, use_chat_template: bool, system: str | None = None) -> str:
    """The prompt as the model expects it: inside its chat template when asked and available."""
    if not use_chat_template:
        return prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def wants_chat_template(tokenizer, choice: str) -> bool:
    """ "auto" uses the template when the tokenizer has one; "on" / "off" force it."""
    if choice == "off":
        return False
    return bool(getattr(tokenizer, "chat_template", None)) or choice == "on"


@torch.no_grad()
def generate_text(
    model: IMSMModel,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 128,
    chat_template: str = "auto",
    system: str | None = None,
    batch_size: int = 8,
) -> list[str]:
    """Greedy answers to `prompts`, decoded without special tokens, in input order."""
    use_template = wants_chat_template(tokenizer, chat_template)
    texts = [format_prompt(tokenizer, p, use_template, system) for p in prompts]
    tokenizer.padding_side = "left"
    answers: list[str] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            # The chat template already holds the special tokens it needs.
            add_special_tokens=not use_template,
        ).to(model.device)
        output = model.generate(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        answers.extend(text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return answers
