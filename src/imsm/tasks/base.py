"""What a task is: its data, prompt, gold answers, answer extraction, metrics and version."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]
SLICE = "@"  # a task slice's name: NAME@START (`imsm.tasks.task_slice`)


@dataclass(frozen=True)
class HubSource:
    """Where online users can get the same data from the Hugging Face hub.

    Attributes:
        path: `datasets.load_dataset` path.
        name: Its configuration name, if any.
        splits: Our split name -> the hub's split name.
        convert: Turns a hub row into a record shaped like our data files.
    """

    path: str
    name: str | None
    splits: dict[str, str]
    convert: Callable[[Record], Record]


@dataclass(frozen=True)
class Task:
    """One benchmark, declared in one file.

    Attributes:
        name: Registry name (`--task`).
        version: Bumped whenever prompt, data selection or scoring changes.
        directory: Sub-directory of the data directory holding the files.
        splits: Split name -> JSON Lines files that make it up (concatenated in order).
        eval_split: The split evaluated by default (the paper's).
        prompt: record -> prompt text (the question, without any chat formatting).
        golds: record -> accepted answers for scoring.
        target: record -> the answer the model is trained on, and whose likelihood is measured.
        required_fields: Fields a record must have (checked, with file and line, when loading).
        answer_type: "yes_no", "number" or "text": how generated answers are extracted and
            compared; "multiple_choice": options scored by log-likelihood, nothing generated
            (`choices`, `requests`, `gold_index`); "drift": plain text scored against the base
            model (`document`).
        metrics: Registered metric names reported for this task.
        max_new_tokens: Generation cap when evaluating.
        train_split: The split to fine-tune on, for target tasks.
        hub: Online fallback when no data directory is given.
        description: One line for `--help` and reports.
        choices: record -> the option texts (lm-eval's `doc_to_choice`); what acc_norm divides by.
        requests: record -> one (context, continuation) pair per option, as lm-eval builds them
            (the option after the question and a " ", or for WinoGrande each option in its own
            context followed by the rest of the sentence).
        gold_index: record -> the 0-based index of the correct option.
        document: record -> (context, text) of a drift document; the text is scored, the
            context (often empty) is given.
        chance: The accuracy of guessing, for multiple choice 1 / the number of options (the usual
            number where it varies); None where unknown. `imsm frontier` pools a probe only where
            the base model clears it.
        first: For a slice `NAME@START` (`imsm.tasks.get_task`), START: the 0-based index, in file
            order, of the first question read, before any limit; None for the task itself.
    """

    name: str
    version: str
    directory: str
    splits: dict[str, tuple[str, ...]]
    eval_split: str
    prompt: Callable[[Record], str]
    golds: Callable[[Record], list[str]]
    target: Callable[[Record], str]
    required_fields: tuple[str, ...]
    answer_type: str = "text"
    metrics: Sequence[str] = ("exact_match",)
    max_new_tokens: int = 32
    train_split: str | None = None
    hub: HubSource | None = None
    description: str = ""
    source: str = field(default="built-in", compare=False)
    choices: Callable[[Record], list[str]] | None = None
    requests: Callable[[Record], list[tuple[str, str]]] | None = None
    gold_index: Callable[[Record], int] | None = None
    document: Callable[[Record], tuple[str, str]] | None = None
    chance: float | None = None
    first: int | None = None

    def chat_template_setting(self, setting: str) -> str:
        """`--chat-template` as it applies to this task: "auto" means none for multiple-choice
        questions, as lm-evaluation-harness scores options by default; "on" and "off" hold for all."""
        return "off" if setting == "auto" and self.answer_type == "multiple_choice" else setting
