"""How a run was made, written at the top of every file of results: numbers mean little without it.

`provenance_header` is the one place that stamps a result with the imsm and package versions, the
time and the machine; each command adds its own settings (options, seed, task versions) to it.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any

import accelerate
import peft
import torch
import transformers

from imsm.model.load import cpu_has_native_bf16
from imsm.version import __version__


def package_versions() -> dict[str, str]:
    """The versions of imsm, python and the libraries a result depends on."""
    return {
        "imsm": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    """One line: CPU, cores, torch threads, bf16 support, GPU and torch version."""
    parts = [cpu_model(), f"{os.cpu_count()} cpus", f"{torch.get_num_threads()} torch threads"]
    parts.append("native bf16" if cpu_has_native_bf16() else "no native bf16")
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    parts.append(f"torch {torch.__version__}")
    return ", ".join(parts)


def now() -> str:
    """The current UTC time, to the second, in ISO 8601."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def provenance_header(**settings: Any) -> dict[str, Any]:
    """The header of a result file: who made it, when and where, then the command's own settings.

    Args:
        **settings: what the command adds (its options, seed, task versions, ...), in order.

    Returns:
        `{"imsm_version", "created", "machine", "versions", **settings}`.
    """
    return {
        "imsm_version": __version__,
        "created": now(),
        "machine": describe_machine(),
        "versions": package_versions(),
        **settings,
    }
