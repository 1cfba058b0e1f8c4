"""How a task's prompt and answer become tokens, the same way for training and evaluation.

With a chat template the prompt is the user's turn and the answer is the assistant's; without
one the prompt is sent raw and the answer follows it after a space ("Answer: yes").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PromptFormatter:
    """Formats prompts for one tokenizer.

    Attributes:
        tokenizer: A transformers tokenizer.
        use_chat_template: Whether prompts go inside the tokenizer's chat template.
        system: Optional system message (the template's default when None).
    """

    tokenizer: object
    use_chat_template: bool
    system: str | None = None

    @classmethod
    def for_tokenizer(cls, tokenizer, choice: str = "auto", system: str | None = None) -> PromptFormatter:
        """ "auto" uses the chat template when the tokenizer has one; "on" / "off" force it."""
        has_template = bool(getattr(tokenizer, "chat_template", None))
        return cls(tokenizer, choice == "on" or (choice == "auto" and has_template), system)

    @property
    def pad_id(self) -> int:
        """The id that pads batches: the tokenizer's pad token, else its EOS."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def text(self, prompt: str) -> str:
        if not self.use_chat_template:
            return prompt
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": prompt}
        ]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prompt_ids(self, prompt: str) -> list[int]:
        # A chat template already holds the special tokens it needs.
        return self.tokenizer(self.text(prompt), add_special_tokens=not self.use_chat_template)["input_ids"]

    def answer_ids(self, answer: str) -> list[int]:
        text = answer if self.use_chat_template else " " + answer
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]
