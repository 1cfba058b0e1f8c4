"""The branches of the siamese model: one peft model run as two, the frozen model M and the tuned
model M', sharing every weight.

Every adapted layer (peft's `BaseTunerLayer`, and `modules_to_save` wrappers) gets a forward
that reads a shared `BranchRouter`:

- "tuned": peft's own forward (the default, so the peft model behaves exactly as before);
- "frozen": the wrapped base layer alone, i.e. M;
- "split": a doubled batch [frozen rows | tuned rows]: the first half of the leading dimension
  is M, the second half M'. Per-tuner fast paths read the base weight once for all rows and add
  the adapter on the tuned half only; any other tuner falls back to running base layer and
  adapted layer on their halves separately, which is correct for every peft tuner.

Unlike `PeftModel.disable_adapter()`, switching never touches `requires_grad` or walks the
module tree, so it is cheap enough for every decoded token and safe under DDP/FSDP. Unlike
peft's `adapter_names="__base__"`, it works in training and for DoRA, AdaLoRA and (IA)3.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from peft.tuners import adalora, ia3, lora
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from imsm.errors import IMSMError
from imsm.peft_methods.loramoe import LoRAMoELinear

TUNED, FROZEN, SPLIT = "tuned", "frozen", "split"


class BranchRouter:
    """The switch all adapted layers of one model read: which rows are the frozen model."""

    def __init__(self) -> None:
        self.mode = TUNED
        self.layers: list[nn.Module] = []

    @contextlib.contextmanager
    def _use(self, mode: str) -> Iterator[None]:
        previous, self.mode = self.mode, mode
        try:
            yield
        finally:
            self.mode = previous

    def frozen(self) -> contextlib.AbstractContextManager[None]:
        """Every row runs the base model, adapters bypassed."""
        return self._use(FROZEN)

    def tuned(self) -> contextlib.AbstractContextManager[None]:
        """Every row runs the adapted model (peft's own forward)."""
        return self._use(TUNED)

    def split(self) -> contextlib.AbstractContextManager[None]:
        """The first half of the batch runs the base model, the second half the adapted one."""
        return self._use(SPLIT)

    def check_unmerged(self) -> None:
        """The frozen branch needs the base weights untouched: refuse merged adapters."""
        for layer in self.layers:
            if getattr(layer, "merged", False):
                raise IMSMError(
                    "the adapter is merged into the base weights, so the frozen branch no longer exists; "
                    "call unmerge_adapter() on the peft model before using it with IMSM"
                )


def install_router(model: nn.Module) -> BranchRouter:
    """Route every adapted layer of `model` through one `BranchRouter` (idempotent)."""
    existing = getattr(model, "_imsm_router", None)
    if existing is not None:
        return existing
    router = BranchRouter()
    for module in model.modules():
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            original_forward = module.forward
            # An instance attribute shadows the class's forward, so nn.Module.__call__ (and
            # every hook peft or accelerate registered) still runs as before.
            module.forward = functools.partial(_routed_forward, module, original_forward, router)
            router.layers.append(module)
    model._imsm_router = router
    return router


def _frozen_forward(module: nn.Module, *args, **kwargs) -> torch.Tensor:
    if isinstance(module, AuxiliaryTrainingWrapper):
        return module._forward_wrapped_passthrough(*args, **kwargs)
    # get_base_layer() unwraps nested tuner layers down to the original module.
    return module.get_base_layer()(*args, **kwargs)


def _routed_forward(module: nn.Module, original_forward, router: BranchRouter, *args, **kwargs) -> torch.Tensor:
    if router.mode == TUNED:
        return original_forward(*args, **kwargs)
    if router.mode == FROZEN:
        return _frozen_forward(module, *args, **kwargs)
    x, rest = args[0], args[1:]
    rows = x.shape[0]
    if rows % 2:
        raise RuntimeError(
            f"{type(module).__name__} received {rows} rows in a doubled batch; layers that regroup "
            "tokens (e.g. mixture-of-experts experts) cannot be adapted in split mode"
        )
    half = rows // 2
    fast_path = _FAST_PATHS.get(type(module))
    if fast_path is not None and not module.disable_adapters:
        return fast_path(module, x, half, *rest, **kwargs)
    # Generic path, right for any tuner: base layer on the frozen half, peft's forward on the
    # tuned half. Same FLOPs as the fast paths, but the base weight is read twice.
    frozen = _frozen_forward(module, x[:half], *rest, **kwargs)
    tuned = original_forward(x[half:], *rest, **kwargs)
    return torch.cat([frozen, tuned], dim=0)


def _active(module: nn.Module, adapters: nn.ModuleDict | nn.ParameterDict) -> list[str]:
    return [name for name in module.active_adapters if name in adapters]


def _may_update_in_place(result: torch.Tensor) -> bool:
    """Without autograd, the base layer's fresh output can take the tuned half's update in place;
    with it, autograd may need the tensor as it was (and a view's in-place update rewrites its
    graph), so the update builds a new tensor."""
    return not torch.is_grad_enabled() and not result.requires_grad


def _lora_split(module: lora.Linear, x: torch.Tensor, half: int, *args, **kwargs) -> torch.Tensor:
    """LoRA and every LoRA variant (DoRA, ...): peft's `lora.Linear.forward` on the tuned half."""
    result = module.base_layer(x, *args, **kwargs)  # [2B, ..., out]: one read of the base weight
    result_dtype = result.dtype
    x_tuned, tuned = x[half:], result[half:]
    active = _active(module, module.lora_A)
    if _may_update_in_place(result) and not any(name in module.lora_variant for name in active):
        # Decoding and evaluation: add into the tuned rows where they lie, no concatenated copy.
        for name in active:
            lora_A, lora_B = module.lora_A[name], module.lora_B[name]
            x_tuned = module._cast_input_dtype(x_tuned, lora_A.weight.dtype)
            delta = lora_B(lora_A(module.lora_dropout[name](x_tuned))) * module.scaling[name]
            tuned.add_(delta.to(result_dtype))
        return result
    for name in active:
        lora_A, lora_B = module.lora_A[name], module.lora_B[name]
        x_tuned = module._cast_input_dtype(x_tuned, lora_A.weight.dtype)
        if name in module.lora_variant:  # DoRA and friends: base result in, adapted result out
            tuned = module.lora_variant[name].forward(module, active_adapter=name, x=x_tuned, result=tuned)
        else:
            tuned = tuned + lora_B(lora_A(module.lora_dropout[name](x_tuned))) * module.scaling[name]
    return torch.cat([result[:half], tuned.to(result_dtype)], dim=0)


def _adalora_split(module: adalora.SVDLinear, x: torch.Tensor, half: int, *args, **kwargs) -> torch.Tensor:
    """AdaLoRA's SVD form P diag(E) Q on the tuned half (peft's `SVDLinear.forward`)."""
    result = module.base_layer(x, *args, **kwargs)
    x_tuned, tuned = x[half:], result[half:]
    for name in _active(module, module.lora_A):
        lora_A, lora_B, lora_E = module.lora_A[name], module.lora_B[name], module.lora_E[name]
        x_tuned = module._cast_input_dtype(x_tuned, lora_A.dtype)
        ranknum = module.ranknum[name] + 1e-5
        delta = (module.lora_dropout[name](x_tuned) @ (lora_A * lora_E).T @ lora_B.T) * module.scaling[name]
        tuned = tuned + delta / ranknum
    return torch.cat([result[:half], tuned.to(result.dtype)], dim=0)


def _ia3_split(module: ia3.Linear, x: torch.Tensor, half: int, *args, **kwargs) -> torch.Tensor:
    """(IA)3: scale the tuned half's input (feed-forward layers) or output (the others)."""
    names = _active(module, module.ia3_l)
    if not names:
        return module.base_layer(x, *args, **kwargs)
    scaling = 1
    for name in names:
        scaling = scaling * module.ia3_l[name].flatten()
    if module.is_feedforward:
        x_tuned = (x[half:].to(scaling.dtype) * scaling).to(x.dtype)
        return module.base_layer(torch.cat([x[:half], x_tuned], dim=0), *args, **kwargs)
    result = module.base_layer(x, *args, **kwargs)
    tuned = (result[half:] * scaling).to(result.dtype)
    return torch.cat([result[:half], tuned], dim=0)


def _loramoe_split(module: LoRAMoELinear, x: torch.Tensor, half: int, *args, **kwargs) -> torch.Tensor:
    """LoRAMoE: router and experts on the tuned half only (so only its routing is recorded)."""
    result = module.base_layer(x, *args, **kwargs)
    return torch.cat([result[:half], module.add_experts(x[half:], result[half:])], dim=0)


# Exact types only: a subclass (quantised layers, say) may compute differently and takes the
# generic path instead.
_FAST_PATHS = {
    lora.Linear: _lora_split,
    adalora.SVDLinear: _adalora_split,
    ia3.Linear: _ia3_split,
    LoRAMoELinear: _loramoe_split,
}
