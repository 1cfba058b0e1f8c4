"""LoRAMoE (Dou et al. 2023, arXiv 2312.09979) as a peft LoRA layer: a dense softmax router per
targeted linear mixes N LoRA experts, and a localized balancing constraint (LBC) joins the loss.

Defaults, and why: the IMSM paper trains LoRAMoE with "the original paper's configuration", which
(as we recall it; we could not check the text here) is N = 6 experts of rank r = 4 with
δ = β = 0.1 on LLaMA-2-7B. The paper gives no α, dropout or learning rate, so these come from
the authors' script `run_loramoe.sh`: α = 32, dropout 0.05, lr 2e-4, on gate_proj, up_proj and
down_proj. That script uses 8 experts and switches the LBC off (δ = β = 0); we keep the paper's
6 experts and LBC on, since the paper's results come from that setup. All are config fields.

Experts are computed as two GEMMs, not a loop: A_i stack into one (N·r)×d_in matrix `lora_A`
and B_i into one d_out×(N·r) matrix `lora_B`, so that
    delta(x) = α/r · B · flatten(unflatten(A · dropout(x), (N, r)) * w[..., :, None]),
with w = softmax(W_route · x) in fp32. B starts at zero, so a fresh adapter is the base model.

The LBC, with Q[n, m] = Σ_t w[m, t, n] (expert n's importance for sample m) and
I[n, m] = 1 + δ when expert n's half matches sample m's task type, 1 − δ otherwise, is
β · Σ_layers cv²(I ∘ Q), cv² = var / mean² (unbiased var, as in the reference). The first half
of the experts serves task type 1, the second half type 0 (the reference code's layout). imsm
trains one task at a time, so every sample is task type 1 unless `task_types` says otherwise:
the constraint then pushes the first half of the experts up and the second half down.
Deliberate deviation: padding tokens are masked out of Q (the reference summed the router's
weights over padding too, which makes the loss depend on how much padding a batch has).

Each layer keeps the router weights of its last forward (`routing_weights`), which the training
loop turns into the LBC; HF modules' return values stay untouched. Merging is refused: the
routing depends on the input, so there is no single weight delta to fold into the base.

Saved adapters are peft LoRA directories (`peft_type` "LORA", tensors `lora_route`, `lora_A`,
`lora_B`) whose config carries `num_experts`; `loramoe_config_for(directory)` rebuilds the
config that plain peft cannot, and `imsm` uses it whenever it loads an adapter directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from imsm.checked_files import read_json

# Llama, Qwen2, Mistral and most decoder-only models name their feed-forward linears so.
FEEDFORWARD_TARGETS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class LoRAMoEConfig(LoraConfig):
    """A `LoraConfig` whose targeted linears become LoRAMoE layers (experts + router + LBC).

    `r`, `lora_alpha`, `lora_dropout` and `target_modules` keep their LoRA meaning, per expert.

    Attributes:
        num_experts: N, the LoRA experts per layer (paper: 6).
        balance_delta: δ, the LBC's degree of imbalance between the two halves of the experts.
        balance_weight: β, the LBC's weight in the loss; 0 turns the constraint off.
    """

    r: int = field(default=4, metadata={"help": "Rank of each expert (paper: 4)."})
    lora_alpha: int = field(default=32, metadata={"help": "Expert scaling is lora_alpha / r (authors' script: 32)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the experts' input (authors' script)."})
    target_modules: list[str] | str | None = field(
        default_factory=lambda: list(FEEDFORWARD_TARGETS),
        metadata={"help": "Linear layers to turn into LoRAMoE layers (default: the feed-forward projections)."},
    )
    num_experts: int = field(default=6, metadata={"help": "N, the LoRA experts per layer (paper: 6)."})
    balance_delta: float = field(default=0.1, metadata={"help": "δ, the LBC's degree of imbalance (paper: 0.1)."})
    balance_weight: float = field(default=0.1, metadata={"help": "β, the LBC's weight; 0 turns it off (paper: 0.1)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.num_experts
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_experts must be an integer >= 1, got {n!r}; the paper uses 6")
        if not 0 <= self.balance_delta <= 1:
            raise ValueError(f"balance_delta (δ) must be in [0, 1], got {self.balance_delta!r}; the paper uses 0.1")
        if self.balance_weight < 0:
            raise ValueError(f"balance_weight (β) must be >= 0, got {self.balance_weight!r}; 0 turns the LBC off")
        if self.balance_weight > 0 and n % 2:
            raise ValueError(
                f"num_experts must be even when balance_weight > 0 (the LBC splits the experts into two halves), "
                f"got {n}; use an even number or balance_weight=0"
            )
        unsupported = {
            "use_dora": self.use_dora,
            "use_rslora": self.use_rslora,
            "lora_bias": self.lora_bias,
            "target_parameters": self.target_parameters,
            "layer_replication": self.layer_replication,
        }
        for name, value in unsupported.items():
            if value:
                raise ValueError(f"LoRAMoE does not support {name}={value!r}; leave it at its default")
        if self.init_lora_weights not in (True, False):
            raise ValueError(
                f"LoRAMoE initialises its experts itself (kaiming A and router, zero B); init_lora_weights must be "
                f"True or False (random B, for tests), got {self.init_lora_weights!r}"
            )
        # Every targeted module, whatever its type, goes to LoRAMoELinear, which refuses what it
        # cannot adapt: no target silently falls back to plain LoRA.
        self._register_custom_module({nn.Module: LoRAMoELinear})

    @classmethod
    def from_peft_type(cls, **kwargs) -> LoRAMoEConfig:
        # peft picks the class from peft_type ("LORA") and would build a plain LoraConfig.
        kwargs.pop("peft_type", None)
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            warnings.warn(f"ignoring LoRAMoE config keys this version does not know: {unknown}", stacklevel=2)
        return cls(**{key: value for key, value in kwargs.items() if key in known})


def loramoe_config_for(directory: str | os.PathLike) -> LoRAMoEConfig | None:
    """The `LoRAMoEConfig` of a saved adapter directory, or None if it holds another adapter.

    Pass it as `config=` to `PeftModel.from_pretrained`: from `adapter_config.json` alone peft
    would rebuild plain LoRA layers, whose shapes do not fit the saved experts.
    """
    path = Path(directory) / "adapter_config.json"
    if not path.is_file():
        return None
    values = read_json(path, fix="re-save the adapter (save_pretrained) or re-train it")
    if values.get("peft_type") != "LORA" or "num_experts" not in values:
        return None
    return LoRAMoEConfig.from_pretrained(str(directory))


class LoRAMoELinear(nn.Module, LoraLayer):
    """A frozen linear layer plus a router-weighted mixture of N LoRA experts.

    y = W0·x + α/r · Σ_i softmax(W_route·x)_i · B_i A_i · dropout(x)

    Parameters per adapter: `lora_route` [N, d_in], `lora_A` [N·r, d_in] (the A_i stacked, expert
    i in rows i·r ... i·r + r − 1) and `lora_B` [d_out, N·r] (the B_i side by side).
    """

    adapter_layer_names = ("lora_route", "lora_A", "lora_B")
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout", "num_experts")

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: LoRAMoEConfig, r: int, lora_alpha: int, **kwargs
    ) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer, ephemeral_gpu_offload=kwargs.get("ephemeral_gpu_offload", False))
        base = self.get_base_layer()
        if not isinstance(base, (nn.Linear, Conv1D)):
            target = kwargs.get("target_name") or type(base).__name__
            raise ValueError(
                f"LoRAMoE adapts linear layers only, and {target!r} is a {type(base).__name__}; "
                "choose feed-forward linear layers in target_modules (e.g. gate_proj, up_proj, down_proj)"
            )
        self.lora_route = nn.ModuleDict({})
        self.num_experts: dict[str, int] = {}
        # The router's softmax from this layer's last forward, per adapter: [..., N] fp32, kept in
        # the autograd graph so the training loop can add the LBC (see loramoe_balance_loss).
        self.routing_weights: dict[str, torch.Tensor] = {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoRAMoEConfig, **kwargs) -> None:
        if not isinstance(config, LoRAMoEConfig):
            raise ValueError(f"a LoRAMoE layer cannot take a {type(config).__name__} adapter; use one kind per layer")
        if r <= 0:
            raise ValueError(f"r (each expert's rank) must be a positive integer, got {r}")
        n = config.num_experts
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / r
        self.num_experts[adapter_name] = n
        dropout = nn.Dropout(p=config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.lora_dropout[adapter_name] = dropout
        self.lora_route[adapter_name] = nn.Linear(self.in_features, n, bias=False)
        self.lora_A[adapter_name] = nn.Linear(self.in_features, n * r, bias=False)
        self.lora_B[adapter_name] = nn.Linear(n * r, self.out_features, bias=False)
        self.reset_loramoe_parameters(adapter_name, config.init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def reset_loramoe_parameters(self, adapter_name: str, init_lora_weights: bool) -> None:
        """Kaiming-uniform router and A (as nn.Linear, per the reference), zero B (identity start).

        Stacking the A_i keeps fan_in = d_in, so the stacked init equals N separate ones.
        """
        nn.init.kaiming_uniform_(self.lora_route[adapter_name].weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.lora_A[adapter_name].weight, a=math.sqrt(5))
        if init_lora_weights:
            nn.init.zeros_(self.lora_B[adapter_name].weight)
        else:  # a non-identity start, for tests
            nn.init.kaiming_uniform_(self.lora_B[adapter_name].weight, a=math.sqrt(5))

    def experts(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """The routed experts' sum for one adapter, [..., d_out]; records the routing weights."""
        lora_A, lora_B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        n, r = self.num_experts[adapter_name], self.r[adapter_name]
        x = self._cast_input_dtype(x, lora_A.weight.dtype)
        # fp32 softmax whatever the compute dtype: the weights also feed the LBC's variance.
        weights = torch.softmax(self.lora_route[adapter_name](x), dim=-1, dtype=torch.float32)  # [..., N]
        self.routing_weights[adapter_name] = weights
        hidden = lora_A(self.lora_dropout[adapter_name](x))  # [..., N·r]: every expert's A_i x at once
        hidden = hidden.unflatten(-1, (n, r)) * weights.to(hidden.dtype).unsqueeze(-1)  # [..., N, r]
        return lora_B(hidden.flatten(-2)) * self.scaling[adapter_name]  # [..., d_out] = Σ_i w_i B_i A_i x

    def add_experts(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """`result` (the base layer's output for `x`) plus every active adapter's experts."""
        result_dtype = result.dtype
        for name in self.active_adapters:
            if name in self.lora_A:
                result = result + self.experts(name, x)
        return result.to(result_dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("LoRAMoE does not support mixed-adapter batches (adapter_names)")
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        return self.add_experts(x, result)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(
            "LoRAMoE cannot be merged into the base weights: its router weighs the experts differently for every "
            "token, so there is no single weight delta; run the adapter unmerged"
        )

    def unmerge(self) -> None:
        """Nothing to undo: a LoRAMoE layer is never merged."""

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        raise ValueError("LoRAMoE has no weight delta: its experts are mixed per token by the router")

    def __repr__(self) -> str:
        return "loramoe." + super().__repr__()


# ---------------------------------------------------------------------------------------------
# The localized balancing constraint.


def cv_squared(values: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation var/mean² over all entries (unbiased var); 0 for one entry."""
    values = values.float().flatten()
    if values.numel() < 2:
        return values.new_zeros(())
    return values.var() / (values.mean() ** 2 + eps)


def localized_balancing_constraint(
    routing_weights: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    task_types: torch.Tensor | None = None,
    delta: float = 0.1,
) -> torch.Tensor:
    """cv²(I ∘ Q) of one layer, without β.

    Args:
        routing_weights: [B, T, N], the router's softmax for each token.
        attention_mask: [B, T], 1 on real tokens; padding is left out of Q. None: every token.
        task_types: [B], 1 or 0 per sample; all 1 (imsm's single-task training) if None.
        delta: δ, the imbalance between the halves of the experts.
    """
    B, T, N = routing_weights.shape
    weights = routing_weights.float()
    if attention_mask is not None:
        if attention_mask.shape != (B, T):
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match routing weights [{B}, {T}]")
        weights = weights * attention_mask[..., None].to(weights.dtype)
    importance = weights.sum(dim=1)  # Qᵀ: [B, N]
    if task_types is None:
        task_types = torch.ones(B, dtype=torch.long, device=importance.device)
    first_half = torch.arange(N, device=importance.device) < N // 2  # [N]
    # Experts 0 .. N/2-1 serve task type 1, the rest task type 0.
    matches = first_half[None, :] == (task_types.to(importance.device)[:, None] == 1)  # [B, N]
    imbalance = torch.where(matches, 1.0 + delta, 1.0 - delta)  # Iᵀ: [B, N]
    return cv_squared(importance * imbalance)


def loramoe_layers(model: nn.Module) -> list[LoRAMoELinear]:
    """Every LoRAMoE layer of `model`, in module order."""
    return [module for module in model.modules() if isinstance(module, LoRAMoELinear)]


def loramoe_balance_loss(
    model: nn.Module, attention_mask: torch.Tensor | None = None, task_types: torch.Tensor | None = None
) -> torch.Tensor | None:
    """β · Σ_layers cv²(I ∘ Q) over the routing of the model's last forward.

    Args:
        model: An `IMSMModel` or a `PeftModel`.
        attention_mask: [B, T] of that forward (padding is masked out of Q).
        task_types: [B], 1 or 0 per sample; all 1 if None.

    Returns None, adding nothing to the loss and no graph, unless the active adapter is LoRAMoE
    with β > 0.
    """
    peft_model = getattr(model, "peft_model", model)
    if not isinstance(peft_model, PeftModel):
        return None
    adapter = peft_model.active_adapter
    config = peft_model.peft_config[adapter]
    if not isinstance(config, LoRAMoEConfig) or config.balance_weight == 0:
        return None
    total = None
    for layer in loramoe_layers(peft_model):
        weights = layer.routing_weights.get(adapter)
        if weights is None:  # not run since it was built
            continue
        term = localized_balancing_constraint(weights, attention_mask, task_types, config.balance_delta)
        total = term if total is None else total + term
    return None if total is None else config.balance_weight * total
