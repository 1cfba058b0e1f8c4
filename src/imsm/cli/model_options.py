"""`ModelOptions`: the model a command runs (a base model, with an adapter directory on it if given, run
with a fusion, scaled or with its intruder dimensions reduced), checked when built and passed whole down to the load."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imsm.cli.options import (
    adapter_option,
    adapter_scale_option,
    check_options,
    device_option,
    dtype_option,
    fusion_override_option,
    model_option,
    reduce_intruders_option,
    trust_remote_code_option,
)
from imsm.model.siamese import IMSMModel
from imsm.model.variant import check_variant


@dataclass(kw_only=True)
class ModelOptions:
    """The model of `imsm eval`, `imsm generate`, `imsm chat`, an experiment's evaluations and lm-eval's
    `imsm` model type, for `imsm.model.variant.load_evaluated_model`. Building one checks the variant
    against the adapter's saved files, so a bad one fails before any data or model is loaded."""

    model: str = model_option()
    dtype: str = dtype_option()
    device: str | None = device_option()
    trust_remote_code: bool = trust_remote_code_option()
    adapter: str | None = adapter_option()
    fusion: str | None = fusion_override_option()
    adapter_scale: float = adapter_scale_option()
    reduce_intruders: float | None = reduce_intruders_option()

    def __post_init__(self) -> None:
        # The variant first: its messages suggest the fusion meant. A command's options check their
        # flags' choices before (argparse does on the command line, `check_options` on a YAML file).
        check_variant(self.adapter, self.fusion, self.adapter_scale, self.reduce_intruders)
        check_options(self)

    def describe(self, model: IMSMModel) -> dict[str, Any]:
        """What was loaded as `model`, for a result file's header: the fusion and dtype it runs with."""
        return {
            "model": self.model,
            "adapter": self.adapter,
            "fusion": model.fusion,
            "adapter_scale": self.adapter_scale,
            "reduce_intruders": self.reduce_intruders,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        }
