"""`TrainConfig`: every option of a training run, documented once and checked when built.

The YAML file of `imsm train --config` holds the same fields; the run directory keeps the
resolved config as `train_config.json`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from imsm.config import FUSION_MODES
from imsm.errors import IMSMError
from imsm.registry import unknown_name_message

SCHEDULES = ("cosine", "linear", "constant")
# The authors' gate trained at AdamW's default learning rate whatever the peft method's.
AUTHORS_GATE_LEARNING_RATE = 1e-3


@dataclass
class TrainConfig:
    """A training run.

    Attributes:
        task: Registry name (mrpc, cola, ropes, gsm8k) or a task spec file.
        output: Run directory: adapter files, checkpoints, config, metrics log.
        model: Embedded name, local directory or Hugging Face id.
        peft: peft method (lora, dora, adalora, ia3, or any peft layer tuner by name).
        fusion: imsm, no-query, mean, or none (vanilla PEFT).
        gate_rank: Rank of the gate.
        gate_dropout: Dropout after each gate projection (authors: 0.1).
        gate_learning_rate: The gate's learning rate (authors' code: 1e-3, AdamW's default).
        learning_rate: The peft parameters' learning rate; the method's paper value if None.
        epochs: Passes over the training examples.
        max_steps: Stop after this many optimizer steps (None: all epochs).
        limit: Train on the first N examples only.
        split: Training split; the task's train split if None.
        seed: Seeds the adapter init, data order, dropout and the gate init.
        data_dir: Data directory (else $IMSM_DATA_DIR, else the hub).
        batch_size: Effective batch size (examples per optimizer step); the method's paper value if None.
        micro_batch_size: Examples per forward pass; gradients accumulate to batch_size.
        max_length: Longest training sequence in tokens (prompt + answer + EOS).
        schedule: Learning-rate schedule after warm-up: cosine, linear or constant.
        warmup_ratio: Fraction of the optimizer steps spent warming up linearly.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping norm (0 disables).
        target_modules: Modules to adapt; per-architecture paper defaults, else peft's.
        peft_options: Any other field of the peft config (e.g. {r: 8}).
        dtype: Weights dtype: auto (bf16 only where computed natively), bf16, fp32.
        chat_template: auto, on or off: prompts in the model's chat template.
        cache_frozen: Compute the frozen branch once per example and reuse it every epoch.
        checkpoint_every: Write a checkpoint every N optimizer steps (and at every epoch end).
        resume: Continue the run in `output` from its last checkpoint.
        overwrite: Replace a finished run in `output`.
        trust_remote_code: Let transformers run the model's own code.
    """

    task: str
    output: str
    model: str = "smollm2-135m"
    peft: str = "lora"
    fusion: str = "imsm"
    gate_rank: int = 8
    gate_dropout: float = 0.1
    gate_learning_rate: float = AUTHORS_GATE_LEARNING_RATE
    learning_rate: float | None = None
    epochs: int = 3
    max_steps: int | None = None
    limit: int | None = None
    split: str | None = None
    seed: int = 0
    data_dir: str | None = None
    batch_size: int | None = None
    micro_batch_size: int = 4
    max_length: int = 512
    schedule: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    target_modules: list[str] | None = None
    peft_options: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"
    chat_template: str = "auto"
    cache_frozen: bool = True
    checkpoint_every: int | None = None
    resume: bool = False
    overwrite: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.fusion not in FUSION_MODES:
            raise IMSMError(unknown_name_message("fusion mode", str(self.fusion), list(FUSION_MODES)))
        if self.schedule not in SCHEDULES:
            raise IMSMError(unknown_name_message("schedule", str(self.schedule), list(SCHEDULES)))
        positive_ints = {
            "epochs": self.epochs,
            "gate_rank": self.gate_rank,
            "micro_batch_size": self.micro_batch_size,
            "max_length": self.max_length,
            "max_steps": self.max_steps,
            "limit": self.limit,
            "batch_size": self.batch_size,
            "checkpoint_every": self.checkpoint_every,
        }
        for name, value in positive_ints.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise IMSMError(f"{name} must be a positive integer, got {value!r}")
        for name in ("learning_rate", "gate_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise IMSMError(f"{name} must be greater than 0, got {value!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise IMSMError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not 0 <= self.gate_dropout < 1:
            raise IMSMError(f"gate_dropout must be in [0, 1), got {self.gate_dropout!r}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise IMSMError("weight_decay and max_grad_norm must be >= 0")
        if self.batch_size is not None and self.batch_size % min(self.micro_batch_size, self.batch_size):
            raise IMSMError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}; "
                "choose sizes that divide"
            )
        if self.resume and self.overwrite:
            raise IMSMError("--resume and --overwrite contradict each other; pick one")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]
