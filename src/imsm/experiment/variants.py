"""Evaluation variants of a cell: the same training run read at an earlier step, with another fusion,
or with its adapter's change scaled by λ (`imsm.model.variant`).

In an experiment file a grid lists them under `variants`; `{}` is the adapter as trained:

    variants:
      - {}                                   # the final adapter, as trained
      - {step: 60}                           # the adapter after 60 optimizer steps (a snapshot)
      - {adapter_scale: 0.5}                 # the final adapter's change halved
      - {fusion: mean}                       # the two branches mixed 50/50 without a gate

Each variant is evaluated on every task of the grid's `evaluate`. A variant's key names it in the
cell's result.json (`variants.<key>.metrics`), e.g. "step=60" or "adapter_scale=0.5,fusion=mean".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from imsm.config import FUSION_MODES

VARIANT_FIELDS = ("step", "fusion", "adapter_scale")


@dataclass(frozen=True)
class Variant:
    """One way of reading a cell's training run. The default is the final adapter as trained."""

    step: int | None = None  # a snapshot's optimizer step; None: the end of training
    fusion: str | None = None  # None: the fusion the cell trained with
    adapter_scale: float = 1.0

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
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
            problems.append(f"{here}: step must be a positive integer (an optimizer step), got {step!r}")
            continue
        if fusion is not None and fusion not in FUSION_MODES:
            problems.append(f"{here}: fusion must be one of {', '.join(FUSION_MODES)}, got {fusion!r}")
            continue
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 0:
            problems.append(f"{here}: adapter_scale must be a number >= 0 (0 = the base model), got {scale!r}")
            continue
        variants.append(Variant(step=step, fusion=fusion, adapter_scale=float(scale)))
    return variants
