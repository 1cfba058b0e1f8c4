"""Metrics as pure functions: per-example scores first, corpus aggregation second.

Per-example scorers of generated answers take a prediction, the gold answers and the task's
answer type and return a number (or, for corpus metrics such as F1 and MCC, a (predicted, gold)
label pair); aggregators turn the list of those into one figure. Text is compared after
SQuAD-style normalisation: lower-cased, punctuation and the articles a/an/the removed, whitespace
squeezed. Multiple-choice questions generate nothing: their scorers read each option's
log-likelihood, as lm-evaluation-harness's acc and acc_norm do.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from imsm.registry import Registry

# Answers the model generates, and how they are compared; then the tasks scored by log-likelihood.
GENERATED_ANSWER_TYPES = ("text", "yes_no", "number")
ANSWER_TYPES = (*GENERATED_ANSWER_TYPES, "multiple_choice", "drift")
# The scores where lower is better: negative log-likelihoods and KL divergences, in nats (the gold
# answer's NLL per token, and drift's NLL and KL). Every other score, metrics and likelihood scores
# alike (the gold option's log-likelihood, yes/no AUC), is higher-is-better. Said here once.
LOWER_IS_BETTER = frozenset({"gold_nll", "drift_nll", "drift_kl"})
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def yes_no_label(text: str) -> str | None:
    """ "yes" or "no": the first of the two words in the answer, or None if neither appears.

    The authors' scorer asked whether the substring "yes" occurs anywhere, which counts "eyes"
    and "yes or no" as yes; the first whole word is what a reader would take as the answer.
    """
    for word in normalize_answer(text).split():
        if word in ("yes", "no"):
            return word
    return None


# Numbers as written in answers: optional sign and dollar sign, thousands separators, decimals.
_NUMBER = r"[-−]?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_MARKED = [re.compile(r"####\s*(" + _NUMBER + ")"), re.compile(r"answer is\s*:?\s*(" + _NUMBER + ")", re.IGNORECASE)]


def canonical_number(text: str) -> str | None:
    """ "1,234.50" -> "1234.5", "-$7" -> "-7"; None if `text` is not a number."""
    cleaned = text.replace(",", "").replace("$", "").replace("−", "-").replace(" ", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def extract_number(text: str) -> str | None:
    """The final numeric answer of a math solution, canonicalised.

    Prefers the last "#### N", then the last "The answer is N", then the last number anywhere.
    """
    for pattern in _MARKED:
        found = pattern.findall(text)
        if found:
            return canonical_number(found[-1])
    found = re.findall(_NUMBER, text)
    return canonical_number(found[-1]) if found else None


def extract_answer(text: str, answer_type: str) -> str | None:
    """The part of an answer that is compared: a yes/no word, a number, or the normalised text."""
    if answer_type == "yes_no":
        return yes_no_label(text)
    if answer_type == "number":
        return extract_number(text)
    return normalize_answer(text)


def _contained(needle: str, haystack: str) -> bool:
    # Whole words only: gold "no" must not match "not", nor "18" match "118".
    return bool(needle) and f" {needle} " in f" {haystack} "


# ---------------------------------------------------------------------------------------------
# Per-example scores.


def accuracy(prediction: str, golds: Sequence[str], answer_type: str = "text") -> float:
    """1 if the extracted answer equals the extracted gold (any of them)."""
    predicted = extract_answer(prediction, answer_type)
    return float(predicted is not None and any(predicted == extract_answer(g, answer_type) for g in golds))


def exact_match(prediction: str, golds: Sequence[str], answer_type: str = "text") -> float:
    """1 if the whole normalised prediction equals a normalised gold (the paper's EM)."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(g) for g in golds))


def contains(prediction: str, golds: Sequence[str], answer_type: str = "text") -> float:
    """1 if a normalised gold appears, as whole words, in the normalised prediction."""
    predicted = normalize_answer(prediction)
    return float(any(_contained(normalize_answer(g), predicted) for g in golds))


def hit_at_5_words(prediction: str, golds: Sequence[str], answer_type: str = "text") -> float:
    """`contains` within the first five words only: a hit that long answers cannot buy."""
    first_words = " ".join(normalize_answer(prediction).split()[:5])
    return float(any(_contained(normalize_answer(g), first_words) for g in golds))


def token_f1(prediction: str, golds: Sequence[str], answer_type: str = "text") -> float:
    """SQuAD's bag-of-tokens F1, best over the golds."""
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        expected = normalize_answer(gold).split()
        common = sum((Counter(predicted) & Counter(expected)).values())
        if not predicted or not expected:
            best = max(best, float(predicted == expected))
        elif common:
            precision, recall = common / len(predicted), common / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def yes_no_pair(prediction: str, golds: Sequence[str], answer_type: str = "yes_no") -> tuple[int, int]:
    """(predicted, gold) with yes = 1; an answer with neither word counts as no."""
    return int(yes_no_label(prediction) == "yes"), int(yes_no_label(golds[0]) == "yes")


# ---------------------------------------------------------------------------------------------
# Per-question scores of multiple-choice questions, from each option's log-likelihood.


def best_choice(scores: Sequence[float]) -> int:
    """The index of the highest score; a tie goes to the first option (numpy's argmax, as lm-eval)."""
    return max(range(len(scores)), key=scores.__getitem__)


def normalized_log_likelihoods(log_likelihoods: Sequence[float], lengths: Sequence[int]) -> list[float]:
    """Each option's log-likelihood divided by its text's length in characters (lm-eval's acc_norm).

    lm-eval 0.4.13 divides by `len()` of the option string, i.e. characters, not UTF-8 bytes (its
    `acc_bytes` does those). An empty option would divide by zero: it counts as -inf, never chosen.
    """
    return [ll / length if length else -math.inf for ll, length in zip(log_likelihoods, lengths, strict=True)]


def choice_accuracy(log_likelihoods: Sequence[float], lengths: Sequence[int], gold: int) -> float:
    """1 if the most likely option is the gold one (lm-eval's acc)."""
    return float(best_choice(log_likelihoods) == gold)


def choice_accuracy_norm(log_likelihoods: Sequence[float], lengths: Sequence[int], gold: int) -> float:
    """1 if the option most likely per character is the gold one (lm-eval's acc_norm)."""
    return float(best_choice(normalized_log_likelihoods(log_likelihoods, lengths)) == gold)


def choice_probability(log_likelihoods: Sequence[float], index: int) -> float:
    """Softmax of the options' log-likelihoods at `index`: the probability the model gives that
    option among these options, which moving every option's log-likelihood alike cannot change."""
    top = max(log_likelihoods)
    weights = [math.exp(ll - top) for ll in log_likelihoods]
    return weights[index] / sum(weights)


# ---------------------------------------------------------------------------------------------
# Corpus aggregation.


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean: sample standard deviation / sqrt(n) (lm-eval's `mean_stderr`);
    NaN below two values."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = mean(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def _confusion(pairs: Sequence[tuple[int, int]]) -> tuple[int, int, int, int]:
    tp = sum(1 for p, g in pairs if p and g)
    fp = sum(1 for p, g in pairs if p and not g)
    fn = sum(1 for p, g in pairs if not p and g)
    tn = sum(1 for p, g in pairs if not p and not g)
    return tp, fp, fn, tn


def binary_f1(pairs: Sequence[tuple[int, int]]) -> float:
    """F1 of the positive ("yes") class over the corpus; 0 when nothing is predicted or gold."""
    tp, fp, fn, _ = _confusion(pairs)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_corrcoef(pairs: Sequence[tuple[int, int]]) -> float:
    """Matthews correlation over the corpus; 0 when a row or column of the confusion is empty."""
    tp, fp, fn, tn = _confusion(pairs)
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: the chance a random positive outranks a random negative
    (ties count half). NaN when one class is absent."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not positives or not negatives:
        return float("nan")
    ranked = sorted((s, i) for i, s in enumerate(scores))
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(ranked):  # average ranks over ties
        end = start
        while end + 1 < len(ranked) and ranked[end + 1][0] == ranked[start][0]:
            end += 1
        for k in range(start, end + 1):
            ranks[ranked[k][1]] = (start + end) / 2 + 1
        start = end + 1
    positive_rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    n_pos, n_neg = len(positives), len(negatives)
    return (positive_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass(frozen=True)
class Metric:
    """A metric: a per-example scorer and the aggregation over the corpus.

    Attributes:
        name: The registered name (used in task specs and result files).
        score: (prediction, golds, answer_type) -> per-example value of a generated answer;
            None for a metric of multiple-choice questions only.
        aggregate: list of per-example values -> corpus figure.
        percent: Whether the figure is a proportion, shown x100 in tables.
        answer_types: The answer types it applies to (None: every generated answer type).
        choice_score: (log-likelihoods, option lengths in characters, gold index) -> per-question
            value, for answer_type "multiple_choice".
    """

    name: str
    score: Callable[[str, Sequence[str], str], Any] | None
    aggregate: Callable[[Sequence[Any]], float] = mean
    percent: bool = True
    answer_types: tuple[str, ...] | None = None
    choice_score: Callable[[Sequence[float], Sequence[int], int], float] | None = None

    @property
    def supported_types(self) -> tuple[str, ...]:
        """The answer types it applies to, spelled out."""
        return self.answer_types if self.answer_types is not None else GENERATED_ANSWER_TYPES

    def applies_to(self, answer_type: str) -> bool:
        """Whether the metric is defined for answers of `answer_type`."""
        return answer_type in self.supported_types


METRICS: Registry[Metric] = Registry("metric")
for _metric in (
    # The same name for both kinds of task: a generated answer equal to the gold, or the gold
    # option the most likely of the options.
    Metric(
        "accuracy", accuracy, answer_types=(*GENERATED_ANSWER_TYPES, "multiple_choice"), choice_score=choice_accuracy
    ),
    Metric("accuracy_norm", None, answer_types=("multiple_choice",), choice_score=choice_accuracy_norm),
    Metric("exact_match", exact_match),
    Metric("contains", contains),
    Metric("hit@5", hit_at_5_words),
    Metric("token_f1", token_f1),
    Metric("f1", yes_no_pair, binary_f1, answer_types=("yes_no",)),
    Metric("mcc", yes_no_pair, matthews_corrcoef, percent=False, answer_types=("yes_no",)),
    # Drift from the base model: mean NLL and KL(base || model) per token, computed from documents
    # by imsm.evaluation.drift (no answer to score).
    Metric("drift_nll", None, percent=False, answer_types=("drift",)),
    Metric("drift_kl", None, percent=False, answer_types=("drift",)),
):
    METRICS.register(_metric.name, _metric)
