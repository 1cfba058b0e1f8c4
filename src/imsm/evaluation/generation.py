"""Evaluating a model on tasks: greedy generation scored by the task's metrics, plus scores
that do not depend on answer length.

For every example the model generates an answer (batched, KV-cached, greedy), which the task's
metrics score. A teacher-forced reading of the task's target answer gives its likelihood: its
mean negative log-likelihood per token, and for yes/no tasks the first-token margin
log p(yes) - log p(no), whose AUC over the corpus ignores any global yes/no bias. Both read the
same prompt, so one `IMSMModel.score_continuations` call per batch encodes it once and returns
the answer and the scores together. Without generation (`Generation.generate` False) only the
teacher-forced reading runs: nothing is decoded, and the task has no answers to score; it then
reads the frozen branch's states from a study's store (`imsm.evaluation.frozen_states`) where one
is given, as multiple-choice scoring does, since nothing has to be decoded token by token. For a gated
IMSM model the teacher-forced reading also takes the gate: the mean weight g it gives the frozen
branch (h = g h_frozen + (1 - g) h_tuned) over the target's tokens and features, which says how
much of each answer comes from the base model's memory. Turning the per-example outcomes into a
task's metrics is `task_metrics`, a pure function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from imsm.errors import IMSMError
from imsm.evaluation.frozen_states import TaskStates, state_key
from imsm.evaluation.kind import TaskKind
from imsm.evaluation.results import rounded
from imsm.evaluation.scoring import add_frozen_states
from imsm.generate import left_padded
from imsm.metrics import METRICS, mean, roc_auc, yes_no_label
from imsm.model.siamese import IMSMModel
from imsm.prompting import PromptFormatter
from imsm.tasks.base import Task

YES_WORDS = ("yes", "Yes", "YES")
NO_WORDS = ("no", "No", "NO")

# Bumped when the journal's rows change meaning, so an older journal is started afresh.
JOURNAL_FORMAT = 2


@dataclass
class ExampleOutcome:
    """What evaluating one example gave: its answer and, when scored, its target's scores.

    Attributes:
        prediction: The greedy answer, stripped; None where nothing was generated.
        gold_nll: Mean negative log-likelihood per target token; None when not scored.
        yes_no_margin: log p(yes) - log p(no) at the answer's first token, for yes/no tasks.
        frozen_weight: The gate's mean weight on the frozen branch over the target's tokens.
    """

    prediction: str | None
    gold_nll: float | None = None
    yes_no_margin: float | None = None
    frozen_weight: float | None = None


def _word_token_ids(tokenizer, words: Sequence[str], formatter: PromptFormatter) -> list[int]:
    """Token ids that spell one of `words` on their own, as the answer's first token would."""
    ids = set()
    for word in words:
        for text in (word, " " + word):
            encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1:
                ids.add(encoded[0])
        first = formatter.answer_ids(word)
        if first:
            ids.add(first[0])
    return sorted(ids)


