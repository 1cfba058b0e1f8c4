"""The `frontier:` section of an experiment file: what `imsm frontier` calls each arm, and which
variants of the vanilla adapter are the free baselines every gated arm is tested against.

    frontier:
      labels: {none: "{method}", imsm: "IMSM-{method}", mean: IMSM-mean}   # per trained fusion
      baselines:                          # variants of the vanilla adapter (fusion none), final length
        - {adapter_scale: 0.5}            # its change scaled by λ = 0.5
        - {fusion: mean, label: untrained mix}
        - {intruders: 0.5, label: "LoRA, intruders λ=0.5"}   # peft's reduce_intruder_dimension
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from typing import Any

from imsm.config import FUSION_MODES, GATED_FUSIONS
from imsm.errors import IMSMError
from imsm.experiment.variants import Variant
from imsm.model.intruders import check_mitigation_lambda

FIELDS = ("labels", "baselines")
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


@dataclass(frozen=True)
class Baseline:
    """A free variant of the vanilla adapter: read with another fusion, its change scaled by λ, or its
    intruder dimensions reduced by peft's `reduce_intruder_dimension` (keeping λ of each)."""

    fusion: str | None = None  # None: the vanilla adapter's own (no gate)
    adapter_scale: float = 1.0
    label: str | None = None  # None: named from the vanilla adapter's label
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

    def trained_label(self, method: str, fusion: str) -> str:
        """An arm's name from its peft method's label and the fusion it trained with."""
        return self.labels.get(fusion, "IMSM-{method} (" + fusion + ")").format(method=method)

    def baseline(self, mixed: str | None, scale: float, intruders: float | None = None) -> Baseline | None:
        """The declared baseline a variant (fusion, λ, intruders' λ) of the vanilla adapter is, or None."""
        wanted = (mixed, scale, intruders)
        return next((b for b in self.baselines if (b.fusion, b.adapter_scale, b.intruders) == wanted), None)


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
        elif any(name not in (None, "method") for _, name, _, _ in _fields(label)):
            problems.append(f"{where}: {label!r} names a placeholder other than {{method}}; write {{method}} or none")
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
        problems.append("frontier: must be a mapping with labels and/or baselines (see docs/experiments.md)")
        return FrontierSettings()
    for key in sorted(set(raw) - set(FIELDS), key=str):
        problems.append(f"frontier: unknown field {key!r} (known: {', '.join(FIELDS)})")
    baselines = raw.get("baselines") or []
    if not isinstance(baselines, list):
        problems.append(f"frontier.baselines: must be a list of variants of the vanilla adapter, e.g. {EXAMPLE}")
        baselines = []
    checked = [_baseline(entry, f"frontier.baselines[{i}]", problems) for i, entry in enumerate(baselines)]
    return FrontierSettings(_labels(raw.get("labels"), problems), tuple(b for b in checked if b is not None))


__all__ = ["Baseline", "FrontierSettings", "read_frontier"]
