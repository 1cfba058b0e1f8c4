"""One saved adapter, evaluated another way: with another fusion, its change scaled by λ, or its
intruder dimensions reduced.

These are the free baselines a practitioner would try before training anything new:

- `fusion="none"` runs any adapter as vanilla PEFT (an IMSM adapter without its frozen branch);
- `fusion="mean"` mixes the two branches' hidden states 50/50 without a gate: on a vanilla
  adapter that is the *untrained* 50/50 mix;
- `adapter_scale=λ` interpolates between the base model (0) and the adapter (1), see
  `imsm.model.adapter_scale`;
- `reduce_intruders=λ` applies peft's own mitigation, `reduce_intruder_dimension`, keeping λ of
  each intruder direction of a vanilla LoRA adapter, see `imsm.model.intruders`.

`imsm` and `no-query` need a gate trained that way, so they are only accepted on an adapter trained
with that fusion. Everything is checked from the saved files before the slow model load.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from imsm.checked_files import read_json
from imsm.config import FUSION_MODES, GATED_FUSIONS, IMSMConfig
from imsm.errors import IMSMError
from imsm.model import intruders
from imsm.model.adapter_scale import check_scalable, scale_adapter
from imsm.model.load import load_model_and_tokenizer
from imsm.model.persist import PEFT_CONFIG_FILE, REMEDY, check_adapter_directory, read_imsm_config
from imsm.model.siamese import IMSMModel
from imsm.registry import unknown_name_message

if TYPE_CHECKING:
    from imsm.cli.model_options import ModelOptions

GATE_FREE_FUSIONS = ("none", "mean")


def saved_fusion(adapter: str | Path | None) -> str:
    """The fusion an adapter directory was trained with ("none" for a plain peft adapter)."""
    if adapter is None:
        return "none"
    saved = read_imsm_config(check_adapter_directory(adapter)) or {}
    return str(saved.get("imsm", {}).get("fusion", "none"))


def check_variant(
    adapter: str | Path | None,
    fusion: str | None = None,
    adapter_scale: float = 1.0,
    reduce_intruders: float | None = None,
) -> str:
    """Refuse, with the fix, a variant the saved files cannot give; return the fusion to run.

    Args:
        adapter: the adapter directory, or None for the base model.
        fusion: None for the adapter's own, else one of `FUSION_MODES`.
        adapter_scale: λ for `scale_adapter`; 1 leaves the adapter as trained.
        reduce_intruders: λ for `imsm.model.intruders.reduce_intruders`; None leaves the adapter as trained.
    """
    if fusion is not None and fusion not in FUSION_MODES:
        raise IMSMError(unknown_name_message("fusion", str(fusion), list(FUSION_MODES)))
    number = isinstance(adapter_scale, int | float) and not isinstance(adapter_scale, bool)
    if not number or not math.isfinite(adapter_scale):
        raise IMSMError(f"adapter_scale must be a number (0 = the base model, 1 = the adapter), got {adapter_scale!r}")
    if adapter_scale < 0:
        raise IMSMError(f"adapter_scale must be >= 0 (0 = the base model, 1 = the adapter), got {adapter_scale!r}")
    own = saved_fusion(adapter)
    if adapter is None:
        if fusion not in (None, "none"):
            raise IMSMError(f"fusion {fusion!r} needs an adapter; pass --adapter DIR (a saved adapter directory)")
        if adapter_scale != 1:
            raise IMSMError("adapter_scale needs an adapter; pass --adapter DIR (a saved adapter directory)")
        _check_reducible(adapter, adapter_scale, reduce_intruders)
        return "none"
    _check_reducible(adapter, adapter_scale, reduce_intruders)
    if fusion in GATED_FUSIONS and fusion != own:
        raise IMSMError(
            f"fusion {fusion!r} needs a gate trained as {fusion!r}, but {adapter} holds a {own!r} adapter; "
            "leave the fusion out to use the adapter's own, or choose none or mean"
        )
    if adapter_scale != 1:
        _check_scalable_on_disk(Path(adapter))
    return own if fusion is None else fusion


def _check_reducible(adapter: str | Path | None, adapter_scale: float, reduce_intruders: float | None) -> None:
    """`reduce_intruders`'s refusals from adapter_config.json alone, before any model is built."""
    if reduce_intruders is None:
        return
    intruders.check_mitigation_lambda(reduce_intruders)
    if adapter is None:
        raise IMSMError("reduce_intruders needs an adapter; pass --adapter DIR (a saved LoRA adapter directory)")
    if adapter_scale != 1:
        # Two post-hoc mitigations at once is no baseline anybody runs, and their order would matter.
        raise IMSMError("reduce_intruders and adapter_scale are two mitigations; choose one (leave the other out)")
    config = read_json(Path(adapter) / PEFT_CONFIG_FILE, fix=REMEDY)
    why = intruders.refusal(str(config.get("peft_type", "")), config)
    if why is not None:
        raise IMSMError(f"{why} ({adapter})")


