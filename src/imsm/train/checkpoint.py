"""Checkpoints that survive a crash at any moment: safetensors and JSON only, written atomically.

    OUTPUT/checkpoints/step-000120/
        trainable.safetensors    peft and gate tensors (everything but the frozen base)
        optimizer.safetensors    optimizer state tensors, keyed state.<param>.<name>
        state.json               optimizer scalars and groups, scheduler, RNG, data position

A checkpoint directory is assembled under a temporary name and renamed into place, so one that
exists is complete. It can still be damaged afterwards (a disk error, a copy cut short): every file
is checked when read back, and resuming takes the newest intact checkpoint, naming those it skips.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from imsm.atomic_write import staged_directory
from imsm.checked_files import DamagedFile, read_json, read_safetensors
from imsm.errors import IMSMError

CHECKPOINTS = "checkpoints"
KEEP_LAST = 2  # older checkpoints are deleted once a newer one is complete
STATE_FIELDS = ("position", "optimizer", "scheduler", "python_rng")


def optimizer_to_files(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's `state_dict` split into tensors (for safetensors) and the rest (for JSON)."""
    tensors, scalars = {}, {}
    for param_id, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param_id}.{name}"] = value
    return tensors, {"scalars": scalars, "param_groups": state_dict["param_groups"]}


def optimizer_from_files(tensors: dict[str, torch.Tensor], described: dict[str, Any]) -> dict:
    """The `state_dict` that `optimizer_to_files` split, put back together."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    for key, value in described["scalars"].items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    return {"state": state, "param_groups": described["param_groups"]}


def save_checkpoint(
    output: Path, step: int, trainable: dict[str, torch.Tensor], optimizer, scheduler, position: dict[str, Any]
) -> Path:
    root = output / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:06d}"
    # "replace": the same step may be written again (e.g. step and epoch end coincide).
    with staged_directory(target, if_exists="replace") as staging:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(staging / "trainable.safetensors")
        )
        optimizer_tensors, optimizer_described = optimizer_to_files(optimizer.state_dict())
        save_file(optimizer_tensors, str(staging / "optimizer.safetensors"))
        save_file({"torch": torch.get_rng_state()}, str(staging / "rng.safetensors"))
        state = {
            "position": position,
            "optimizer": optimizer_described,
            "scheduler": scheduler.state_dict(),
            "python_rng": random.getstate(),
        }
        (staging / "state.json").write_text(json.dumps(state))
    # Only now that `target` is complete is anything deleted. Checkpoints past it were skipped as
    # damaged when the run resumed from an earlier one (nothing else puts one there): `target`
    # supersedes them. Of the others, the newest KEEP_LAST stay.
    existing = checkpoint_directories(output)
    later = [p for p in existing if p.name > target.name]
    earlier = [p for p in existing if p.name <= target.name]
    for old in later + earlier[:-KEEP_LAST]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def checkpoint_directories(output: Path) -> list[Path]:
    """The run's checkpoint directories, oldest first (whole when written; not checked here)."""
    root = output / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and p.is_dir())


def latest_checkpoint(output: Path) -> Path | None:
    found = checkpoint_directories(output)
    return found[-1] if found else None


@dataclass
class Checkpoint:
    """A checkpoint's files, read and checked, not yet applied to anything."""

    path: Path
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    torch_rng: torch.Tensor
    state: dict[str, Any]


def read_checkpoint(path: Path) -> Checkpoint:
    """Every file of a checkpoint, checked before any of it is used.

    Raises:
        DamagedFile: a file is missing, cut short, zero-filled, not its format, or holds NaN/inf.
    """
    fix = "resume from an earlier checkpoint (delete this one), or train again with --overwrite"
    state = read_json(path / "state.json", fix=fix, keys=STATE_FIELDS)
    trainable = read_safetensors(path / "trainable.safetensors", fix=fix)
    optimizer = read_safetensors(path / "optimizer.safetensors", fix=fix)
    rng = read_safetensors(path / "rng.safetensors", fix=fix)
    if "torch" not in rng:
        raise DamagedFile(path / "rng.safetensors", "lacks the tensor 'torch'", fix)
    return Checkpoint(path, trainable, optimizer, rng["torch"], state)


def newest_intact_checkpoint(output: Path) -> tuple[Checkpoint, list[str]]:
    """The newest checkpoint whose files are all intact, and a note on each newer one skipped.

    Raises:
        IMSMError: the run has no intact checkpoint.
    """
    skipped = []
    for path in reversed(checkpoint_directories(output)):
        try:
            return read_checkpoint(path), skipped
        except DamagedFile as error:
            skipped.append(f"{path.name}: {error.path.name} {error.problem}")
    found = f" ({'; '.join(skipped)})" if skipped else ""
    root = output / CHECKPOINTS
    raise IMSMError(
        f"--resume: {root} holds no intact checkpoint{found}; train from the start: --overwrite instead of "
        f"--resume (in an experiment, delete {root})"
    )


def restore_checkpoint(checkpoint: Checkpoint, optimizer, scheduler) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore optimizer, scheduler and RNG; return the trainable tensors and the data position."""
    state = checkpoint.state
    optimizer.load_state_dict(optimizer_from_files(checkpoint.optimizer, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(checkpoint.torch_rng)
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return checkpoint.trainable, state["position"]
