"""`imsm train`: from a `TrainConfig` to a run directory holding an adapter, in one function."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from imsm.atomic_write import write_atomically
from imsm.config import IMSMConfig
from imsm.data import load_examples, resolve_data_dir
from imsm.errors import IMSMError
from imsm.model.build import get_imsm_model
from imsm.model.load import load_model_and_tokenizer
from imsm.peft_methods.builders import PEFT_METHODS, build_peft_config
from imsm.prompting import PromptFormatter
from imsm.provenance import provenance_header
from imsm.tasks import Task, get_task
from imsm.train.config import TrainConfig
from imsm.train.examples import tokenize_examples
from imsm.train.loop import TrainingHooks, TrainingPlan, run_training, seed_everything
from imsm.train.run_directory import CONFIG, check_output_directory, finished_summary, remove_previous_run

# The paper's target modules where its appendix names them (Tables 7-9: Llama-3, Qwen1.5);
# peft's per-architecture defaults otherwise. Always overridable with --target-modules.
PAPER_TARGET_MODULES = {
    ("lora", "llama"): ["q_proj", "v_proj"],
    ("dora", "llama"): ["q_proj", "v_proj"],
    ("adalora", "llama"): ["q_proj", "v_proj"],
    ("ia3", "llama"): ["k_proj", "v_proj", "down_proj"],
    ("lora", "qwen2"): ["q_proj"],
    ("adalora", "qwen2"): ["q_proj"],
    ("ia3", "qwen2"): ["q_proj", "v_proj"],
    ("dora", "qwen2"): ["q_proj", "v_proj"],
}


def default_target_modules(method: str, model_type: str) -> list[str] | None:
    return PAPER_TARGET_MODULES.get((method, model_type))


def _default_accelerator() -> Accelerator:
    # cpu=True when there is no GPU: that is what lets `torchrun` / `accelerate launch` start a gloo
    # process group on CPU-only machines. Every trainable parameter is used in every step, so DDP
    # need not search for unused ones.
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )


def _run_header(plan: TrainingPlan, task: Task, split: str, peft_config, chat_template: bool, processes: int):
    """The run's provenance: the config as given, and what was resolved from it (`train_config.json`)."""
    config, data = plan.config, plan.data
    trainable, total = plan.model.trainable_parameter_count()
    return provenance_header(
        config=config.to_dict(),
        resolved={
            "task_version": task.version,
            "split": split,
            "learning_rate": plan.learning_rate,
            "batch_size": plan.batch_size,
            "optimizer": plan.optimizer,
            "total_steps": plan.total_steps,
            "target_modules": sorted(peft_config.target_modules) if peft_config.target_modules else None,
            "examples": len(data.examples),
            "truncated": data.truncated,
            "dropped": data.dropped,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "chat_template": chat_template,
            "processes": processes,
        },
        seed=config.seed,
    )


def _announce(plan: TrainingPlan, task: Task, split: str) -> None:
    """Two lines: the data and steps, and the trainable parameters (as peft prints them)."""
    data, (trainable, total) = plan.data, plan.model.trainable_parameter_count()
    print(
        f"imsm: {task.name} ({split}): {len(data.examples)} examples, {data.truncated} prompts cut to fit "
        f"max_length={plan.config.max_length}, {data.dropped} dropped; {plan.total_steps} optimizer steps of "
        f"{plan.batch_size}"
    )
    print(
        f"imsm: trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
    )


def train(
    config: TrainConfig,
    progress: bool = True,
    accelerator=None,
    hooks: TrainingHooks | None = None,
    load_model: Callable[..., tuple[Any, Any]] = load_model_and_tokenizer,
) -> dict[str, Any]:
    """Run (or resume) the training described by `config`; returns the run summary.

    `--resume` on a run that has already finished touches nothing and returns its summary, so the
    same command can be run again after a crash at any moment. `hooks` let a caller watch the
    run (`imsm bench train` times its steps). `load_model(model, dtype, device, trust_remote_code)`
    returns (model, tokenizer); `imsm bench train --random-weights` builds an architecture instead.
    """

    # Everything that can be checked without the model is checked first.
    method = PEFT_METHODS.get(config.peft)
    task = get_task(config.task)
    split = config.split or task.train_split
    if split is None:
        raise IMSMError(f"task {task.name} has no training split; pass --split or train on a target task")
    output = check_output_directory(config)
    if config.resume and (finished := finished_summary(output)) is not None:
        print(f"imsm: {str(output)!r} holds a finished run ({finished['steps']} steps); nothing to resume")
        return {**finished, "already_complete": True}
    records = load_examples(task, split, resolve_data_dir(config.data_dir), config.limit)
    accelerator = accelerator or _default_accelerator()
    if config.overwrite and output.exists() and accelerator.is_main_process:
        remove_previous_run(output)
    accelerator.wait_for_everyone()

    seed_everything(config.seed)
    base, tokenizer = load_model(config.model, config.dtype, accelerator.device, config.trust_remote_code)
    formatter = PromptFormatter.for_tokenizer(tokenizer, config.chat_template)
    data = tokenize_examples(task, records, formatter, config.max_length)
    batch_size = config.batch_size or method.batch_size
    steps_per_epoch = math.ceil(len(data.examples) / batch_size)
    total_steps = int(min(config.max_steps or math.inf, config.epochs * steps_per_epoch))
    targets = config.target_modules or default_target_modules(method.name, base.config.model_type)
    peft_config = build_peft_config(method.name, targets, total_step=total_steps, **config.peft_options)
    imsm_config = IMSMConfig(gate_rank=config.gate_rank, fusion=config.fusion, gate_dropout=config.gate_dropout)
    seed_everything(config.seed)  # adapter and gate initialisation depend on the seed only
    model = get_imsm_model(base, peft_config, imsm_config)
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable()  # acts in training mode, which the loop sets
    learning_rate = config.learning_rate or method.learning_rate
    plan = TrainingPlan(
        config, model, data, formatter.pad_id, method.optimizer, learning_rate, batch_size, total_steps, {}
    )
    if accelerator.is_main_process:
        _announce(plan, task, split)
    plan.header = _run_header(plan, task, split, peft_config, formatter.use_chat_template, accelerator.num_processes)
    if accelerator.is_main_process and not config.resume:
        output.mkdir(parents=True, exist_ok=True)
        write_atomically(output / CONFIG, json.dumps(plan.header, indent=2, default=str) + "\n")
    accelerator.wait_for_everyone()
    return run_training(plan, accelerator, progress, hooks)
