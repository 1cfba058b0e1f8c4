"""A one-line description of the machine, for every result file: figures mean little without it."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    import torch

    from imsm.model.load import cpu_has_native_bf16

    parts = [cpu_model(), f"{os.cpu_count()} cpus", f"{torch.get_num_threads()} torch threads"]
    parts.append("native bf16" if cpu_has_native_bf16() else "no native bf16")
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    parts.append(f"torch {torch.__version__}")
    return ", ".join(parts)
