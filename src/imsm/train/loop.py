"""The training loop: plain PyTorch you can read, run under Hugging Face Accelerate.

One optimizer step = `batch_size` examples, split into micro-batches whose gradients
accumulate (and, under `accelerate launch`, are shared out across processes: each process takes
every world_size-th micro-batch, and DDP averages). The frozen branch's memories are computed
once per example before training and reused every epoch. Checkpoints make any interruption,
SIGKILL included, resumable to the same final weights.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from imsm.errors import IMSMError
from imsm.model.siamese import FrozenMemory, IMSMModel
from imsm.peft_methods.loramoe import loramoe_balance_loss
from imsm.train.checkpoint import CHECKPOINTS, latest_checkpoint, load_checkpoint, save_checkpoint
from imsm.train.config import TrainConfig
from imsm.train.examples import TokenizedSet, collate

SUMMARY = "train_summary.json"
CONFIG = "train_config.json"
METRICS_LOG = "metrics.jsonl"


class TrainingDiverged(IMSMError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------------------------
# The run directory.


def check_output_directory(config: TrainConfig) -> Path:
    """Refuse to clobber a finished run, or to resume what cannot be resumed."""
    output = Path(config.output)
    finished = (output / SUMMARY).exists()
    has_checkpoint = latest_checkpoint(output) is not None
    if config.resume:
        if not has_checkpoint:
            raise IMSMError(
                f"--resume: {str(output)!r} has no checkpoint to resume from; start the run without --resume"
            )
        saved = json.loads((output / CONFIG).read_text())["config"]
        ignored = {"resume", "overwrite", "checkpoint_every"}
        changed = sorted(k for k in saved if k not in ignored and saved[k] != config.to_dict().get(k))
        if changed:
            raise IMSMError(
                f"--resume: {str(output)!r} was started with other settings ({', '.join(changed)} differ); "
                "resume with the same options, or start a new run in another directory"
            )
        if finished:
            raise IMSMError(f"{str(output)!r} holds a finished run; nothing to resume")
    elif output.exists() and any(output.iterdir()):
        if not config.overwrite:
            what = "a finished run" if finished else "an unfinished run" if has_checkpoint else "files"
            hint = " or --resume to continue it" if has_checkpoint and not finished else ""
            raise IMSMError(
                f"output directory {str(output)!r} already holds {what}; pass --overwrite to replace it{hint}"
            )
    return output


def package_versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    from imsm import __version__

    return {
        "imsm": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------------
# Optimisation.


def learning_rate_lambda(schedule: str, warmup_steps: int, total_steps: int):
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


def build_optimizer(
    model: IMSMModel, optimizer_name: str, learning_rate: float, gate_learning_rate: float, weight_decay: float
):
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


def adalora_orthogonal_penalty(model: IMSMModel) -> torch.Tensor | None:
    """AdaLoRA's regulariser ||PᵀP - I||_F averaged over its P and Q matrices, times
    orth_reg_weight. peft adds it only when it computes the loss itself, which IMSM does not."""
    peft_model = model.peft_model
    adapter = peft_model.active_adapter
    config = peft_model.peft_config[adapter]
    if type(config).__name__ != "AdaLoraConfig" or config.orth_reg_weight <= 0:
        return None
    total, count = 0.0, 0
    for name, parameter in peft_model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and adapter in name:
            covariance = parameter @ parameter.T if "lora_A" in name else parameter.T @ parameter
            identity = torch.eye(*covariance.shape, device=covariance.device, dtype=covariance.dtype)
            total = total + torch.norm(covariance - identity, p="fro")
            count += 1
    return config.orth_reg_weight * total / count if count else None


# ---------------------------------------------------------------------------------------------
# Frozen memories.


@dataclass
class FrozenCache:
    """Per example: q_M [d] and h_M at its labelled positions [n_i, d], on the CPU."""

    query: list[torch.Tensor]
    hidden: list[torch.Tensor]

    def batch(self, indices: list[int], device) -> FrozenMemory:
        # Row-major order of labelled positions = example order, then position order.
        return FrozenMemory(
            query=torch.stack([self.query[i] for i in indices]).to(device),
            hidden=torch.cat([self.hidden[i] for i in indices]).to(device),
        )


@torch.no_grad()
def build_frozen_cache(model: IMSMModel, data: TokenizedSet, pad_id: int, batch_size: int, device, progress: bool):
    """Run the frozen model once over every example, in a fixed order (so a resumed run sees
    bit-identical memories)."""
    query: list[torch.Tensor] = []
    hidden: list[torch.Tensor] = []
    examples = data.examples
    for start in tqdm(range(0, len(examples), batch_size), desc="frozen memories", disable=not progress, leave=False):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        memory = model.frozen_memory(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["query_mask"])
        counts = (batch["labels"][:, 1:] != -100).sum(dim=1).tolist()
        query.extend(memory.query.cpu().unbind(0))
        hidden.extend(memory.hidden.cpu().split(counts))
    return FrozenCache(query, hidden)


# ---------------------------------------------------------------------------------------------
# The loop.


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The shuffled example order of one epoch, reproducible from the seed alone."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


_ALLOCATOR_FIELDS = ("ipt", "exp_avg_ipt", "exp_avg_unc")


def _rank_allocator(model: IMSMModel):
    return getattr(model.peft_model.base_model, "rankallocator", None) if model.has_adapter else None


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


def run_training(
    config: TrainConfig,
    model: IMSMModel,
    data: TokenizedSet,
    pad_id: int,
    optimizer_name: str,
    learning_rate: float,
    batch_size: int,
    total_steps: int,
    accelerator,
    header: dict[str, Any],
    progress: bool = True,
) -> dict[str, Any]:
    """Train `model` in place; write checkpoints, the metrics log, the adapter and the summary."""
    output = Path(config.output)
    n = len(data.examples)
    steps_per_epoch = math.ceil(n / batch_size)
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    is_adalora = type(model.peft_model.peft_config[model.peft_model.active_adapter]).__name__ == "AdaLoraConfig"

    cache, cache_started = None, time.perf_counter()
    if config.cache_frozen and model.imsm_config.is_siamese:
        cache = build_frozen_cache(model, data, pad_id, max(config.micro_batch_size, 8), device, progress)
    frozen_cache_seconds = time.perf_counter() - cache_started

    optimizer = build_optimizer(model, optimizer_name, learning_rate, config.gate_learning_rate, config.weight_decay)
    warmup = int(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_lambda(config.schedule, warmup, total_steps))
    wrapped = accelerator.prepare(model)

    step, epoch, position = 0, 0, 0
    if config.resume:
        trainable, saved_position = load_checkpoint(latest_checkpoint(output), optimizer, scheduler)
        missing = {k for k in trainable_state(model) if not k.startswith("adalora_allocator/")} - set(trainable)
        if missing:
            raise IMSMError(f"checkpoint in {str(output)!r} lacks {sorted(missing)[0]}; it was made by another setup")
        restore_trainable_state(model, trainable)
        step, epoch, position = saved_position["step"], saved_position["epoch"], saved_position["position"]
    elif accelerator.is_main_process:
        (output / METRICS_LOG).unlink(missing_ok=True)

    def checkpoint(next_epoch: int, next_position: int) -> None:
        if accelerator.is_main_process:
            save_checkpoint(
                output,
                step,
                trainable_state(model),
                optimizer,
                scheduler,
                {"step": step, "epoch": next_epoch, "position": next_position},
            )
        accelerator.wait_for_everyone()

    wrapped.train()
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="train",
        unit="step",
        disable=not progress or not accelerator.is_main_process,
    )
    started, tokens_seen, last_loss = time.perf_counter(), 0, float("nan")
    log = (output / METRICS_LOG).open("a") if accelerator.is_main_process else None
    try:
        while step < total_steps and epoch < config.epochs:
            order = epoch_order(config.seed, epoch, n)
            while position < steps_per_epoch and step < total_steps:
                batch_indices = order[position * batch_size : (position + 1) * batch_size]
                micro = [
                    batch_indices[i : i + config.micro_batch_size]
                    for i in range(0, len(batch_indices), config.micro_batch_size)
                ]
                mine = micro[rank::world]
                step_loss, tokens = _accumulate_gradients(
                    wrapped, model, mine, data, pad_id, cache, accelerator, is_adalora, (step, epoch, output)
                )
                tokens_seen += tokens
                if world > 1:  # log the step's loss over all processes, not just this one's share
                    step_loss = float(accelerator.reduce(torch.tensor(step_loss, device=device), reduction="mean"))
                trainable = [p for p in model.parameters() if p.requires_grad]
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm or float("inf"))
                optimizer.step()
                if is_adalora:
                    # AdaLoRA's rank allocation reads this step's gradients: after step, before zero_grad.
                    model.peft_model.base_model.update_and_allocate(step)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                position += 1
                last_loss = step_loss
                elapsed = time.perf_counter() - started
                record = {
                    "step": step,
                    "epoch": epoch + position / steps_per_epoch,
                    "loss": round(step_loss, 6),
                    "lr": optimizer.param_groups[0]["lr"],
                    "grad_norm": round(float(grad_norm), 6),
                    "tokens_per_s": round(tokens_seen / elapsed, 1),
                }
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                bar.set_postfix(
                    loss=f"{step_loss:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}"
                )
                bar.update(1)
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    checkpoint(epoch, position)
            if position >= steps_per_epoch:
                epoch, position = epoch + 1, 0
                checkpoint(epoch, position)
    finally:
        bar.close()
        if log is not None:
            log.close()

    seconds = time.perf_counter() - started
    summary = {
        **header,
        "steps": step,
        "epochs_completed": epoch,
        "final_loss": last_loss,
        # `seconds` and `tokens_per_s` cover the optimizer steps of this process's session; the
        # frozen memories are computed before them, in `frozen_cache_seconds`.
        "seconds": round(seconds, 2),
        "frozen_cache_seconds": round(frozen_cache_seconds, 2),
        "tokens": tokens_seen,
        "tokens_per_s": round(tokens_seen / seconds, 1) if seconds else None,
    }
    if accelerator.is_main_process:
        accelerator.unwrap_model(wrapped).save_pretrained(output)
        (output / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.wait_for_everyone()
    return summary


def _accumulate_gradients(wrapped, model, micro_batches, data, pad_id, cache, accelerator, is_adalora, where):
    """Forward and backward over this process's micro-batches of one optimizer step.

    Returns (mean loss, real tokens seen). Gradients are synchronised across processes on the
    last micro-batch only.
    """
    step, epoch, output = where
    device = accelerator.device
    step_loss, tokens = 0.0, 0
    for index, indices in enumerate(micro_batches):
        batch = {k: v.to(device) for k, v in collate([data.examples[i] for i in indices], pad_id).items()}
        memory = cache.batch(indices, device) if cache is not None else None
        last = index == len(micro_batches) - 1
        with _null_context() if last else accelerator.no_sync(wrapped), accelerator.autocast():
            loss = wrapped(**batch, return_logits=False, frozen_memory=memory).loss
            penalty = adalora_orthogonal_penalty(model) if is_adalora else None
            total = loss + penalty if penalty is not None else loss
            # LoRAMoE's localized balancing constraint on this forward's routing (None otherwise).
            balance = loramoe_balance_loss(model, batch["attention_mask"])
            total = total + balance if balance is not None else total
            if not torch.isfinite(total):
                raise TrainingDiverged(
                    f"the loss became {float(total.detach())} at step {step + 1} (epoch {epoch + 1}); the last good "
                    f"checkpoint is kept in {str(output / CHECKPOINTS)!r}; lower the learning rate and restart"
                )
            accelerator.backward(total / len(micro_batches))
        step_loss += float(loss.detach()) / len(micro_batches)
        tokens += int(batch["attention_mask"].sum())
    return step_loss, tokens


class _null_context:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def remove_previous_run(output: Path) -> None:
    """--overwrite: clear the directory's previous run before starting."""
    for item in output.iterdir():
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