def _check_scalable_on_disk(adapter: Path) -> None:
    """`check_scalable`'s verdict from adapter_config.json alone, before any model is built."""
    path = adapter / PEFT_CONFIG_FILE
    config = read_json(path, fix=REMEDY)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type == "LORA" and config.get("use_dora"):
        raise IMSMError(
            f"adapter_scale cannot scale the DoRA adapter in {adapter}: its magnitude vector rescales the whole "
            "weight, so scaling the low-rank part does not interpolate towards the base model"
        )
    if peft_type not in ("LORA", "ADALORA", "IA3"):
        raise IMSMError(
            f"adapter_scale cannot scale the {peft_type or 'unknown'} adapter in {adapter}; it supports LoRA, "
            "AdaLoRA and (IA)3"
        )


def apply_variant(
    model: IMSMModel, fusion: str | None = None, adapter_scale: float = 1.0, reduce_intruders: float | None = None
) -> IMSMModel:
    """`model` with another fusion and/or its adapter's change scaled by λ or its intruders reduced.

    The returned model shares `model`'s weights, and the scaling and the reduction are done in place:
    `model` itself changes too. Load the adapter again to get it back as trained.
    """
    if fusion is not None and fusion not in FUSION_MODES:
        raise IMSMError(unknown_name_message("fusion", str(fusion), list(FUSION_MODES)))
    current = model.imsm_config.fusion
    if fusion is not None and fusion != current:
        if fusion not in GATE_FREE_FUSIONS:
            raise IMSMError(f"fusion {fusion!r} needs a gate trained that way; this model was trained as {current!r}")
        if not model.has_adapter and fusion != "none":
            raise IMSMError(f"fusion {fusion!r} needs an adapter; this model has none")
        config = IMSMConfig(gate_rank=model.imsm_config.gate_rank, fusion=fusion)
        model = IMSMModel(model.peft_model, config).train(model.training)
    if reduce_intruders is not None:
        if adapter_scale != 1:
            raise IMSMError("reduce_intruders and adapter_scale are two mitigations; choose one (leave the other out)")
        found, layers = intruders.reduce_intruders(model.peft_model, reduce_intruders)
        if not found:  # the variant then reads the adapter as trained: say so rather than let it pass for a baseline
            print(
                f"imsm: peft's reduce_intruder_dimension found no intruder dimension in any of the adapter's "
                f"{layers} LoRA layers; the adapter is unchanged",
                file=sys.stderr,
            )
    if adapter_scale != 1:
        check_scalable(model.peft_model)
        scale_adapter(model.peft_model, adapter_scale)
    return model


def load_evaluated_model(options: ModelOptions) -> tuple[IMSMModel, object]:
    """The model to evaluate, in eval mode, and its tokenizer: the base model alone (no adapter), or
    the adapter as trained, or one of its variants. `options` checked the variant when it was built."""
    base, tokenizer = load_model_and_tokenizer(options.model, options.dtype, options.device, options.trust_remote_code)
    if options.adapter is None:
        return IMSMModel(base, IMSMConfig(fusion="none")).eval(), tokenizer  # the same code path, no adapter
    model = IMSMModel.from_pretrained(base, str(options.adapter))
    variant = apply_variant(model, options.fusion, options.adapter_scale, options.reduce_intruders)
    return variant.eval(), tokenizer