def _evaluate_batches(
    model: IMSMModel,
    formatter: PromptFormatter,
    prompts: Sequence[str],
    targets: Sequence[str] | None,
    max_new_tokens: int,
    batch_size: int,
    yes_no: bool,
    on_batch_done: Callable[[list[int], list[ExampleOutcome]], None] | None,
    frozen_states: TaskStates | None = None,
) -> list[ExampleOutcome]:
    """Answer (when `max_new_tokens`) and score (when `targets`) each prompt from one prefill.

    Prompts are batched by length, longest first, so little padding is decoded. An empty target
    has no likelihood: its scores stay None. With `targets` and no `max_new_tokens` nothing is
    decoded, and the predictions are None; `frozen_states` then holds (or is given) the frozen
    branch's states for each prompt and target, and only the tuned branch runs per batch.
    """
    tokenizer = formatter.tokenizer
    pad_id = formatter.pad_id
    yes_ids = _word_token_ids(tokenizer, YES_WORDS, formatter) if yes_no else []
    no_ids = _word_token_ids(tokenizer, NO_WORDS, formatter) if yes_no else []
    encoded = [formatter.prompt_ids(p) for p in prompts]
    target_ids = [formatter.answer_ids(t) for t in targets] if targets is not None else None
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    outcomes: list[ExampleOutcome] = [ExampleOutcome("")] * len(prompts)
    # A row without a target scores a one-token stand-in (free: it needs no forward) and
    # discards it, so the batch stays one call.
    scored = [target or [pad_id] for target in target_ids] if target_ids is not None else None
    if scored is None or max_new_tokens > 0:
        frozen_states = None  # decoding needs the frozen branch at every new token
    if frozen_states is not None:
        add_frozen_states(model, [[(encoded[i], scored[i])] for i in order], pad_id, frozen_states, batch_size)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, attention_mask = left_padded([encoded[i] for i in rows], pad_id)
        width = input_ids.shape[1]
        continuations = [[scored[i]] for i in rows] if scored is not None else None
        frozen = None
        if frozen_states is not None:
            frozen = [frozen_states.prompt_states([state_key(encoded[i], scored[i])]) for i in rows]
        if continuations is None:
            sequences = model.generate(
                input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
            )
            scores = None
        else:
            scores = model.score_continuations(
                input_ids.to(model.device),
                attention_mask.to(model.device),
                continuations,
                first_token_log_probs=yes_no,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                frozen_states=frozen,
            )
            sequences = scores.sequences
        texts: list[str | None] = [None] * len(rows)
        if sequences is not None:
            texts = [t.strip() for t in tokenizer.batch_decode(sequences[:, width:], skip_special_tokens=True)]
        batch = []
        for row, index in enumerate(rows):
            outcome = ExampleOutcome(texts[row])
            if scores is not None and target_ids[index]:
                outcome.gold_nll = float(-scores.log_probs[row][0].mean())
                outcome.frozen_weight = scores.frozen_weights[row][0]
                if yes_no:
                    first = scores.first_log_probs[row][0]  # [V], the answer's first token
                    outcome.yes_no_margin = float(
                        torch.logsumexp(first[yes_ids], 0) - torch.logsumexp(first[no_ids], 0)
                    )
            outcomes[index] = outcome
            batch.append(outcome)
        if on_batch_done is not None:
            on_batch_done(rows, batch)
    return outcomes


@torch.no_grad()
def score_targets(
    model: IMSMModel,
    formatter: PromptFormatter,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 8,
    yes_no: bool = False,
) -> tuple[list[float], list[float | None], list[float | None]]:
    """Teacher-forced scores of `targets` after `prompts`, without generating.

    Returns:
        (mean NLL per target token in nats, NaN for an empty target; first-token yes-vs-no
        log-odds margin or None; mean gate weight on the frozen branch over the target's
        tokens, or None without a gate).
    """
    outcomes = _evaluate_batches(model, formatter, prompts, targets, 0, batch_size, yes_no, None)
    nll = [math.nan if o.gold_nll is None else o.gold_nll for o in outcomes]
    return nll, [o.yes_no_margin for o in outcomes], [o.frozen_weight for o in outcomes]


@torch.no_grad()
def answer_and_score(
    model: IMSMModel,
    formatter: PromptFormatter,
    prompts: Sequence[str],
    targets: Sequence[str] | None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    yes_no: bool = False,
    on_batch_done: Callable[[list[int], list[ExampleOutcome]], None] | None = None,
    frozen_states: TaskStates | None = None,
) -> list[ExampleOutcome]:
    """Greedy answers and the targets' scores in one pass: each prompt is encoded once.

    `targets` None skips the scores. After each batch `on_batch_done(indices, outcomes)`
    receives the batch's prompt indices and their whole outcomes. `frozen_states` serves the
    scores alone (`max_new_tokens` 0); with decoding it is not read.
    """
    return _evaluate_batches(
        model, formatter, prompts, targets, max_new_tokens, batch_size, yes_no, on_batch_done, frozen_states
    )


