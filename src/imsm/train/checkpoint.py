"""Checkpoints that survive a crash at any moment: safetensors and JSON only, written atomically.

    OUTPUT/checkpoints/step-000120/
        trainable.safetensors    peft and gate tensors (everything but the frozen base)
        optimizer.safetensors    optimizer state tensors, keyed state.<param>.<name>
        state.json               optimizer scalars and groups, scheduler, RNG, data position

A checkpoint directory is assembled under a temporary name and renamed into place, so one that
exists is complete; resuming takes the newest.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from imsm.atomic_write import staged_directory

CHECKPOINTS = "checkpoints"
KEEP_LAST = 2  # older checkpoints are deleted once a newer one is complete


def _optimizer_to_files(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for param_id, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param_id}.{name}"] = value
    return tensors, {"scalars": scalars, "param_groups": state_dict["param_groups"]}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], described: dict[str, Any]) -> dict:
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
        optimizer_tensors, optimizer_described = _optimizer_to_files(optimizer.state_dict())
        save_file(optimizer_tensors, str(staging / "optimizer.safetensors"))
        save_file({"torch": torch.get_rng_state()}, str(staging / "rng.safetensors"))
        state = {
            "position": position,
            "optimizer": optimizer_described,
            "scheduler": scheduler.state_dict(),
            "python_rng": random.getstate(),
        }
        (staging / "state.json").write_text(json.dumps(state))
    complete = sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / "state.json").exists())
    for old in complete[:-KEEP_LAST]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(output: Path) -> Path | None:
    root = output / CHECKPOINTS
    if not root.is_dir():
        return None
    complete = sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / "state.json").exists())
    return complete[-1] if complete else None


def load_checkpoint(path: Path, optimizer, scheduler) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore optimizer, scheduler and RNG; return the trainable tensors and the data position."""
    state = json.loads((path / "state.json").read_text())
    optimizer.load_state_dict(_optimizer_from_files(load_file(str(path / "optimizer.safetensors")), state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return load_file(str(path / "trainable.safetensors")), state["position"]
