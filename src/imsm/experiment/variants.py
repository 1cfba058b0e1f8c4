"""Evaluation variants of a cell: the same training run read at an earlier step, with another fusion,
with its adapter's change scaled by λ, or with its intruder dimensions reduced (`imsm.model.variant`).

In an experiment file a grid lists them under `variants`; `{}` is the adapter as trained:

    variants:
      - {}                                   # the final adapter, as trained
      - {step: 60}                           # the adapter after 60 optimizer steps (a snapshot)
      - {adapter_scale: 0.5}                 # the final adapter's change halved
      - {fusion: mean}                       # the two branches mixed 50/50 without a gate
      - {intruders: 0.5}                     # peft's reduce_intruder_dimension, λ = 0.5 (LoRA only)

Each variant is evaluated on every task of the grid's `evaluate`. A variant's key names it in the
cell's result.json (`variants.<key>.metrics`), e.g. "step=60", "adapter_scale=0.5,fusion=mean" or
"intruders=0.5". A field left out does not enter the key, so adding a field left every older key as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from imsm.config import FUSION_MODES
from imsm.errors import IMSMError
from imsm.model.intruders import check_mitigation_lambda

VARIANT_FIELDS = ("step", "fusion", "adapter_scale", "intruders")


@dataclass(frozen=True)
class Variant:
    """One way of reading a cell's training run. The default is the final adapter as trained."""

    step: int | None = None  # a snapshot's optimizer step; None: the end of training
    fusion: str | None = None  # None: the fusion the cell trained with
    adapter_scale: float = 1.0
    intruders: float | None = None  # λ of peft's reduce_intruder_dimension; None: not reduced

    @property
    def is_default(self) -> bool:
        return self == Variant()

    @property
    def key(self) -> str:
        """ "" for the default, else e.g. "step=60,adapter_scale=0.5" (fields in a fixed order)."""
        parts = []
        if self.step is not None:
            parts.append(f"step={self.step}")
        if self.fusion is not None:
            parts.append(f"fusion={self.fusion}")
        if self.adapter_scale != 1.0:
            parts.append(f"adapter_scale={self.adapter_scale:g}")
        if self.intruders is not None:
            parts.append(f"intruders={self.intruders:g}")
        return ",".join(parts)

    @classmethod
    def from_key(cls, key: str) -> Variant:
        """The variant a key names (the inverse of `key`)."""
        if not key:
            return cls()
        values: dict[str, Any] = dict(part.split("=", 1) for part in key.split(","))
        return cls(
            step=int(values["step"]) if "step" in values else None,
            fusion=values.get("fusion"),
            adapter_scale=float(values.get("adapter_scale", 1.0)),
            intruders=float(values["intruders"]) if "intruders" in values else None,
        )


def parse_variants(raw: Any, where: str, problems: list[str]) -> list[Variant]:
    """A grid's `variants:` list, each entry checked; problems are appended, not raised."""
    if raw is None:
        return [Variant()]
    if not isinstance(raw, list) or not raw:
        problems.append(f"{where}: variants must be a non-empty list of mappings, e.g. [{{}}, {{step: 60}}]")
        return []
    variants = []
    for index, entry in enumerate(raw):
        here = f"{where}.variants[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{here}: must be a mapping of {', '.join(VARIANT_FIELDS)} (or {{}} for as trained)")
            continue
        unknown = sorted(set(entry) - set(VARIANT_FIELDS))
        if unknown:
            problems.append(f"{here}: unknown field {unknown[0]!r} (known: {', '.join(VARIANT_FIELDS)})")
            continue
        step, fusion, scale = entry.get("step"), entry.get("fusion"), entry.get("adapter_scale", 1.0)
        known = len(problems)
        intruders = _intruders(entry.get("intruders"), here, problems)
        if len(problems) > known:
            continue
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
            problems.append(f"{here}: step must be a positive integer (an optimizer step), got {step!r}")
            continue
        if fusion is not None and fusion not in FUSION_MODES:
            problems.append(f"{here}: fusion must be one of {', '.join(FUSION_MODES)}, got {fusion!r}")
            continue
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 0:
            problems.append(f"{here}: adapter_scale must be a number >= 0 (0 = the base model), got {scale!r}")
            continue
        variants.append(Variant(step=step, fusion=fusion, adapter_scale=float(scale), intruders=intruders))
    return variants


def _intruders(value: Any, where: str, problems: list[str]) -> float | None:
    """A variant's `intruders` λ checked (None: not reduced); a bad one is appended to `problems`."""
    if value is None:
        return None
    try:
        return check_mitigation_lambda(value)
    except IMSMError as error:
        problems.append(f"{where}: intruders: {error}")
        return None
