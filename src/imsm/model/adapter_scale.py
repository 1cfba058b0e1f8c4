"""Scale a trained adapter's change to the base model by λ: the free post-hoc baseline.

λ = 0 is the base model and λ = 1 the adapter as trained; values in between interpolate (the
"partial adaptation" / WiSE-FT trick: keep part of the gain and part of the base model without
training anything). Only methods whose change is exactly λ-scalable are accepted:

- LoRA and AdaLoRA add `scaling * B A x`, so multiplying `scaling` by λ scales the delta exactly;
  so does LoRAMoE (a LoRA type whose experts share `scaling`, weighted by a router that reads the
  layer's input, not the delta).
- (IA)3 multiplies activations by a learned vector l; l -> 1 + λ (l - 1) interpolates towards 1.

DoRA is refused: its magnitude vector rescales the whole weight, so scaling the low-rank part
does not move it towards the base model. Other tuners (VeRA, LoHa, ...) are refused likewise
rather than scaled in a way nobody has checked.
"""

from __future__ import annotations

import torch
from peft import PeftModel
from peft.tuners.ia3 import IA3Layer
from peft.tuners.lora import LoraLayer

from imsm.errors import IMSMError

SCALABLE_PEFT_TYPES = ("LORA", "ADALORA", "IA3")


def _peft_type(peft_model: PeftModel) -> str:
    config = peft_model.peft_config[peft_model.active_adapter]
    return str(getattr(config.peft_type, "value", config.peft_type)).upper()


def check_scalable(peft_model: PeftModel) -> None:
    """Raise IMSMError unless `scale_adapter` can scale this adapter exactly."""
    if not isinstance(peft_model, PeftModel):
        raise IMSMError("adapter_scale needs an adapter; pass --adapter DIR (a saved adapter directory)")
    peft_type = _peft_type(peft_model)
    config = peft_model.peft_config[peft_model.active_adapter]
    if peft_type == "LORA" and getattr(config, "use_dora", False):
        raise IMSMError(
            "adapter_scale cannot scale a DoRA adapter: its magnitude vector rescales the whole weight, so "
            "scaling the low-rank part does not interpolate towards the base model; use LoRA, AdaLoRA or (IA)3"
        )
    if peft_type not in SCALABLE_PEFT_TYPES:
        raise IMSMError(
            f"adapter_scale cannot scale a {peft_type} adapter; it supports LoRA, AdaLoRA, LoRAMoE (by scaling "
            "the low-rank delta) and (IA)3 (by interpolating its vectors towards 1)"
        )


@torch.no_grad()
def scale_adapter(peft_model: PeftModel, scale: float) -> int:
    """Scale the active adapter's change to the base model by `scale`, in place.

    Returns:
        How many adapted layers were scaled (0 would mean the adapter changes nothing).
    """
    check_scalable(peft_model)
    if not 0.0 <= float(scale):
        raise IMSMError(f"adapter_scale must be >= 0 (0 = the base model, 1 = the adapter), got {scale!r}")
    name, scaled = peft_model.active_adapter, 0
    for module in peft_model.modules():
        if isinstance(module, LoraLayer) and name in module.scaling:
            module.scaling[name] = module.scaling[name] * float(scale)
            scaled += 1
        elif isinstance(module, IA3Layer) and name in module.ia3_l:
            vector = module.ia3_l[name]
            vector.copy_(1.0 + float(scale) * (vector - 1.0))
            scaled += 1
    return scaled
