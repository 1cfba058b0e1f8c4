"""The training loop: plain PyTorch you can read, run under Hugging Face Accelerate.

`train_step` is one optimizer step: `batch_size` examples, split into micro-batches whose
gradients accumulate (and, under `accelerate launch`, are shared out across processes: each
process takes every world_size-th micro-batch, and DDP averages). `run_training` walks the epochs
in an order fixed by the seed, calls `train_step`, logs every step and writes checkpoints that
make any interruption, SIGKILL included, resumable to the same final weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from imsm.atomic_write import write_atomically
from imsm.errors import IMSMError
from imsm.model.siamese import FrozenMemory, IMSMModel
from imsm.peft_methods.loramoe import loramoe_balance_loss
from imsm.train.checkpoint import CHECKPOINTS, newest_intact_checkpoint, restore_checkpoint, save_checkpoint
from imsm.train.config import TrainConfig
from imsm.train.examples import TokenizedSet, collate
from imsm.train.frozen_cache import FrozenCache, stored_frozen_cache
from imsm.train.optimization import adalora_orthogonal_penalty, adalora_tuner, build_optimizer, build_scheduler
from imsm.train.run_directory import FROZEN_CACHE_DIR, METRICS_LOG, SUMMARY

SNAPSHOTS = "snapshots"


class TrainingDiverged(IMSMError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------------------------
# One optimizer step.


@dataclass
class MicroBatch:
    """The examples of one forward and backward."""

    inputs: dict[str, torch.Tensor]  # `collate`'s input_ids, attention_mask, query_mask, labels: [b, T]
    frozen_memory: FrozenMemory | None = None  # these examples' cached frozen branch, if it is cached

    def to(self, device) -> MicroBatch:
        memory = self.frozen_memory
        if memory is not None:
            memory = FrozenMemory(query=memory.query.to(device), hidden=memory.hidden.to(device))
        return MicroBatch({k: v.to(device) for k, v in self.inputs.items()}, memory)


def micro_batches(
    indices: list[int],
    micro_batch_size: int,
    data: TokenizedSet,
    pad_id: int,
    cache: FrozenCache | None = None,
    rank: int = 0,
    world: int = 1,
) -> list[MicroBatch]:
    """The micro-batches of one step's examples `indices` that fall to process `rank` of `world`."""
    chunks = [indices[i : i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]
    return [
        MicroBatch(
            collate([data.examples[i] for i in chunk], pad_id), cache.batch(chunk) if cache is not None else None
        )
        for chunk in chunks[rank::world]
    ]


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step reports."""

    loss: float  # mean task loss over the step's examples, all processes, regularisers left out
    grad_norm: float  # the gradient norm before clipping
    tokens: int  # real (non-padding) tokens this process trained on


def train_step(
    wrapped: torch.nn.Module,
    micro_batches: Sequence[MicroBatch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    accelerator,
    step: int,
    max_grad_norm: float = 0.0,
) -> StepResult:
    """One optimizer step over this process's micro-batches of a batch.

    Args:
        wrapped: the `IMSMModel` as `accelerator.prepare` returned it (DDP across processes).
        micro_batches: this process's share of the batch, on any device.
        optimizer: from `build_optimizer`.
        scheduler: from `build_scheduler`; it steps once.
        accelerator: the run's `accelerate.Accelerator`.
        step: optimizer steps taken before this one (AdaLoRA's rank budget follows it).
        max_grad_norm: gradient clipping norm; 0 disables clipping.

    Raises:
        TrainingDiverged: the loss of a micro-batch is NaN or infinite; no parameter has changed.
    """
    model = accelerator.unwrap_model(wrapped)
    device = accelerator.device
    adalora = adalora_tuner(model)
    step_loss, tokens = 0.0, 0
    for index, micro in enumerate(micro_batches):
        micro = micro.to(device)
        # DDP averages gradients across processes on a backward outside no_sync: the last one only.
        last = index == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(wrapped), accelerator.autocast():
            loss = wrapped(**micro.inputs, return_logits=False, frozen_memory=micro.frozen_memory).loss
            penalty = adalora_orthogonal_penalty(model) if adalora is not None else None
            total = loss + penalty if penalty is not None else loss
            # LoRAMoE's localized balancing constraint on this forward's routing (None otherwise).
            balance = loramoe_balance_loss(model, micro.inputs["attention_mask"])
            total = total + balance if balance is not None else total
            if not torch.isfinite(total):
                raise TrainingDiverged(f"the loss became {float(total.detach())} at step {step + 1}")
            accelerator.backward(total / len(micro_batches))
        step_loss += float(loss.detach()) / len(micro_batches)
        tokens += int(micro.inputs["attention_mask"].sum())
    if accelerator.num_processes > 1:  # report the step's loss over all processes, not this one's share
        step_loss = float(accelerator.reduce(torch.tensor(step_loss, device=device), reduction="mean"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm or float("inf"))
    optimizer.step()
    if adalora is not None:
        # AdaLoRA's rank allocation reads this step's gradients: after step, before zero_grad.
        adalora.update_and_allocate(step)
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=step_loss, grad_norm=float(grad_norm), tokens=tokens)


# ---------------------------------------------------------------------------------------------
# Checkpoint contents.

_ALLOCATOR_FIELDS = ("ipt", "exp_avg_ipt", "exp_avg_unc")


def _rank_allocator(model: IMSMModel):
    adalora = adalora_tuner(model)
    return adalora.rankallocator if adalora is not None else None


def trainable_state(model: IMSMModel) -> dict[str, torch.Tensor]:
    """Everything a checkpoint must hold: all non-base parameters and buffers (peft's and the
    gate's) and AdaLoRA's importance averages, which steer its future rank pruning."""
    state = {name: tensor for name, tensor in model.state_dict().items() if model.parameter_group(name) != "base"}
    allocator = _rank_allocator(model)
    for field in _ALLOCATOR_FIELDS if allocator is not None else ():
        for name, tensor in getattr(allocator, field).items():
            state[f"adalora_allocator/{field}/{name}"] = tensor
    return state


def restore_trainable_state(model: IMSMModel, state: dict[str, torch.Tensor]) -> None:
    allocator = _rank_allocator(model)
    weights = {}
    for key, tensor in state.items():
        if key.startswith("adalora_allocator/") and allocator is not None:
            _, field, name = key.split("/", 2)
            getattr(allocator, field)[name] = tensor.to(model.device)
        else:
            weights[key] = tensor
    model.load_state_dict(weights, strict=False)


def _resume(output: Path, model: IMSMModel, optimizer, scheduler, announce: bool = True) -> dict[str, int]:
    """Load the newest intact checkpoint into the model, optimizer, scheduler and RNGs; return its
    position: steps taken, epoch, and the next batch in that epoch. Damaged newer ones are named
    on stderr (when `announce`) and left in place; the next checkpoint written supersedes them."""
    checkpoint, skipped = newest_intact_checkpoint(output)
    if skipped and announce:
        print(
            f"imsm: --resume: skipping damaged checkpoint(s) ({'; '.join(skipped)}); resuming from "
            f"{checkpoint.path.name}",
            file=sys.stderr,
        )
    trainable, position = restore_checkpoint(checkpoint, optimizer, scheduler)
    missing = {k for k in trainable_state(model) if not k.startswith("adalora_allocator/")} - set(trainable)
    if missing:
        raise IMSMError(f"checkpoint in {str(output)!r} lacks {sorted(missing)[0]}; it was made by another setup")
    restore_trainable_state(model, trainable)
    return position


# ---------------------------------------------------------------------------------------------
# The loop.


@dataclass
class TrainingHooks:
    """Callbacks for code that watches a run without changing it (`imsm bench train`, tests)."""

    on_start: Callable[[IMSMModel], None] | None = None
    """Called with the built model, before the frozen memories are computed."""
    on_step: Callable[[int, StepResult, float], None] | None = None
    """Called after each step, its log line and any checkpoint, with the steps taken so far, the
    step's result and its seconds (collating its micro-batches, then `train_step`)."""


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The shuffled example order of one epoch, reproducible from the seed alone."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


class _StepLog:
    """One line per optimizer step: the metrics log (main process only) and the progress bar. It
    also keeps what the summary reports: tokens seen, last loss, and the time since it opened."""

    def __init__(self, path: Path | None, total_steps: int, step: int, show: bool):
        self.file = path.open("a") if path is not None else None
        self.bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not show)
        self.started, self.tokens, self.last_loss = time.perf_counter(), 0, float("nan")

    def write(self, step: int, epoch: float, result: StepResult, learning_rate: float) -> None:
        self.tokens += result.tokens
        self.last_loss = result.loss
        record = {
            "step": step,
            "epoch": epoch,
            "loss": round(result.loss, 6),
            "lr": learning_rate,
            "grad_norm": round(result.grad_norm, 6),
            "tokens_per_s": round(self.tokens / self.seconds(), 1),
        }
        if self.file is not None:
            try:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            except OSError as error:  # a full disk: the command line's one line names the file
                error.filename = error.filename or self.file.name
                raise
        self.bar.set_postfix(
            loss=f"{result.loss:.4f}", lr=f"{learning_rate:.2e}", tok_s=f"{record['tokens_per_s']:.0f}"
        )
        self.bar.update(1)

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()


@dataclass
class TrainingPlan:
    """What `imsm.train.run.train` resolved for the loop: the model built, its data, the optimizer's
    settings and the run's provenance header, which the summary starts with."""

    config: TrainConfig
    model: IMSMModel
    data: TokenizedSet
    pad_id: int
    optimizer: str  # the peft method's optimizer name (`build_optimizer`)
    learning_rate: float
    batch_size: int
    total_steps: int
    header: dict[str, Any]


def _frozen_memories(plan: TrainingPlan, accelerator, progress: bool, step: int) -> tuple[FrozenCache | None, bool]:
    """The cached frozen branch, computed or read back from disk, if the run caches it and has steps left.

    After resuming (the frozen branch draws no random numbers, so the order changes nothing): a run
    with no step left, only its final save, needs no frozen memories.
    """
    config = plan.config
    if not (config.cache_frozen and plan.model.imsm_config.is_siamese and step < plan.total_steps):
        return None, False
    output = Path(config.output)
    directory = Path(config.frozen_cache_dir) if config.frozen_cache_dir else output / FROZEN_CACHE_DIR
    batch = max(config.micro_batch_size, 8)
    write = accelerator.is_local_main_process
    return stored_frozen_cache(
        plan.model, plan.data, plan.pad_id, batch, accelerator.device, directory, progress, write
    )


def _timings(log: _StepLog, frozen_cache_seconds: float, cache_reused: bool) -> dict[str, Any]:
    """The summary's last loss, times and throughput."""
    seconds = log.seconds()
    return {
        "final_loss": log.last_loss,
        # `seconds` and `tokens_per_s` cover the optimizer steps of this process's session; the
        # frozen memories are computed (or read back from disk) before them, in `frozen_cache_seconds`.
        "seconds": round(seconds, 2),
        "frozen_cache_seconds": round(frozen_cache_seconds, 2),
        "frozen_cache_read": cache_reused,
        "tokens": log.tokens,
        "tokens_per_s": round(log.tokens / seconds, 1) if seconds else None,
    }


def _save_finished(plan: TrainingPlan, accelerator, wrapped, summary: dict[str, Any]) -> None:
    """The adapter, then the summary that marks the run finished; the run's own frozen cache goes."""
    output = Path(plan.config.output)
    if accelerator.is_main_process:
        accelerator.unwrap_model(wrapped).save_pretrained(output)
        # Written last and whole: its presence is what marks the run finished.
        write_atomically(output / SUMMARY, json.dumps(summary, indent=2) + "\n")
        if not plan.config.frozen_cache_dir:  # kept in the run for a resumption, which a finished run needs no more
            shutil.rmtree(output / FROZEN_CACHE_DIR, ignore_errors=True)
    accelerator.wait_for_everyone()


def run_training(
    plan: TrainingPlan, accelerator, progress: bool = True, hooks: TrainingHooks | None = None
) -> dict[str, Any]:
    """Train `plan.model` in place; write checkpoints, the metrics log, the adapter and the summary."""
    config, model, data, total_steps, batch_size = plan.config, plan.model, plan.data, plan.total_steps, plan.batch_size
    output = Path(config.output)
    hooks = hooks or TrainingHooks()
    if hooks.on_start is not None:
        hooks.on_start(model)
    optimizer = build_optimizer(
        model, plan.optimizer, plan.learning_rate, config.gate_learning_rate, config.weight_decay
    )
    scheduler = build_scheduler(optimizer, config.schedule, config.warmup_ratio, total_steps)
    wrapped = accelerator.prepare(model)
    at = {"step": 0, "epoch": 0, "position": 0}  # steps taken, epoch, next batch within it
    if config.resume:
        at = _resume(output, model, optimizer, scheduler, announce=accelerator.is_main_process)
    elif accelerator.is_main_process:
        (output / METRICS_LOG).unlink(missing_ok=True)
    step, epoch, position = at["step"], at["epoch"], at["position"]
    cache_started = time.perf_counter()
    cache, cache_reused = _frozen_memories(plan, accelerator, progress, step)
    frozen_cache_seconds = time.perf_counter() - cache_started

    def checkpoint(next_epoch: int, next_position: int) -> None:
        if accelerator.is_main_process:
            where = {"step": step, "epoch": next_epoch, "position": next_position}
            save_checkpoint(output, step, trainable_state(model), optimizer, scheduler, where)
        accelerator.wait_for_everyone()

    n, main = len(data.examples), accelerator.is_main_process
    snapshot_steps = set(config.snapshot_steps or [])
    steps_per_epoch = math.ceil(n / batch_size)
    wrapped.train()
    log = _StepLog(output / METRICS_LOG if main else None, total_steps, step, show=progress and main)
    with contextlib.closing(log):
        while step < total_steps and epoch < config.epochs:
            order = epoch_order(config.seed, epoch, n)
            while position < steps_per_epoch and step < total_steps:
                started = time.perf_counter()
                batch = order[position * batch_size : (position + 1) * batch_size]
                rank, world = accelerator.process_index, accelerator.num_processes
                mine = micro_batches(batch, config.micro_batch_size, data, plan.pad_id, cache, rank, world)
                try:
                    result = train_step(wrapped, mine, optimizer, scheduler, accelerator, step, config.max_grad_norm)
                except TrainingDiverged as error:
                    raise TrainingDiverged(
                        f"{error} (epoch {epoch + 1}); the last good checkpoint is kept in "
                        f"{str(output / CHECKPOINTS)!r}; lower the learning rate and restart"
                    ) from None
                seconds = time.perf_counter() - started
                step, position = step + 1, position + 1
                log.write(step, epoch + position / steps_per_epoch, result, optimizer.param_groups[0]["lr"])
                if step in snapshot_steps and main:
                    # Before the step's checkpoint: a run killed in between redoes the step and the
                    # snapshot, so a checkpoint past a snapshot step implies the snapshot exists.
                    accelerator.unwrap_model(wrapped).save_pretrained(snapshot_directory(output, step))
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    checkpoint(epoch, position)
                if hooks.on_step is not None:
                    hooks.on_step(step, result, seconds)
            if position >= steps_per_epoch:
                epoch, position = epoch + 1, 0
                checkpoint(epoch, position)

    summary = {
        **plan.header,
        "steps": step,
        "epochs_completed": epoch,
        **_timings(log, frozen_cache_seconds, cache_reused),
    }
    _save_finished(plan, accelerator, wrapped, summary)
    return summary


def snapshot_directory(output: Path, step: int) -> Path:
    """Where `snapshot_steps` keeps the adapter after `step` optimizer steps."""
    return Path(output) / SNAPSHOTS / f"step-{step:06d}"


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators: adapter and gate initialisation, dropout."""
    random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
