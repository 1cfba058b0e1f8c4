"""Metrics as pure functions: per-example scores first, corpus aggregation second.

Per-example scorers take a prediction, the gold answers and the task's answer type and return a
number (or, for corpus metrics such as F1 and MCC, a (predicted, gold) label pair); aggregators
turn the list of those into one figure. Text is compared after SQuAD-style normalisation:
lower-cased, punctuation and the articles a/an/the removed, whitespace squeezed.
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

ANSWER_TYPES = ("text", "yes_no", "number")
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
# Corpus aggregation.


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


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
    """A generation metric: a per-example scorer and the aggregation over the corpus.

    Attributes:
        name: The registered name (used in task specs and result files).
        score: (prediction, golds, answer_type) -> per-example value.
        aggregate: list of per-example values -> corpus figure.
        percent: Whether the figure is a proportion, shown x100 in tables.
        answer_types: The answer types it applies to (None: all).
    """

    name: str
    score: Callable[[str, Sequence[str], str], Any]
    aggregate: Callable[[Sequence[Any]], float] = mean
    percent: bool = True
    answer_types: tuple[str, ...] | None = None

    def applies_to(self, answer_type: str) -> bool:
        """Whether the metric is defined for answers of `answer_type`."""
        return self.answer_types is None or answer_type in self.answer_types


METRICS: Registry[Metric] = Registry("metric")
for _metric in (
    Metric("accuracy", accuracy),
    Metric("exact_match", exact_match),
    Metric("contains", contains),
    Metric("hit@5", hit_at_5_words),
    Metric("token_f1", token_f1),
    Metric("f1", yes_no_pair, binary_f1, answer_types=("yes_no",)),
    Metric("mcc", yes_no_pair, matthews_corrcoef, percent=False, answer_types=("yes_no",)),
):
    METRICS.register(_metric.name, _metric)
