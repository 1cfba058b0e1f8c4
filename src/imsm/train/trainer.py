"""`IMSMTrainer`: transformers' `Trainer` for an `IMSMModel`, with checkpoints in imsm's own format.

A checkpoint is a saved adapter directory (what `IMSMModel.save_pretrained` writes, so
`IMSMModel.from_pretrained(base_model, "OUTPUT/checkpoint-N")` loads it) plus the training state:

    OUTPUT/checkpoint-N/
        adapter_config.json, adapter_model.safetensors   the tuned branch, in peft's format
        imsm_config.json, imsm_gate.safetensors          IMSMConfig and the gate's W_A, W_B
        trainer_state.json                               Trainer's own: step, logs, best checkpoint
        training_args.json                               the TrainingArguments
        optimizer.safetensors, optimizer.json            optimizer state tensors; its scalars and groups
        scheduler.json                                   the learning-rate schedule's state
        rng_state.safetensors, rng_state.json            torch (CPU, CUDA), numpy and Python generators
        scaler.json                                      fp16's gradient scaler, when there is one

The base weights are never written. Trainer itself would save optimizer, scheduler, RNG state,
scaler and training arguments as torch pickles (`optimizer.pt`, `scheduler.pt`, `rng_state.pth`,
`scaler.pt`, `training_args.bin`), and load them back with `torch.load`; this project never
unpickles a file a user may hand it, because unpickling can run code. So each of them is written
as safetensors and JSON instead, as `imsm train`'s checkpoints are (`imsm.train.checkpoint`), and
a checkpoint is resumed without unpickling anything; one written by plain `Trainer` is refused.

DeepSpeed and FSDP are refused (they save sharded state this class does not write); `imsm train`
under `accelerate launch` is the way to scale out. DDP works.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft.utils import set_peft_model_state_dict
from safetensors.torch import save_file
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.utils import logging

from imsm.atomic_write import atomic_path, write_atomically
from imsm.checked_files import read_json, read_safetensors
from imsm.config import IMSMConfig
from imsm.errors import IMSMError
from imsm.model import persist
from imsm.model.siamese import IGNORE_INDEX, IMSMModel
from imsm.peft_methods.loramoe import loramoe_balance_loss
from imsm.train.checkpoint import optimizer_from_files, optimizer_to_files
from imsm.train.config import AUTHORS_GATE_LEARNING_RATE
from imsm.train.examples import TrainExample
from imsm.train.optimization import adalora_orthogonal_penalty, adalora_tuner

logger = logging.get_logger(__name__)

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_STATE = "optimizer.json"
SCHEDULER_STATE = "scheduler.json"
SCALER_STATE = "scaler.json"
TRAINING_ARGS = "training_args.json"
RESUME_FIX = "resume from an earlier checkpoint (delete this one)"


def rng_files(process_index: int, world_size: int) -> tuple[str, str]:
    """The RNG files of one process: one pair per process when there are several, as Trainer does."""
    stem = "rng_state" if world_size <= 1 else f"rng_state_{process_index}"
    return f"{stem}.safetensors", f"{stem}.json"


def labelled_rows(examples: Sequence[TrainExample]) -> list[dict[str, list[int]]]:
    """imsm's tokenised examples (`imsm.train.examples.tokenize_examples`) as Trainer rows: the
    prompt labelled -100, so it is the query (eq. 3), the answer and EOS labelled with themselves."""
    return [
        {
            "input_ids": list(example.input_ids),
            "labels": [IGNORE_INDEX] * example.prompt_length + list(example.input_ids[example.prompt_length :]),
        }
        for example in examples
    ]


@dataclass
class IMSMDataCollator:
    """Right-pads rows of `input_ids` and `labels` (and `attention_mask`, `query_mask` if present)
    into a batch: pads are `pad_token_id` with attention 0, and -100 in the labels, so they are
    neither attended, nor query, nor trained on."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX, "query_mask": 0}
        batch = {}
        for name, value in fill.items():
            if name == "attention_mask" or name in rows[0]:
                batch[name] = torch.full((len(rows), width), value, dtype=torch.long)
        for index, row in enumerate(rows):
            n = len(row["input_ids"])
            for name in batch:
                given = row.get(name, [1] * n if name == "attention_mask" else None)
                if given is None or len(given) != n:
                    raise IMSMError(
                        f"row {index}: {name} has {'no value' if given is None else f'{len(given)} entries'} "
                        f"but input_ids has {n}; every row needs the same columns, aligned with input_ids"
                    )
                batch[name][index, :n] = torch.as_tensor(given, dtype=torch.long)
        if "query_mask" in batch:
            batch["query_mask"] = batch["query_mask"].bool()
        return batch


