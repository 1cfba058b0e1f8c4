"""Saving and loading adapter directories: peft's own files plus the gate, safetensors only.

    DIR/adapter_config.json, adapter_model.safetensors   the tuned branch, in peft's format
    DIR/imsm_config.json                                 IMSMConfig, base model facts, versions
    DIR/imsm_gate.safetensors                            W_A [4d, r] (or [2d, r]) and W_B [r, d]

Files are written under a temporary name and renamed into place, so a crash never leaves a
half-written file. Every file is checked before it is used (`imsm.checked_files`): one that is
damaged all the same (cut short, zero-filled, not what it claims, NaN or inf) is refused with the
fix, before any model is built where the caller checks the directory first. Nothing is ever
unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import save_file

from imsm.atomic_write import staged_directory
from imsm.checked_files import check_safetensors, read_json, read_safetensors
from imsm.config import IMSMConfig
from imsm.errors import IMSMError
from imsm.model.peft_wrapping import peft_wrapping
from imsm.peft_methods.loramoe import loramoe_config_for
from imsm.version import __version__

CONFIG_FILE = "imsm_config.json"
GATE_FILE = "imsm_gate.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_WEIGHT_FILES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
REMEDY = "re-save the adapter (save_pretrained) or re-train it"


def base_model_facts(model: torch.nn.Module) -> dict[str, Any]:
    """What identifies a base model well enough to refuse an adapter made for another one."""
    config = model.config
    head = model.get_output_embeddings()
    return {
        "name_or_path": getattr(config, "_name_or_path", None) or None,
        "model_type": getattr(config, "model_type", None),
        "architectures": list(getattr(config, "architectures", None) or [type(model).__name__]),
        "hidden_size": int(
            head.get_base_layer().weight.shape[-1] if hasattr(head, "get_base_layer") else head.weight.shape[-1]
        ),
        "vocab_size": int(getattr(config, "vocab_size", 0) or 0),
    }


def save_imsm(
    peft_model: PeftModel, imsm_config: IMSMConfig, gate: torch.nn.Module | None, directory: str | os.PathLike
) -> None:
    """Write the tuned branch in peft's format, `imsm_config.json`, and the gate's W_A and W_B."""
    target = Path(directory)
    # Merged into the directory, not swapped for it: a training run keeps its checkpoints there.
    with staged_directory(target, if_exists="merge") as staging:
        peft_model.save_pretrained(str(staging), safe_serialization=True)
        if gate is not None:
            tensors = {"W_A": gate.W_A.detach().cpu().contiguous(), "W_B": gate.W_B.detach().cpu().contiguous()}
            save_file(tensors, str(staging / GATE_FILE), metadata={"format": "pt", "fusion": imsm_config.fusion})
        payload = {
            "imsm_version": __version__,
            "imsm": imsm_config.to_dict(),
            "base_model": base_model_facts(peft_model.get_base_model()),
            "peft_type": str(peft_model.peft_config[peft_model.active_adapter].peft_type.value),
        }
        (staging / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        if gate is None and (target / GATE_FILE).exists():
            (target / GATE_FILE).unlink()  # a stale gate would contradict the new config


def read_imsm_config(directory: Path) -> dict[str, Any] | None:
    path = directory / CONFIG_FILE
    return read_json(path, fix=REMEDY) if path.exists() else None


def check_adapter_directory(directory: str | os.PathLike) -> Path:
    """Refuse, with the fix, a directory that is missing, holds only pickle weights, or holds a
    damaged file. All four files are checked here, before any model is built; peft reads its two
    itself, and would fail on a damaged one with a traceback or, for NaNs, not at all."""
    path = Path(directory)
    if not path.is_dir():
        raise IMSMError(f"adapter directory {str(path)!r} does not exist; pass a directory written by save_pretrained")
    if not (path / PEFT_CONFIG_FILE).exists():
        raise IMSMError(f"{str(path)!r} has no {PEFT_CONFIG_FILE}; pass a directory written by save_pretrained")
    if not (path / PEFT_WEIGHTS_FILE).exists():
        pickles = [name for name in PICKLE_WEIGHT_FILES if (path / name).exists()]
        if pickles:
            raise IMSMError(
                f"{str(path)!r} holds only pickle weights ({pickles[0]}), which imsm never loads because "
                "unpickling can run arbitrary code; convert them to adapter_model.safetensors "
                "(load them yourself with torch.load(weights_only=True) and save with safetensors)"
            )
        raise IMSMError(f"{str(path)!r} has no {PEFT_WEIGHTS_FILE}; pass a directory written by save_pretrained")
    read_json(path / PEFT_CONFIG_FILE, fix=REMEDY)
    check_safetensors(path / PEFT_WEIGHTS_FILE, fix=REMEDY)
    if (path / GATE_FILE).exists():
        check_safetensors(path / GATE_FILE, fix=REMEDY)
    read_imsm_config(path)
    return path


def check_same_base_model(saved: dict[str, Any], model: torch.nn.Module, directory: Path) -> None:
    actual = base_model_facts(model)
    mismatches = [
        f"{key} {saved[key]!r} vs {actual[key]!r}"
        for key in ("model_type", "hidden_size", "architectures")
        if saved.get(key) is not None and saved[key] != actual[key]
    ]
    if mismatches:
        made_for = saved.get("name_or_path") or saved.get("model_type")
        raise IMSMError(
            f"adapter {str(directory)!r} was made for another base model ({made_for!r}): "
            f"{'; '.join(mismatches)} (saved vs given); load it on the base model it was trained on"
        )


def load_tuned_branch(
    base_model: torch.nn.Module, directory: str | os.PathLike, is_trainable: bool = False
) -> tuple[PeftModel, IMSMConfig, Path]:
    """The saved adapter on `base_model` (peft's loader), the saved IMSMConfig, and the checked path.

    A directory without `imsm_config.json` is a plain peft adapter: vanilla PEFT (fusion "none").
    """
    path = check_adapter_directory(directory)
    saved = read_imsm_config(path)
    if saved is None:
        imsm_config = IMSMConfig(fusion="none")  # a plain peft adapter: vanilla PEFT
    else:
        check_same_base_model(saved.get("base_model", {}), base_model, path)
        imsm_config = IMSMConfig.from_dict(saved.get("imsm", {}))
    if isinstance(base_model, PeftModel):
        raise IMSMError("from_pretrained takes the plain base model, not a PeftModel; pass model.get_base_model()")
    try:
        # LoRAMoE saves as peft LoRA plus expert fields; peft alone would rebuild plain LoRA layers.
        peft_config = loramoe_config_for(path)
        with peft_wrapping():
            peft_model = PeftModel.from_pretrained(base_model, str(path), is_trainable=is_trainable, config=peft_config)
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise IMSMError(
            f"could not load the peft adapter in {str(path)!r} onto this base model: {first_line}"
        ) from None
    return peft_model, imsm_config, path


def load_gate(gate: torch.nn.Module, directory: Path, fusion: str, is_trainable: bool = False) -> None:
    """Fill `gate`'s W_A and W_B from the directory's gate file, refusing a file that does not fit."""
    gate_path = directory / GATE_FILE
    if not gate_path.exists():
        raise IMSMError(f"{str(directory)!r} has no {GATE_FILE} although its fusion is {fusion!r}; re-save the model")
    tensors = read_safetensors(gate_path, fix=REMEDY)
    for name in ("W_A", "W_B"):
        expected = tuple(getattr(gate, name).shape)
        if name not in tensors or tuple(tensors[name].shape) != expected:
            found = tuple(tensors[name].shape) if name in tensors else "missing"
            raise IMSMError(
                f"{gate_path}: {name} has shape {found}, expected {expected}; the gate does not fit this model"
            )
    with torch.no_grad():
        gate.W_A.copy_(tensors["W_A"])
        gate.W_B.copy_(tensors["W_B"])
    gate.requires_grad_(is_trainable)


class PersistMixin:
    """`save_pretrained` and `from_pretrained` for `IMSMModel`, in the format this module describes."""

    def save_pretrained(self, directory: str) -> None:
        """Write peft's adapter files plus `imsm_config.json` and `imsm_gate.safetensors`."""
        if not self.has_adapter:
            raise IMSMError("this model has no peft adapter, so there is nothing to save; save the base model itself")
        save_imsm(self.peft_model, self.imsm_config, self.gate, directory)

    @classmethod
    def from_pretrained(cls, base_model: torch.nn.Module, directory: str, is_trainable: bool = False):
        """Load a directory written by `save_pretrained` (or a plain peft adapter, as fusion "none")."""
        peft_model, imsm_config, path = load_tuned_branch(base_model, directory, is_trainable)
        model = cls(peft_model, imsm_config)
        if model.gate is not None:
            load_gate(model.gate, path, imsm_config.fusion, is_trainable)
        if not is_trainable:
            model.eval()
        return model


def holds_saved_adapter(peft_model: PeftModel, directory: str | os.PathLike) -> bool:
    """Whether `peft_model`'s adapter weights are bitwise those saved in `directory`, as loading them
    gives (in the model's dtype and device): a post-hoc variant that left the adapter as trained
    computes exactly what the adapter as trained does."""
    saved = read_safetensors(Path(directory) / PEFT_WEIGHTS_FILE, fix="re-save the adapter")
    current = get_peft_model_state_dict(peft_model)
    if saved.keys() != current.keys():
        return False
    return all(torch.equal(saved[k].to(current[k].device, current[k].dtype), current[k]) for k in saved)
