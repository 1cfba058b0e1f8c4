"""peft's own post-hoc mitigation of forgetting, as a free baseline: `reduce_intruder_dimension`.

"LoRA vs Full Fine-tuning: An Illusion of Equivalence" finds that LoRA adds *intruder dimensions*:
top singular vectors of W + ΔW that no singular vector of W resembles. peft 0.21 ships the fix a
LoRA user already has in hand: keep λ times the intruder part of W + ΔW (so a lower λ removes
more, whatever the docstring's wording suggests) and refit the adapter's B A at its rank.

peft writes the result into a second adapter and activates it. Everything else in imsm (saving,
`active_adapter`, the branch router) expects the one adapter it loaded, so `reduce_intruders`
copies the reduced B and A back into that adapter and deletes the second one: the model ends with
one adapter, under its old name, and the frozen branch (the base layers) is untouched.

Only vanilla LoRA is accepted, each refusal naming the method:

- (IA)3, AdaLoRA, VeRA, ...: peft raises (their change is not one B A per layer);
- DoRA: peft would refit B A and silently drop what the magnitude vector does;
- LoRAMoE: a router weighs its experts per token, so its change is no single ΔW.

A gated IMSM adapter is accepted: its tuned branch is a plain peft LoRA model on the same,
untouched base weights, and the function reads only those weights and that B A; the gate lives
outside the peft model and is kept as trained (it was trained on the unreduced branch, so what it
does with the reduced one is an empirical question, as for `adapter_scale`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from imsm.errors import IMSMError

WHAT = "reduce_intruders (peft's reduce_intruder_dimension)"
PEFT_DEFAULT = 0.75  # peft's own `mitigation_lambda`
SCRATCH_ADAPTER = "imsm_intruder_reduced"  # peft's output, copied back and deleted at once


def check_mitigation_lambda(value: Any) -> float:
    """The λ of `reduce_intruders` checked: the share of each intruder direction kept, in [0, 1]."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not 0 <= value <= 1:
        raise IMSMError(
            f"reduce_intruders must be the share of each intruder direction kept, a number in [0, 1] "
            f"({PEFT_DEFAULT} is peft's default; lower removes more), got {value!r}"
        )
    return float(value)


def refusal(peft_type: str, config: dict[str, Any]) -> str | None:
    """Why an adapter with this peft_type and adapter_config.json cannot be reduced, or None.

    Reads only the config, so `imsm eval` and an experiment refuse before any model is loaded."""
    peft_type = peft_type.upper()
    if peft_type != "LORA":
        return f"{WHAT} works on vanilla LoRA adapters only, not {peft_type or 'an unknown method'}"
    if config.get("use_dora"):
        return (
            f"{WHAT} cannot reduce a DoRA adapter: it refits B A only and would silently drop what the "
            "magnitude vector does; use a vanilla LoRA adapter"
        )
    if "num_experts" in config:
        return f"{WHAT} cannot reduce a LoRAMoE adapter: its router mixes experts per token, so it has no single ΔW"
    return None


def _check_peft_model(peft_model: Any) -> str:
    """The name of the one adapter to reduce, or IMSMError naming why it cannot be."""
    if not isinstance(peft_model, PeftModel):
        raise IMSMError(f"{WHAT} needs an adapter; pass --adapter DIR (a saved LoRA adapter directory)")
    if len(peft_model.peft_config) != 1:
        raise IMSMError(f"{WHAT} reduces a model with one adapter; this one has {sorted(peft_model.peft_config)}")
    name = peft_model.active_adapter
    config = peft_model.peft_config[name]
    why = refusal(str(getattr(config.peft_type, "value", config.peft_type)), vars(config))
    if why is not None:
        raise IMSMError(why)
    for module in peft_model.modules():
        # Any other LoRA variant (DoRA, aLoRA, ...) changes the layer beyond B A, like DoRA.
        if isinstance(module, LoraLayer) and getattr(module, "lora_variant", {}).get(name) is not None:
            variant = type(module.lora_variant[name]).__name__
            raise IMSMError(f"{WHAT} cannot reduce a LoRA variant ({variant}); use a vanilla LoRA adapter")
    return name


def _reduce_function():
    try:
        from peft.tuners.lora.intruders import reduce_intruder_dimension
    except ImportError:  # pyproject asks for peft >= 0.21; an older install gets the fix, not a traceback
        import peft

        raise IMSMError(f"{WHAT} needs peft >= 0.21 (installed: {peft.__version__}); upgrade peft") from None
    return reduce_intruder_dimension


@torch.no_grad()
def reduce_intruders(peft_model: PeftModel, mitigation_lambda: float = PEFT_DEFAULT) -> tuple[int, int]:
    """Apply peft's `reduce_intruder_dimension` to the model's one LoRA adapter, in place.

    Args:
        peft_model: a peft model holding one vanilla LoRA adapter (unmerged).
        mitigation_lambda: the share of each intruder direction kept (peft's `mitigation_lambda`).

    Returns:
        (layers with intruder dimensions, LoRA layers rewritten). peft refits every layer, but one
        without intruders (none of W + ΔW's top 10 singular vectors below cosine 0.5 to all of W's)
        keeps its B and A as trained, so with none found the adapter is unchanged.
    """
    mitigation_lambda = check_mitigation_lambda(mitigation_lambda)
    name = _check_peft_model(peft_model)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    found: list[str] = []
    _reduce_function()(
        peft_model,
        old_adapter_name=name,
        new_adapter_name=SCRATCH_ADAPTER,
        mitigation_lambda=mitigation_lambda,
        # Its per-layer lines, kept rather than printed: "<layer>: Intruders: <k>" where it found some.
        logging_sink=lambda line, *rest, **kw: found.append(str(line)) if ": Intruders:" in str(line) else None,
    )
    rewritten = 0
    for module in peft_model.modules():
        if isinstance(module, LoraLayer) and SCRATCH_ADAPTER in module.r:
            rewritten += _copy_back(module, name)
    peft_model.set_adapter(name)
    peft_model.delete_adapter(SCRATCH_ADAPTER)
    # set_adapter makes the active adapter trainable; what was frozen stays frozen.
    for parameter_name, parameter in peft_model.named_parameters():
        parameter.requires_grad_(parameter_name in trainable)
    return len(found), rewritten


def _copy_back(layer: LoraLayer, name: str) -> int:
    """The reduced B and A into the original adapter's own tensors (same rank, same scaling)."""
    if name in layer.lora_A:
        layer.lora_A[name].weight.copy_(layer.lora_A[SCRATCH_ADAPTER].weight)
        layer.lora_B[name].weight.copy_(layer.lora_B[SCRATCH_ADAPTER].weight)
    else:  # an embedding layer keeps its factors as bare parameters
        layer.lora_embedding_A[name].copy_(layer.lora_embedding_A[SCRATCH_ADAPTER])
        layer.lora_embedding_B[name].copy_(layer.lora_embedding_B[SCRATCH_ADAPTER])
    return 1
