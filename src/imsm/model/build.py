"""`get_imsm_model`: wrap a causal LM and any peft layer tuner into the siamese model."""

from __future__ import annotations

from peft import PeftConfig, PeftModel, get_peft_model
from torch import nn

from imsm.config import IMSMConfig
from imsm.errors import IMSMError
from imsm.model.peft_wrapping import peft_wrapping
from imsm.model.siamese import IMSMModel


def check_target_modules(model: nn.Module, peft_config: PeftConfig) -> None:
    """Refuse target modules the model does not have, listing the ones it does."""
    targets = getattr(peft_config, "target_modules", None)
    if targets is None or isinstance(targets, str):  # peft's defaults, or a regex peft checks itself
        return
    names = [name for name, _ in model.named_modules() if name]
    missing = sorted(t for t in targets if not any(n == t or n.endswith("." + t) for n in names))
    if missing:
        leaf_types = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)
        available = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, leaf_types) or type(m).__name__ == "Conv1D"
            }
        )
        raise IMSMError(
            f"target module(s) {missing} not found in {type(model).__name__}; "
            f"choose among its layers: {', '.join(available)}"
        )


def get_imsm_model(
    base_model: nn.Module, peft_config: PeftConfig | None = None, imsm_config: IMSMConfig | None = None
) -> IMSMModel:
    """Build the siamese model, like `peft.get_peft_model`.

    Args:
        base_model: A transformers causal LM (its last hidden state must feed its output head),
            or an existing `PeftModel` when `peft_config` is None.
        peft_config: Any peft layer tuner's config (LoRA, DoRA, AdaLoRA, (IA)3, LoHa, ...).
            Prompt-learning methods change the input rather than the layers and are refused.
        imsm_config: Gate and fusion options; `IMSMConfig()` if omitted.

    The base model is adapted in place (as peft does) and its dtype and device are kept; the
    base weights exist once, shared by both branches.
    """
    imsm_config = imsm_config or IMSMConfig()
    if isinstance(base_model, PeftModel):
        if peft_config is not None:
            raise IMSMError("base_model is already a PeftModel; pass peft_config=None to wrap it as it is")
        peft_model = base_model
        peft_config = peft_model.peft_config[peft_model.active_adapter]
    elif peft_config is None:
        raise IMSMError("peft_config is required unless base_model is already a PeftModel")
    if not isinstance(peft_config, PeftConfig):
        raise IMSMError(f"peft_config must be a peft config object (e.g. LoraConfig), got {type(peft_config).__name__}")
    if peft_config.is_prompt_learning or getattr(peft_config, "is_adaption_prompt", False):
        raise IMSMError(
            f"{peft_config.peft_type.value} is a prompt-learning method: it changes the input, not the layers, so "
            "there is no frozen branch to share; use a layer tuner such as LoRA, DoRA, AdaLoRA or IA3"
        )
    if not isinstance(base_model, PeftModel):
        if getattr(base_model, "get_output_embeddings", lambda: None)() is None:
            raise IMSMError(
                f"{type(base_model).__name__} has no output head; IMSM needs a causal LM (AutoModelForCausalLM)"
            )
        check_target_modules(base_model, peft_config)
        try:
            with peft_wrapping():
                peft_model = get_peft_model(base_model, peft_config)
        except (TypeError, ValueError) as error:
            raise IMSMError(
                f"peft could not apply {peft_config.peft_type.value}: {str(error).splitlines()[0]}"
            ) from None
    _freeze_adalora_rank_numbers(peft_model)
    return IMSMModel(peft_model, imsm_config)


def _freeze_adalora_rank_numbers(peft_model: PeftModel) -> None:
    """AdaLoRA's `ranknum` is a constant (the rank behind its scaling), frozen by peft, except
    that peft re-creates it as a trainable parameter when the model sits on the meta device (big
    models initialised empty, FSDP): an optimizer would then drift the adapter's scaling."""
    for name, parameter in peft_model.named_parameters():
        if ".ranknum." in name:
            parameter.requires_grad_(False)
