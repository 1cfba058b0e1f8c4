"""Per-question scores kept with each result, for comparisons the per-seed means are too coarse for.

Three seeds give a paired t-test three pairs; the same hundred questions answered by both arms give
a hundred. `question_columns` stores, column by column, what every evaluated example scored (its
metrics, the gold answer's NLL, the yes/no margin, the gate's weight, the answer's length), small
enough to commit beside the summaries. `paired_over_questions` averages each question over the
seeds both arms finished and tests the per-question differences.

The question-level test conditions on the adapters that were trained: it says whether the
difference holds across questions for these runs, not whether it would survive other training
seeds. The seed-level test says the latter; the report shows both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from imsm.experiment.stats import PairedTest, paired_t_test

# Row fields kept (besides the metrics in `scores`); prompts, golds and texts stay in the work directory.
# Multiple-choice rows add the gold option's probability among the options.
KEPT_FIELDS = ("gold_nll", "yes_no_margin", "gate_frozen_weight", "gold_probability", "gold_margin")
GOLD_LOG_LIKELIHOOD = "gold_log_likelihood"  # multiple choice: the gold option's summed log-likelihood
ANSWER_CHARS = "answer_chars"


def _round(value: Any) -> Any:
    return round(value, 5) if isinstance(value, float) else value


def question_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Evaluation rows (`TaskResult.examples`) -> {"index": [...], metric or field: [...]}, in row order.

    Fields that are missing on every row (e.g. the yes/no margin of a QA task) are left out, and so
    are metrics that only mean something over the whole corpus (MCC, F1). Multiple-choice rows
    keep accuracy, accuracy_norm, the gold option's probability among the options, its margin over
    the best wrong option and its log-likelihood, and have no answer length; nor have drift rows
    (no answer) and the rows of a task evaluated without generation (prediction None)."""
    columns: dict[str, list[Any]] = {"index": [row["index"] for row in rows]}
    metric_names = list(dict.fromkeys(name for row in rows for name in row.get("scores", {})))
    for name in metric_names:
        values = [row.get("scores", {}).get(name) for row in rows]
        # Corpus-level metrics (MCC, F1) score an example as a (prediction, gold) pair; only
        # per-example numbers can be compared question by question.
        if all(v is None or isinstance(v, int | float) for v in values):
            columns[name] = [_round(v) for v in values]
    for name in KEPT_FIELDS:
        values = [_round(row.get(name)) for row in rows]
        if any(v is not None for v in values):
            columns[name] = values
    if rows and all("log_likelihoods" in row and isinstance(row.get("gold"), int) for row in rows):
        columns[GOLD_LOG_LIKELIHOOD] = [_round(float(row["log_likelihoods"][row["gold"]])) for row in rows]
    # Generated answers only: not option indices, nor the None of a task evaluated without generation.
    if any(isinstance(row.get("prediction"), str) for row in rows):
        columns[ANSWER_CHARS] = [len(row.get("prediction") or "") for row in rows]
    return columns


def values_by_question(columns: Mapping[str, list[Any]], name: str) -> dict[Any, float]:
    """question index -> float value of `name`, over the questions that have one."""
    values = columns.get(name)
    if values is None:
        return {}
    return {i: float(v) for i, v in zip(columns["index"], values, strict=True) if v is not None}


def paired_over_questions(
    treated: Mapping[int, Mapping[str, list[Any]]], control: Mapping[int, Mapping[str, list[Any]]], name: str
) -> tuple[PairedTest, int]:
    """Paired t-test of `name` over questions, each question averaged over the seeds both arms have.

    `treated` and `control` map seed -> question columns of one task. Returns the test (treated minus
    control) and the number of seeds used; questions that some used seed lacks are left out."""
    seeds = sorted(s for s in set(treated) & set(control) if name in treated[s] and name in control[s])
    if not seeds:
        return paired_t_test([], []), 0
    treated_values = [values_by_question(treated[s], name) for s in seeds]
    control_values = [values_by_question(control[s], name) for s in seeds]
    shared = set.intersection(*(set(v) for v in treated_values + control_values))
    questions = sorted(shared)
    treated_means = [sum(v[q] for v in treated_values) / len(seeds) for q in questions]
    control_means = [sum(v[q] for v in control_values) / len(seeds) for q in questions]
    return paired_t_test(treated_means, control_means), len(seeds)
