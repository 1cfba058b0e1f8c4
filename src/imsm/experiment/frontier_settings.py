"""The `frontier:` section of an experiment file: what `imsm frontier` calls each arm, which
variants of the vanilla adapter are the free baselines every gated arm is tested against, and which
score of the target measures learning.

    frontier:
      metric: gold_nll                    # the target's score (default: its first of accuracy, ...)
      labels: {none: "{method}", imsm: "IMSM-{method}", mean: IMSM-mean}   # per trained fusion
      baselines:                          # variants of the vanilla adapter (fusion none), final length
        - {adapter_scale: 0.5}            # its change scaled by λ = 0.5
        - {fusion: mean, label: untrained mix}
        - {intruders: 0.5, label: "LoRA, intruders λ=0.5"}   # peft's reduce_intruder_dimension

A label may name the peft method as {method}. In a study of several methods, a label without it that
arms of more than one method would share gets the method's label in front ("DoRA, untrained mix").
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from typing import Any

from imsm.config import FUSION_MODES, GATED_FUSIONS
from imsm.errors import IMSMError
from imsm.experiment.variants import Variant
from imsm.metrics import GENERATED_ANSWER_TYPES, METRICS
from imsm.model.intruders import check_mitigation_lambda
from imsm.registry import unknown_name_message

FIELDS = ("metric", "labels", "baselines")
BASELINE_FIELDS = ("fusion", "adapter_scale", "intruders", "label")
# An arm's name per fusion it trained with, where the file names none; {method} is the peft method's label.
# The grid report names its rows the same way.
DEFAULT_LABELS = {
    "none": "{method}",
    "imsm": "IMSM-{method}",
    "no-query": "IMSM-{method} (no query)",
    "mean": "IMSM-{method} (mean)",
}
# The fusions a vanilla adapter can be read with: they need no trained gate.
UNGATED = tuple(fusion for fusion in FUSION_MODES if fusion not in GATED_FUSIONS)
EXAMPLE = "[{adapter_scale: 0.5}, {fusion: mean, label: untrained mix}]"
# A target's scores from its teacher-forced pass, beside the metrics of its generated answers.
TEACHER_FORCED = ("gold_nll", "yes_no_auc")


def target_metrics() -> list[str]:
    """Every score a target (a generated-answer task) can be read by: the metrics of generated
    answers, then the teacher-forced scores."""
    generated = [n for n in METRICS.names() if any(METRICS.get(n).applies_to(t) for t in GENERATED_ANSWER_TYPES)]
    return generated + list(TEACHER_FORCED)


def target_metric_problem(metric: Any) -> str | None:
    """Why `metric` names no score of a target (`target_metrics`), with the nearest name; or None."""
    if not isinstance(metric, str) or not metric:
        return f"must name a score of the target such as accuracy or gold_nll, got {metric!r}"
    if metric not in target_metrics():
        return unknown_name_message("target metric", metric, target_metrics())
    return None


def metric_evaluation_problem(metric: str, task: str, generates: bool, likelihood: bool) -> str | None:
    """Why the evaluation settings never give `task` the score `metric`, or None."""
    if metric in TEACHER_FORCED and not likelihood:
        return f"{metric} comes from the likelihood pass, which eval.likelihood: false turns off"
    if metric not in TEACHER_FORCED and not generates:
        return f"{metric} scores generated answers, but {task} is evaluated without generation; use gold_nll"
    return None


@dataclass(frozen=True)
class Baseline:
    """A free variant of the vanilla adapter: read with another fusion, its change scaled by λ, or its
    intruder dimensions reduced by peft's `reduce_intruder_dimension` (keeping λ of each)."""

    fusion: str | None = None  # None: the vanilla adapter's own (no gate)
    adapter_scale: float = 1.0
    label: str | None = None  # None: named from the vanilla adapter's label; may name {method}
    intruders: float | None = None  # None: not reduced

    @property
    def variant_key(self) -> str:
        """The key of the cell variant that reads it ("adapter_scale=0.5", "fusion=mean", "intruders=0.5")."""
        return Variant(fusion=self.fusion, adapter_scale=self.adapter_scale, intruders=self.intruders).key


@dataclass(frozen=True)
class FrontierSettings:
    """The `frontier:` section, checked; the defaults where the file has none."""

    labels: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    baselines: tuple[Baseline, ...] = ()
    metric: str | None = None  # the target's score (`imsm frontier --metric` wins); None: the report's default

    def trained_label(self, method: str, fusion: str, shared: bool = False) -> str:
        """An arm's name from its peft method's label and the fusion it trained with; `shared`: arms of
        several methods train with that fusion (`method_label`)."""
        return method_label(self.labels.get(fusion, "IMSM-{method} (" + fusion + ")"), method, shared)

    def baseline(self, mixed: str | None, scale: float, intruders: float | None = None) -> Baseline | None:
        """The declared baseline a variant (fusion, λ, intruders' λ) of the vanilla adapter is, or None."""
        wanted = (mixed, scale, intruders)
        return next((b for b in self.baselines if (b.fusion, b.adapter_scale, b.intruders) == wanted), None)


