"""`IMSMConfig`: the options of the siamese model, validated when built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from imsm.errors import IMSMError
from imsm.registry import unknown_name_message

# "imsm": the query-aware gate of equation 4; "no-query" and "mean": the paper's ablations
# (Table 4: w/o query, w/o gate); "none": the tuned branch alone, i.e. vanilla PEFT.
FUSION_MODES = ("imsm", "no-query", "mean", "none")
# The fusions that learn a gate: an adapter trained with one can only be run with its own.
GATED_FUSIONS = ("imsm", "no-query")


@dataclass
class IMSMConfig:
    """How the frozen and the tuned branch are interwoven.

    Attributes:
        gate_rank: Rank r of the gate's low-rank map, W_A [4d, r] @ W_B [r, d]. The paper uses 8.
        fusion: One of "imsm" (query-aware gate, paper eq. 4), "no-query" (gate over
            concat(h_M, h_M') only), "mean" (0.5 h_M + 0.5 h_M', no gate) or "none" (the tuned
            branch alone: vanilla PEFT run through the same code).
        gate_dropout: Dropout applied after each of the gate's two projections while training.
            The paper does not mention it; the authors' code used 0.1 (0.0 for (IA)3).
    """

    gate_rank: int = 8
    fusion: str = "imsm"
    gate_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.fusion not in FUSION_MODES:
            raise IMSMError(unknown_name_message("fusion mode", str(self.fusion), list(FUSION_MODES)))
        if isinstance(self.gate_rank, bool) or not isinstance(self.gate_rank, int) or self.gate_rank < 1:
            raise IMSMError(f"gate_rank must be an integer >= 1, got {self.gate_rank!r}; the paper uses 8")
        if not 0.0 <= float(self.gate_dropout) < 1.0:
            raise IMSMError(f"gate_dropout must be in [0, 1), got {self.gate_dropout!r}")

    @property
    def has_gate(self) -> bool:
        """Whether this fusion learns a gate (and so saves `imsm_gate.safetensors`)."""
        return self.fusion in GATED_FUSIONS

    @property
    def is_siamese(self) -> bool:
        """Whether the frozen branch takes part at all."""
        return self.fusion != "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> IMSMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise IMSMError(f"unknown IMSMConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)
