"""peft configs by method name, with the paper's hyper-parameters as defaults.

`lora`, `dora`, `adalora` and `ia3` are the paper's four methods (DESIGN §5); `loramoe` is its
LoRAMoE baseline (`imsm.peft_methods.loramoe`, defaults documented there). Every other peft
layer tuner (`loha`, `lokr`, `oft`, `vera`, ...) is reachable by its peft name through the
generic path, with peft's own defaults. Prompt-learning methods are left out: they change the
input rather than the layers, so there is no frozen branch to share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from peft import AdaLoraConfig, IA3Config, LoraConfig, PeftConfig, TaskType
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from imsm.errors import IMSMError
from imsm.peft_methods.loramoe import LoRAMoEConfig
from imsm.registry import Registry

# Not layer tuners (or not causal-LM adapters): nothing in the model to split into two branches.
_NOT_LAYER_TUNERS = {
    "PREFIX_TUNING",
    "PROMPT_TUNING",
    "P_TUNING",
    "ADAPTION_PROMPT",
    "MULTITASK_PROMPT_TUNING",
    "CPT",
    "CARTRIDGE",
    "XLORA",
    "POLY",
}

# Feed-forward output projections across common architectures ((IA)3 scales their input).
_FEEDFORWARD_OUTPUTS = ("down_proj", "fc2", "c_proj", "mlp.c_proj", "w2", "dense_4h_to_h")


@dataclass(frozen=True)
class PeftMethod:
    """A peft method as imsm trains it.

    Attributes:
        name: The CLI name (`--peft`).
        config_class: peft's config class.
        defaults: Config fields set unless the user overrides them (the paper's values).
        learning_rate: The paper's learning rate for this method.
        optimizer: "adamw" or "adafactor" (the paper trains (IA)3 with Adafactor).
        batch_size: The paper's effective batch size.
    """

    name: str
    config_class: type[PeftConfig]
    defaults: dict[str, Any] = field(default_factory=dict)
    learning_rate: float = 3e-4
    optimizer: str = "adamw"
    batch_size: int = 16


PEFT_METHODS: Registry[PeftMethod] = Registry("peft method")
PEFT_METHODS.register("lora", PeftMethod("lora", LoraConfig, {"r": 16, "lora_alpha": 16, "lora_dropout": 0.05}, 3e-4))
# DoRA recomputes a full GEMM per layer when lora_dropout > 0 in training, so dropout stays 0.
PEFT_METHODS.register(
    "dora", PeftMethod("dora", LoraConfig, {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "use_dora": True}, 1e-4)
)
# AdaLoRA: peft ignores `r` and starts from init_r (12 by default, the rank behind the paper's
# parameter counts), pruning towards target_r over total_step steps.
PEFT_METHODS.register(
    "adalora",
    PeftMethod("adalora", AdaLoraConfig, {"init_r": 12, "target_r": 8, "lora_alpha": 16, "lora_dropout": 0.05}, 2e-3),
)
PEFT_METHODS.register("ia3", PeftMethod("ia3", IA3Config, {}, 3e-3, optimizer="adafactor", batch_size=8))
# LoRAMoE: its config's defaults are the paper's (6 experts of rank 4, δ = β = 0.1) plus the
# authors' script's α 32, dropout 0.05 and learning rate 2e-4, on the feed-forward projections.
PEFT_METHODS.register("loramoe", PeftMethod("loramoe", LoRAMoEConfig, {}, 2e-4))
for _peft_type, _config_class in PEFT_TYPE_TO_CONFIG_MAPPING.items():
    _name = str(getattr(_peft_type, "value", _peft_type))
    if _name not in _NOT_LAYER_TUNERS and _name.lower() not in PEFT_METHODS:
        PEFT_METHODS.register(_name.lower(), PeftMethod(_name.lower(), _config_class, {}, 3e-4))


def build_peft_config(
    method: str,
    target_modules: Sequence[str] | str | None = None,
    total_step: int | None = None,
    **overrides: Any,
) -> PeftConfig:
    """A peft config for `method` with the paper's defaults, any field overridable.

    Args:
        method: A name in `PEFT_METHODS` (`lora`, `dora`, `adalora`, `ia3`, `loha`, ...).
        target_modules: Module names to adapt; peft's per-architecture defaults if None.
        total_step: Optimizer steps of the run; required by AdaLoRA's rank schedule.
        **overrides: Any other field of the peft config class.
    """
    entry = PEFT_METHODS.get(method)
    known = {f.name for f in dataclasses.fields(entry.config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise IMSMError(f"{method} has no option(s) {unknown}; its options are: {', '.join(sorted(known))}")
    values: dict[str, Any] = {**entry.defaults, **overrides}
    if "task_type" in known:
        values.setdefault("task_type", TaskType.CAUSAL_LM)
    if target_modules is not None:
        # A string is a regular expression to peft; a sequence is a list of module names.
        values["target_modules"] = target_modules if isinstance(target_modules, str) else list(target_modules)
    if entry.config_class is AdaLoraConfig:
        if total_step is None or total_step < 1:
            raise IMSMError("adalora needs total_step >= 1 (the run's optimizer steps) to schedule its rank budget")
        values["total_step"] = total_step
    if (
        entry.config_class is IA3Config
        and isinstance(target_modules, (list, tuple))
        and "feedforward_modules" not in overrides
    ):
        # peft requires feedforward_modules to be a subset of target_modules: keep the
        # feed-forward output projections among the chosen ones.
        values["feedforward_modules"] = [m for m in target_modules if m in _FEEDFORWARD_OUTPUTS]
    try:
        return entry.config_class(**values)
    except (TypeError, ValueError) as error:
        raise IMSMError(f"invalid {method} options: {str(error).splitlines()[0]}") from None