def names_method(template: str) -> bool:
    return any(name == "method" for _, name, _, _ in _fields(template))


def method_label(template: str, method: str, shared: bool) -> str:
    """A label from the file filled with the peft method's label. One that does not name {method}
    but that arms of several methods would share (`shared`) is prefixed with the method, so that no
    two arms of a study are called alike."""
    label = template.format(method=method)
    return f"{method}, {label}" if shared and not names_method(template) else label


def _placeholder_problem(where: str, label: str) -> str | None:
    """Why a label names a placeholder other than {method}, or None."""
    if any(name not in (None, "method") for _, name, _, _ in _fields(label)):
        return f"{where}: {label!r} names a placeholder other than {{method}}; write {{method}} or none"
    return None


def _labels(raw: Any, problems: list[str]) -> dict[str, str]:
    if raw is None:
        return dict(DEFAULT_LABELS)
    if not isinstance(raw, dict):
        problems.append("frontier.labels: must map a fusion to its arm's label, e.g. {imsm: IMSM-{method}}")
        return dict(DEFAULT_LABELS)
    labels = dict(DEFAULT_LABELS)
    for fusion, label in raw.items():
        where = f"frontier.labels.{fusion}"
        if fusion not in FUSION_MODES:
            problems.append(f"frontier.labels: unknown fusion {fusion!r} (known: {', '.join(FUSION_MODES)})")
        elif not isinstance(label, str) or not label:
            problems.append(f"{where}: must be a non-empty string such as IMSM-{{method}}, got {label!r}")
        elif problem := _placeholder_problem(where, label):
            problems.append(problem)
        else:
            labels[str(fusion)] = label
    return labels


def _fields(template: str) -> list[tuple[Any, ...]]:
    try:
        return list(string.Formatter().parse(template))
    except ValueError:
        return [("", "?", "", None)]  # malformed braces: reported as a stray placeholder


def _baseline(entry: Any, where: str, problems: list[str]) -> Baseline | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: must be a mapping of {', '.join(BASELINE_FIELDS)}, e.g. {{adapter_scale: 0.5}}")
        return None
    unknown = sorted(set(entry) - set(BASELINE_FIELDS), key=str)
    if unknown:
        why = "; a baseline is read at the final length" if "step" in unknown else ""
        problems.append(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(BASELINE_FIELDS)}){why}")
        return None
    fusion, scale, label = entry.get("fusion"), entry.get("adapter_scale", 1.0), entry.get("label")
    intruders = entry.get("intruders")
    if intruders is not None:
        try:
            intruders = check_mitigation_lambda(intruders)
        except IMSMError as error:
            problems.append(f"{where}: intruders: {error}")
            return None
        if scale != 1.0:
            problems.append(f"{where}: intruders and adapter_scale are two mitigations; give a baseline one of them")
            return None
    if fusion is not None and fusion not in UNGATED:
        problems.append(
            f"{where}: fusion {fusion!r} needs a trained gate; a vanilla adapter takes {' or '.join(UNGATED)}"
        )
    elif isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 0:
        problems.append(f"{where}: adapter_scale must be a number >= 0 (0 = the base model), got {scale!r}")
    elif label is not None and (not isinstance(label, str) or not label):
        problems.append(f"{where}: label must be a non-empty string, got {label!r}")
    elif label is not None and (problem := _placeholder_problem(f"{where}.label", label)):
        problems.append(problem)
    elif fusion in (None, "none") and scale == 1.0 and intruders is None:
        problems.append(f"{where}: is the vanilla adapter as trained; give fusion: mean, an adapter_scale or intruders")
    else:
        return Baseline(fusion, float(scale), label, intruders)
    return None


def read_frontier(raw: Any, problems: list[str]) -> FrontierSettings:
    """The `frontier:` section checked; problems are appended, not raised."""
    if raw is None:
        return FrontierSettings()
    if not isinstance(raw, dict):
        problems.append("frontier: must be a mapping with metric, labels and/or baselines (see docs/experiments.md)")
        return FrontierSettings()
    for key in sorted(set(raw) - set(FIELDS), key=str):
        problems.append(f"frontier: unknown field {key!r} (known: {', '.join(FIELDS)})")
    baselines = raw.get("baselines") or []
    if not isinstance(baselines, list):
        problems.append(f"frontier.baselines: must be a list of variants of the vanilla adapter, e.g. {EXAMPLE}")
        baselines = []
    checked = [_baseline(entry, f"frontier.baselines[{i}]", problems) for i, entry in enumerate(baselines)]
    metric = raw.get("metric")
    if metric is not None and (problem := target_metric_problem(metric)):
        problems.append(f"frontier.metric: {problem}")
        metric = None
    labels = _labels(raw.get("labels"), problems)
    return FrontierSettings(labels, tuple(b for b in checked if b is not None), metric)


__all__ = [
    "Baseline",
    "FrontierSettings",
    "method_label",
    "metric_evaluation_problem",
    "read_frontier",
    "target_metric_problem",
    "target_metrics",
]
