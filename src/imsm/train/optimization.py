"""What one optimizer step applies: the parameter groups and their optimizer, the learning-rate
schedule, and AdaLoRA's extras (its orthogonal regulariser and its rank allocator)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from peft import AdaLoraConfig, AdaLoraModel

from imsm.model.siamese import IMSMModel


def learning_rate_lambda(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine or linear decay to 0, or constant."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_ratio: float, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule over `total_steps`, its first `warmup_ratio` spent warming up."""
    warmup = int(warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_lambda(schedule, warmup, total_steps))


def build_optimizer(
    model: IMSMModel, optimizer_name: str, learning_rate: float, gate_learning_rate: float, weight_decay: float
) -> torch.optim.Optimizer:
    """One parameter group for the peft parameters, one for the gate (its own learning rate)."""
    groups = {"peft": [], "gate": []}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups[model.parameter_group(name)].append(parameter)
    param_groups = [{"params": groups["peft"], "lr": learning_rate}]
    if groups["gate"]:
        param_groups.append({"params": groups["gate"], "lr": gate_learning_rate})
    if optimizer_name == "adafactor":
        from transformers.optimization import Adafactor

        # The paper's "Adafactor, lr 3e-3": a fixed learning rate, not Adafactor's relative steps.
        return Adafactor(
            param_groups,
            lr=learning_rate,
            relative_step=False,
            scale_parameter=False,
            warmup_init=False,
            weight_decay=weight_decay,
        )
    return torch.optim.AdamW(param_groups, lr=learning_rate, weight_decay=weight_decay)


def adalora_tuner(model: IMSMModel) -> AdaLoraModel | None:
    """peft's AdaLoRA tuner (it owns `update_and_allocate` and the rank allocator) when `model`'s
    adapter is AdaLoRA; None otherwise."""
    tuner = model.peft_model.base_model if model.has_adapter else None
    return tuner if isinstance(tuner, AdaLoraModel) else None


def adalora_orthogonal_penalty(model: IMSMModel) -> torch.Tensor | None:
    """AdaLoRA's regulariser ||PᵀP - I||_F averaged over its P and Q matrices, times
    orth_reg_weight. peft adds it only when it computes the loss itself, which IMSM does not."""
    if not model.has_adapter:
        return None
    peft_model = model.peft_model
    adapter = peft_model.active_adapter
    config = peft_model.peft_config[adapter]
    if not isinstance(config, AdaLoraConfig) or config.orth_reg_weight <= 0:
        return None
    total, count = 0.0, 0
    for name, parameter in peft_model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and adapter in name:
            covariance = parameter @ parameter.T if "lora_A" in name else parameter.T @ parameter
            identity = torch.eye(*covariance.shape, device=covariance.device, dtype=covariance.dtype)
            total = total + torch.norm(covariance - identity, p="fro")
            count += 1
    return config.orth_reg_weight * total / count if count else None
