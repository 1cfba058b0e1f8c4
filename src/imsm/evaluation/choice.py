"""Multiple-choice questions scored as lm-evaluation-harness scores them: by each option's log-likelihood.

Every option of a question is a (context, continuation) request (`Task.requests`), tokenised as
lm-eval's `hf` model does it; its log-likelihood is the sum of the continuation tokens'
log-probabilities. `imsm.evaluation.scoring.score_requests` prefills each context once, both branches
together, and reads every option from that cache with the context as IMSM's query memory, so a
question is read as any prompt is and an option never sees another. The prediction is the most
likely option (accuracy, lm-eval's acc) or the most likely per character of its text
(accuracy_norm, acc_norm). Nothing is generated, so answer format and length cannot move the score.

By default there is no chat template (lm-eval's default); with one (`--chat-template on`) the
context goes through the template as the user's turn and each option follows it without the
space, as lm-eval's `--apply_chat_template` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from imsm.evaluation.frozen_states import TaskStates
from imsm.evaluation.kind import TaskKind
from imsm.evaluation.results import rounded
from imsm.evaluation.scoring import ChoiceReading, add_frozen_states, encode_pair, score_requests
from imsm.metrics import METRICS, best_choice, choice_probability, mean, mean_stderr, normalized_log_likelihoods
from imsm.model.siamese import IMSMModel
from imsm.prompting import PromptFormatter
from imsm.tasks.base import Record, Task
from imsm.tasks.choice import TARGET_DELIMITER

# Bumped when the journal's rows change meaning, so an older journal is started afresh.
JOURNAL_FORMAT = 1
DEFAULT_CONTEXT_WINDOW = 2048  # lm-eval's default when neither config nor tokenizer says
_UNSET_TOKENIZER_LENGTH = 10**17  # transformers' "no limit" model_max_length is about 1e30


def context_window(model: IMSMModel, tokenizer) -> int:
    """The model's window, found as lm-eval finds it: the config's position limit, else the
    tokenizer's `model_max_length`, else 2048. Longer requests lose the start of their context."""
    for attribute in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < _UNSET_TOKENIZER_LENGTH:
        return length
    return DEFAULT_CONTEXT_WINDOW