class _AdaLoraRankAllocation(TrainerCallback):
    """AdaLoRA's rank allocation after every optimizer step, while the step's gradients are still
    there (Trainer zeroes them after this callback), as `imsm train` does."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        tuner = adalora_tuner(model)
        if tuner is not None:
            tuner.update_and_allocate(state.global_step)


class IMSMTrainer(Trainer):
    """transformers' Trainer for an `IMSMModel`: the fused loss, imsm's checkpoint format (never
    the base weights, never pickles), resuming, best-model loading, non-reentrant gradient
    checkpointing, and the gate's own learning rate.

    Rows are `input_ids` and `labels` (optionally `attention_mask`, `query_mask`): the tokens
    labelled -100 that are attended form the prompt, whose mean state is the query memory (eq. 3).
    `IMSMDataCollator` pads them (the default); `labelled_rows` makes rows from imsm's tokenised
    task examples, and `imsm.trl.sft_dataset` from a TRL-style prompt-completion dataset.

    Args:
        model: The `IMSMModel` to train in place (with a peft adapter).
        args, data_collator, train_dataset, eval_dataset, processing_class, **kwargs: As for
            `transformers.Trainer` (`model_init` excepted: pass the model).
        gate_learning_rate: The gate's learning rate (the meaning of `imsm train
            --gate-learning-rate`): the gate's parameters get their own optimizer group at this
            rate, with the same weight decay and schedule as the rest. Default: the authors' 1e-3.
            None trains the gate at `args.learning_rate`.
    """

    def __init__(
        self,
        model: IMSMModel | None = None,
        args: TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        *,
        gate_learning_rate: float | None = AUTHORS_GATE_LEARNING_RATE,
        **kwargs,
    ):
        if not isinstance(model, IMSMModel):
            raise IMSMError(
                f"IMSMTrainer trains an IMSMModel (from imsm.get_imsm_model), got {type(model).__name__}; "
                "use transformers.Trainer for other models"
            )
        if not model.has_adapter:
            raise IMSMError("this IMSMModel has no peft adapter, so there is nothing to train; build it with one")
        if gate_learning_rate is not None and not gate_learning_rate > 0:
            raise IMSMError(f"gate_learning_rate must be greater than 0 (or None), got {gate_learning_rate!r}")
        if args is not None and getattr(args, "activation_checkpointing", args.gradient_checkpointing):
            # Refused here, before anything runs, rather than when train() switches it on.
            options = getattr(args, "activation_checkpointing_kwargs", args.gradient_checkpointing_kwargs)
            IMSMModel.checkpointing_options(options)
        if data_collator is None:
            data_collator = IMSMDataCollator(_pad_token_id(model, processing_class))
        self.gate_learning_rate = gate_learning_rate
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, processing_class, **kwargs)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise IMSMError(
                "IMSMTrainer does not support DeepSpeed or FSDP (their sharded checkpoints are pickles it does not "
                "write); train with DDP, or with `accelerate launch -m imsm train`"
            )
        if adalora_tuner(model) is not None:
            self.add_callback(_AdaLoraRankAllocation)

    # ----------------------------------------------------------------------------------------
    # Loss and optimizer.

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's fused loss; in training, with AdaLoRA's and LoRAMoE's regularisers added."""
        if not return_outputs and "labels" in inputs and self.label_smoother is None and self.compute_loss_func is None:
            # Only the loss is needed: the gate and head then run at labelled positions only,
            # never building the [B, T, V] logits.
            inputs = {**inputs, "return_logits": False}
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not model.training:
            return result
        loss, outputs = result if return_outputs else (result, None)
        imsm_model = self.accelerator.unwrap_model(model)
        for extra in (
            adalora_orthogonal_penalty(imsm_model),
            loramoe_balance_loss(imsm_model, inputs.get("attention_mask")),
        ):
            if extra is not None:
                loss = loss + extra
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        """Trainer's optimizer, with the gate's parameters moved to groups of their own at
        `gate_learning_rate` (each keeps the weight decay of the group it came from)."""
        given = self.optimizer is not None
        optimizer = super().create_optimizer(model)
        if given or self.gate_learning_rate is None:
            return optimizer
        imsm_model = self.accelerator.unwrap_model(self.model)
        gate = {id(p) for name, p in imsm_model.named_parameters() if imsm_model.parameter_group(name) == "gate"}
        for group in list(optimizer.param_groups):
            moved = [p for p in group["params"] if id(p) in gate]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in gate]
                optimizer.add_param_group({**group, "params": moved, "lr": self.gate_learning_rate})
        optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

    # ----------------------------------------------------------------------------------------
    # Saving: the adapter directory, and the training state as safetensors and JSON.

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not self.args.should_save:
            return
        output = Path(output_dir or self.args.output_dir)
        self.accelerator.unwrap_model(self.model).save_pretrained(str(output))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(str(output))
        write_atomically(output / TRAINING_ARGS, self.args.to_json_string())

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.args.should_save:
            return
        output = Path(output_dir)
        tensors, described = optimizer_to_files(self.optimizer.state_dict())
        with atomic_path(output / OPTIMIZER_TENSORS) as temporary:
            save_file(tensors, str(temporary))
        write_atomically(output / OPTIMIZER_STATE, json.dumps(described))
        write_atomically(output / SCHEDULER_STATE, json.dumps(self.lr_scheduler.state_dict()))

    def _save_scaler(self, output_dir: str) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and self.args.should_save:
            write_atomically(Path(output_dir) / SCALER_STATE, json.dumps(scaler.state_dict()))

    def _save_rng_state(self, output_dir: str) -> None:
        output = Path(output_dir)
        output.mkdir(parents=True, exist_ok=True)  # a process may get here before the main one saved the model
        tensors_file, scalars_file = rng_files(self.args.process_index, self.args.world_size)
        numpy_state = np.random.get_state()
        tensors = {"cpu": torch.get_rng_state(), "numpy": torch.from_numpy(numpy_state[1].astype(np.int64))}
        if torch.cuda.is_available():
            for device, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"cuda.{device}"] = state
        scalars = {"python": random.getstate(), "numpy": [numpy_state[0], *map(_plain, numpy_state[2:])]}
        with atomic_path(output / tensors_file) as temporary:
            save_file(tensors, str(temporary))
        write_atomically(output / scalars_file, json.dumps(scalars))

    # ----------------------------------------------------------------------------------------
    # Loading: into the model being trained, never through torch.load.

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = Path(resume_from_checkpoint)
        if not (path / TRAINER_STATE_NAME).exists():
            raise IMSMError(
                f"{str(path)!r} has no {TRAINER_STATE_NAME}, so it is not a whole Trainer checkpoint (a run stopped "
                f"while writing it leaves one like this); {RESUME_FIX}"
            )
        self._load_adapter_and_gate(path)

    def _load_best_model(self) -> None:
        logger.info(f"Loading the best model from {self.state.best_model_checkpoint} ({self.state.best_metric}).")
        self._load_adapter_and_gate(Path(self.state.best_model_checkpoint))

    def _load_adapter_and_gate(self, path: Path) -> None:
        """Put a saved directory's adapter and gate into the model being trained, after checking that
        it was made for this model (same IMSMConfig, same base model, every trainable tensor there)."""
        model: IMSMModel = self.accelerator.unwrap_model(self.model)
        path = persist.check_adapter_directory(path)
        saved = persist.read_imsm_config(path) or {}
        saved_config = IMSMConfig.from_dict(saved.get("imsm", {"fusion": "none"}))
        if saved_config != model.imsm_config:
            raise IMSMError(
                f"{str(path)!r} was saved with {saved_config}, but the model being trained has {model.imsm_config}; "
                "build the model with the same IMSMConfig to resume from it"
            )
        persist.check_same_base_model(saved.get("base_model", {}), model.causal_lm, path)
        weights = read_safetensors(path / persist.PEFT_WEIGHTS_FILE, fix=RESUME_FIX)
        result = set_peft_model_state_dict(model.peft_model, weights, adapter_name=model.peft_model.active_adapter)
        missing = [key for key in result.missing_keys if model.parameter_group(f"peft_model.{key}") == "peft"]
        if missing:
            raise IMSMError(f"{str(path)!r} lacks the adapter tensor {missing[0]}; it was saved from another setup")
        if model.gate is not None:
            persist.load_gate(model.gate, path, model.fusion, is_trainable=True)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        path = Path(checkpoint)
        if not (path / OPTIMIZER_TENSORS).exists():
            pickles = [name for name in (OPTIMIZER_NAME, SCHEDULER_NAME) if (path / name).exists()]
            if pickles:
                raise IMSMError(
                    f"{str(path)!r} holds {pickles[0]}, a pickle (transformers' Trainer wrote it), which imsm never "
                    "loads because unpickling can run code; resume from a checkpoint that IMSMTrainer wrote"
                )
            return  # saved with save_only_model: the optimizer starts afresh, as in Trainer
        described = read_json(path / OPTIMIZER_STATE, fix=RESUME_FIX, keys=("scalars", "param_groups"))
        tensors = read_safetensors(path / OPTIMIZER_TENSORS, fix=RESUME_FIX)
        self.optimizer.load_state_dict(optimizer_from_files(tensors, described))
        self.lr_scheduler.load_state_dict(read_json(path / SCHEDULER_STATE, fix=RESUME_FIX))

    def _load_scaler(self, checkpoint: str | None) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if checkpoint is not None and scaler is not None and (Path(checkpoint) / SCALER_STATE).exists():
            scaler.load_state_dict(read_json(Path(checkpoint) / SCALER_STATE, fix=RESUME_FIX))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        tensors_file, scalars_file = rng_files(self.args.process_index, self.args.world_size)
        path = Path(checkpoint)
        if not (path / tensors_file).exists():
            logger.info(f"{path} has no {tensors_file}: the random generators are not restored")
            return
        tensors = read_safetensors(path / tensors_file, fix=RESUME_FIX)
        scalars = read_json(path / scalars_file, fix=RESUME_FIX, keys=("python", "numpy"))
        version, internal, gauss = scalars["python"]
        random.setstate((version, tuple(internal), gauss))
        name, *numpy_scalars = scalars["numpy"]
        np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), *numpy_scalars))
        torch.set_rng_state(tensors["cpu"])
        cuda = [tensors[f"cuda.{device}"] for device in range(sum(name.startswith("cuda.") for name in tensors))]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        elif cuda:
            logger.warning(
                f"{path} holds the RNG state of {len(cuda)} CUDA devices, not of this machine's; not restored"
            )


def _pad_token_id(model: IMSMModel, processing_class) -> int:
    """The tokenizer's pad id, else the model's, else its EOS, else 0: padded positions are masked
    out of attention, query and loss, so any valid id will do."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    for candidate in (getattr(tokenizer, "pad_token_id", None), model.config.pad_token_id, model.config.eos_token_id):
        if isinstance(candidate, int):
            return candidate
        if isinstance(candidate, list) and candidate:
            return candidate[0]
    return 0


def _plain(value: Any) -> Any:
    """numpy scalars as the Python numbers JSON writes."""
    return value.item() if hasattr(value, "item") else value