def task_metrics(
    task: Task,
    golds: Sequence[Sequence[str]],
    outcomes: Sequence[ExampleOutcome],
    likelihood: bool,
    generated: bool = True,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """A task's corpus metrics, and each metric's per-example scores, from the examples' outcomes.

    Without `generated` answers there is nothing for the task's metrics to score: only the
    teacher-forced scores are reported, never an accuracy of empty answers."""
    predictions = [o.prediction for o in outcomes]
    metric_names = list(task.metrics) if generated else []
    if generated and task.answer_type == "text" and "hit@5" not in metric_names:
        metric_names.append("hit@5")  # the length-independent companion of "contains"
    per_example = {
        name: [METRICS.get(name).score(p, g, task.answer_type) for p, g in zip(predictions, golds, strict=True)]
        for name in metric_names
    }
    metrics = {name: METRICS.get(name).aggregate(values) for name, values in per_example.items()}
    if generated:
        metrics["answer_chars"] = mean([len(p) for p in predictions])
    if likelihood:
        metrics["gold_nll"] = mean([o.gold_nll for o in outcomes if o.gold_nll is not None])
        weights = [o.frozen_weight for o in outcomes if o.frozen_weight is not None]
        if weights:
            metrics["gate_frozen_weight"] = mean(weights)
    if task.answer_type == "yes_no":
        gold_yes = [int(yes_no_label(g[0]) == "yes") for g in golds]
        if generated:
            metrics["predicted_yes_rate"] = mean([float(yes_no_label(p) == "yes") for p in predictions])
        metrics["gold_yes_rate"] = mean([float(y) for y in gold_yes])
        if likelihood:
            margins = [o.yes_no_margin for o in outcomes]
            metrics["yes_no_auc"] = roc_auc(margins, gold_yes)
            metrics["yes_no_margin"] = mean(margins)
    return metrics, per_example


@dataclass(eq=False, repr=False)
class Generation(TaskKind):
    """Generated answers scored by the task's metrics, with the target's likelihood beside them
    (the kind of every answer type that is neither multiple choice nor drift).

    Attributes:
        max_new_tokens: The answer's cap; the task's own when None.
        likelihood: Whether to score the target answer teacher-forced too.
        generate: Whether to generate answers at all; False runs the teacher-forced pass alone
            (the target's NLL, and the yes/no margin where it applies), so `likelihood` must be on.
    """

    max_new_tokens: int | None = None
    likelihood: bool = True
    generate: bool = True

    unit: ClassVar[str] = "ex"
    row_type: ClassVar[type] = ExampleOutcome
    journal_format: ClassVar[int] = JOURNAL_FORMAT

    def __post_init__(self) -> None:
        if not (self.generate or self.likelihood):
            raise IMSMError(
                f"{self.task.name}: without generation and without the likelihood pass nothing is evaluated; "
                "turn one of them on"
            )
        self.max_new_tokens = self.max_new_tokens or self.task.max_new_tokens
        self.prompts = [self.task.prompt(r) for r in self.records]
        self.golds = [self.task.golds(r) for r in self.records]
        self.targets = [self.task.target(r) for r in self.records] if self.likelihood else None

    @property
    def generated(self) -> bool:
        return self.generate

    def journal_key(self) -> tuple[dict[str, Any], list[str]]:
        details: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "likelihood": self.likelihood}
        if not self.generate:  # said only when off, so the journals of generating runs keep their fingerprint
            details = {"likelihood": True, "generate": False}
        return details, self.prompts + (self.targets or [])

    def run(self, todo: list[int], keep) -> None:
        yes_no = self.task.answer_type == "yes_no"
        targets = None if self.targets is None else [self.targets[i] for i in todo]
        prompts = [self.prompts[i] for i in todo]
        max_new_tokens = self.max_new_tokens if self.generate else 0  # 0: the teacher-forced pass alone
        states = None if self.generate else self.open_frozen_states()
        answer_and_score(
            self.model,
            self.formatter,
            prompts,
            targets,
            max_new_tokens,
            self.batch_size,
            yes_no,
            keep,
            frozen_states=states,
        )

    def report(self, done: dict[int, ExampleOutcome]) -> tuple[dict[str, float], list[dict[str, Any]]]:
        outcomes = [done[i] for i in range(len(self.records))]
        metrics, per_example = task_metrics(self.task, self.golds, outcomes, self.likelihood, self.generate)
        examples = [
            {
                "index": i,
                "source": record.get("_source"),
                "prompt": self.prompts[i],
                "prediction": outcomes[i].prediction,
                "golds": self.golds[i],
                "scores": {name: values[i] for name, values in per_example.items()},
                "gold_nll": rounded(outcomes[i].gold_nll),
                "yes_no_margin": rounded(outcomes[i].yes_no_margin),
                "gate_frozen_weight": rounded(outcomes[i].frozen_weight),
            }
            for i, record in enumerate(self.records)
        ]
        return metrics, examples