def request_texts(formatter: PromptFormatter, requests: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (context, continuation) texts as the model reads them: as given, or with the context
    in the chat template and the continuation without the delimiter (lm-eval's chat mode)."""
    if not formatter.use_chat_template:
        return list(requests)
    return [
        (formatter.text(context), continuation.removeprefix(TARGET_DELIMITER)) for context, continuation in requests
    ]


@torch.no_grad()
def read_choices(
    model: IMSMModel,
    formatter: PromptFormatter,
    questions: Sequence[Sequence[tuple[str, str]]],
    batch_size: int = 8,
    on_batch_done: Callable[[list[int], list[ChoiceReading]], None] | None = None,
    frozen_states: TaskStates | None = None,
) -> list[ChoiceReading]:
    """Each question's options scored, `batch_size` questions at a time, longest contexts first.

    `questions` holds each question's (context, continuation) requests. After each batch
    `on_batch_done(indices, readings)` receives the batch's question indices and their readings,
    whole questions only (what a resume journal keeps). With `frozen_states`, the frozen branch's
    states the store lacks for these questions are computed first, and every batch reads them.
    """
    tokenizer = formatter.tokenizer
    window = context_window(model, tokenizer)
    encoded = [[encode_pair(tokenizer, c, x) for c, x in request_texts(formatter, q)] for q in questions]
    if frozen_states is not None:
        add_frozen_states(model, encoded, formatter.pad_id, frozen_states, batch_size, window)
    order = sorted(range(len(encoded)), key=lambda i: -max(len(context) for context, _ in encoded[i]))
    readings: list[ChoiceReading | None] = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = score_requests(
            model, [encoded[i] for i in indices], formatter.pad_id, batch_size, window, frozen_states=frozen_states
        )
        for i, reading in zip(indices, batch, strict=True):
            readings[i] = reading
        if on_batch_done is not None:
            on_batch_done(indices, batch)
    return readings


def choice_metrics(
    task: Task, golds: Sequence[int], lengths: Sequence[Sequence[int]], readings: Sequence[ChoiceReading]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """A multiple-choice task's corpus metrics and each metric's per-question scores.

    Every metric of the task comes with its standard error over questions; beside them the gold
    option's mean probability among the options and its mean log-likelihood, and the gate's
    weight on the frozen branch when there is a gate.
    """
    per_question = {
        name: [
            METRICS.get(name).choice_score(r.log_likelihoods, n, g)
            for r, n, g in zip(readings, lengths, golds, strict=True)
        ]
        for name in task.metrics
    }
    metrics: dict[str, float] = {}
    for name, values in per_question.items():
        metrics[name] = METRICS.get(name).aggregate(values)
        metrics[f"{name}_stderr"] = mean_stderr(values)
    metrics["gold_probability"] = mean(
        [choice_probability(r.log_likelihoods, g) for r, g in zip(readings, golds, strict=True)]
    )
    metrics["gold_log_likelihood"] = mean([r.log_likelihoods[g] for r, g in zip(readings, golds, strict=True)])
    weights = [w for r in readings if (w := r.frozen_weight()) is not None]
    if weights:
        metrics["gate_frozen_weight"] = mean(weights)
    return metrics, per_question


def _gold_margin(log_likelihoods: Sequence[float], gold: int) -> float | None:
    others = [ll for i, ll in enumerate(log_likelihoods) if i != gold]
    return log_likelihoods[gold] - max(others) if others else None


def question_row(
    index: int,
    record: Record,
    prompt: str | list[str],
    choices: Sequence[str],
    gold: int,
    reading: ChoiceReading,
    scores: dict[str, float],
) -> dict[str, Any]:
    """One question's line in the per-example JSON Lines file (log-likelihoods rounded to 5 decimals).

    `prompt` is the context all options follow, or (WinoGrande) each option's own context.
    """
    lls = reading.log_likelihoods
    return {
        "index": index,
        "source": record.get("_source"),
        "prompt": prompt,
        "choices": list(choices),
        "log_likelihoods": [rounded(ll) for ll in lls],
        "tokens": reading.tokens,
        "prediction": best_choice(lls),
        "prediction_norm": best_choice(normalized_log_likelihoods(lls, [len(c) for c in choices])),
        "gold": gold,
        "gold_probability": rounded(choice_probability(lls, gold)),
        "gold_margin": rounded(_gold_margin(lls, gold)),
        "scores": scores,
        "gate_frozen_weight": rounded(reading.frozen_weight()),
    }


@dataclass(eq=False, repr=False)
class MultipleChoice(TaskKind):
    """Every option of every question scored by its log-likelihood, nothing generated (the kind of
    `answer_type: multiple_choice`)."""

    unit: ClassVar[str] = "q"
    row_type: ClassVar[type] = ChoiceReading
    journal_format: ClassVar[int] = JOURNAL_FORMAT

    def __post_init__(self) -> None:
        self.questions = [self.task.requests(r) for r in self.records]
        self.choices = [self.task.choices(r) for r in self.records]
        self.golds = [self.task.gold_index(r) for r in self.records]

    def journal_key(self) -> tuple[dict[str, Any], list[str]]:
        details = {"chat_template": self.formatter.use_chat_template, "answer_type": self.task.answer_type}
        texts = [text for q in self.questions for pair in request_texts(self.formatter, q) for text in pair]
        return details, texts

    def fits(self, index: int, row: dict[str, Any]) -> bool:  # one log-likelihood per option of this question
        return len(row["log_likelihoods"]) == len(self.questions[index])

    def run(self, todo: list[int], keep) -> None:
        questions = [self.questions[i] for i in todo]
        read_choices(self.model, self.formatter, questions, self.batch_size, keep, self.open_frozen_states())

    def report(self, done: dict[int, ChoiceReading]) -> tuple[dict[str, float], list[dict[str, Any]]]:
        readings = [done[i] for i in range(len(self.records))]
        lengths = [[len(c) for c in options] for options in self.choices]
        metrics, per_question = choice_metrics(self.task, self.golds, lengths, readings)
        contexts = [[context for context, _ in q] for q in self.questions]
        examples = [
            question_row(
                i,
                record,
                contexts[i][0] if len(set(contexts[i])) == 1 else contexts[i],
                self.choices[i],
                self.golds[i],
                readings[i],
                {name: values[i] for name, values in per_question.items()},
            )
            for i, record in enumerate(self.records)
        ]
        return metrics, examples


__all__ = ["ChoiceReading", "MultipleChoice", "choice_metrics", "context_window", "read_choices"]
