"""`TrainConfig`: every option of a training run, documented once and checked when built.

`imsm train`'s flags and the YAML file of `imsm train --config` are these fields (`imsm.cli.options`);
the run directory keeps the resolved config as `train_config.json`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from imsm.cli.options import (
    chat_template_option,
    check_options,
    data_dir_option,
    dtype_option,
    model_option,
    option,
    peft_option,
    trust_remote_code_option,
)
from imsm.config import FUSION_MODES
from imsm.errors import IMSMError
from imsm.registry import unknown_name_message

SCHEDULES = ("cosine", "linear", "constant")
# The authors' gate trained at AdamW's default learning rate whatever the peft method's.
AUTHORS_GATE_LEARNING_RATE = 1e-3


@dataclass
class TrainConfig:
    """A training run: every option of `imsm train`, each documented once, in its field's help."""

    task: str = option(
        help="training task: registry name (mrpc, cola, ropes, gsm8k), NAME@START for its examples from the "
        "START-th on (0-based, before --limit), or a task spec file"
    )
    output: str = option(help="run directory: adapter files, checkpoints, config, metrics log")
    model: str = model_option()
    peft: str = peft_option()
    fusion: str = option("imsm", help="imsm, no-query, mean, or none (vanilla PEFT)")
    gate_rank: int = option(8, positive=True, help="rank of the gate")
    gate_dropout: float = option(0.1, help="dropout after each gate projection (authors: 0.1)")
    gate_learning_rate: float = option(
        AUTHORS_GATE_LEARNING_RATE, help="the gate's learning rate (authors' code: 1e-3, AdamW's default)"
    )
    learning_rate: float | None = option(
        None, help="the peft parameters' learning rate (default: the method's paper value)"
    )
    epochs: int = option(3, positive=True, help="passes over the training examples")
    max_steps: int | None = option(
        None, positive=True, help="stop after this many optimizer steps (default: all epochs)"
    )
    limit: int | None = option(None, positive=True, help="train on the first N examples only")
    split: str | None = option(None, help="training split (default: the task's train split)")
    seed: int = option(0, help="seeds the adapter init, data order, dropout and the gate init")
    data_dir: str | None = data_dir_option()
    batch_size: int | None = option(
        None,
        positive=True,
        help="effective batch size, examples per optimizer step (default: the method's paper value)",
    )
    micro_batch_size: int = option(
        4, positive=True, help="examples per forward pass; gradients accumulate to batch_size"
    )
    max_length: int = option(512, positive=True, help="longest training sequence in tokens (prompt + answer + EOS)")
    schedule: str = option("cosine", help="learning-rate schedule after warm-up: cosine, linear or constant")
    warmup_ratio: float = option(0.1, help="fraction of the optimizer steps spent warming up linearly")
    weight_decay: float = option(0.01, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, help="gradient clipping norm (0 disables)")
    target_modules: list[str] | None = option(
        None, help="modules to adapt (default: per-architecture paper defaults, else peft's)"
    )
    peft_options: dict[str, Any] = option(default_factory=dict, help="any other field of the peft config, e.g. r=8")
    dtype: str = dtype_option()
    chat_template: str = chat_template_option()
    gradient_checkpointing: bool = option(
        False,
        help="recompute the decoder layers' activations in the backward pass (transformers' own, "
        "non-reentrant): less memory for a longer step",
    )
    cache_frozen: bool = option(True, help="compute the frozen branch once per example and reuse it every epoch")
    frozen_cache_dir: str | None = option(
        None,
        help="where those frozen memories are kept on disk and looked up, under a fingerprint of the base "
        "model and examples; runs that share a directory share them (default OUTPUT/frozen-memories, "
        "removed when the run finishes). Size: d x (examples + answer tokens) values",
    )
    checkpoint_every: int | None = option(
        None, positive=True, help="write a checkpoint every N optimizer steps (and at every epoch end)"
    )
    snapshot_steps: list[int] | None = option(
        None,
        help="also keep the adapter after these optimizer steps, as OUTPUT/snapshots/step-NNNNNN (an adapter "
        "directory, like the final one): the points of a learning curve from one run",
    )
    resume: bool = option(False, help="continue the run in --output from its last checkpoint")
    overwrite: bool = option(False, help="replace a finished run in --output")
    trust_remote_code: bool = trust_remote_code_option()

    def __post_init__(self) -> None:
        if self.fusion not in FUSION_MODES:
            raise IMSMError(unknown_name_message("fusion mode", str(self.fusion), list(FUSION_MODES)))
        if self.schedule not in SCHEDULES:
            raise IMSMError(unknown_name_message("schedule", str(self.schedule), list(SCHEDULES)))
        check_options(self)  # the positive integers and chat_template
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
        for step in self.snapshot_steps or []:
            if isinstance(step, bool) or not isinstance(step, int) or step < 1:
                raise IMSMError(f"snapshot_steps must be positive integers (optimizer steps), got {step!r}")
        if self.resume and self.overwrite:
            raise IMSMError("--resume and --overwrite contradict each other; pick one")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]
