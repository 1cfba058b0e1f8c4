"""Training throughput and peak memory of IMSM against plain peft (`imsm bench train`).

Each run trains in a fresh Python process, so its peak resident memory (`ru_maxrss`) is its own
and neither variant inherits the other's warmed allocator. Variants alternate (vanilla, IMSM,
vanilla, ...) so slow drifts of a shared machine hit both alike; medians are reported.

Memory: the process's peak resident set (`ru_maxrss`, model loading included) and, on Linux, the
peak from the start of training on (the loaded model, the frozen memories, activations,
gradients and optimizer state), which is what IMSM can add to.

Throughput counts the real (non-padding) tokens of every optimizer step over the whole run,
divided by the time spent computing the frozen memories plus the time of every step (collating
its micro-batches and the `train_step` that `imsm train` runs), read through the loop's hooks:
IMSM pays for its frozen branch inside the measured time. Model loading, logging, checkpoints
and saving are outside it.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from imsm.errors import IMSMError
from imsm.train.config import TrainConfig
from imsm.train.loop import StepResult, TrainingHooks
from imsm.train.run import train

VARIANTS = {"vanilla": "none", "imsm": "imsm"}


def _reset_peak_rss() -> bool:
    """Linux: restart the peak-RSS counter (VmHWM) from the current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_worker(config_json: str, result_path: str) -> None:
    """Inside the fresh process: train once, write the timings and the peak memory."""
    measured = {"reset": False, "step_seconds": 0.0, "tokens": 0}

    def on_start(model) -> None:
        # Loading the model dominates the process's peak (conversion buffers, the loader's
        # copies), which would hide what training itself holds; so also measure the peak from
        # the moment training starts, with the model loaded and built.
        measured["reset"] = _reset_peak_rss()

    def on_step(step: int, result: StepResult, seconds: float) -> None:
        measured["step_seconds"] += seconds
        measured["tokens"] += result.tokens

    hooks = TrainingHooks(on_start=on_start, on_step=on_step)
    summary = train(TrainConfig(**json.loads(config_json)), progress=False, hooks=hooks)
    seconds = measured["step_seconds"] + summary["frozen_cache_seconds"]
    result = {
        "tokens": measured["tokens"],
        "steps": summary["steps"],
        "seconds": round(seconds, 3),
        "frozen_cache_seconds": summary["frozen_cache_seconds"],
        "tokens_per_s": measured["tokens"] / seconds,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "training_peak_rss_mib": _peak_rss_mib() if measured["reset"] else None,
        "trainable_parameters": summary["resolved"]["trainable_parameters"],
        "final_loss": summary["final_loss"],
    }
    if torch.cuda.is_available():
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(result_path).write_text(json.dumps(result))


def _measure(config: dict[str, Any], scratch: Path, name: str, repeat: int) -> dict[str, Any]:
    label = f"{name}-{repeat}"
    result_path = scratch / f"{label}.json"
    command = [sys.executable, "-m", "imsm.bench.train", "--worker", json.dumps(config), str(result_path)]
    completed = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if completed.returncode != 0 or not result_path.exists():
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise IMSMError(f"bench train: the {name} run (repeat {repeat + 1}) failed: {last}")
    return json.loads(result_path.read_text())


def bench_train(
    base_config: dict[str, Any], repeats: int = 1, on_result=None, scratch_root: str | None = None
) -> dict[str, Any]:
    """Train vanilla peft and IMSM `repeats` times each, alternating; return medians and ratios.

    `base_config` holds TrainConfig fields except `fusion` and `output`.
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="imsm-bench-train-", dir=scratch_root) as scratch:
        for repeat in range(repeats):
            for name, fusion in VARIANTS.items():
                output = Path(scratch) / f"{name}-{repeat}-run"
                config = {**base_config, "fusion": fusion, "output": str(output), "overwrite": True}
                result = _measure(config, Path(scratch), name, repeat)
                runs[name].append(result)
                if on_result is not None:
                    on_result(name, repeat, result)
    summary: dict[str, Any] = {"runs": runs}
    for name in VARIANTS:
        summary[f"{name}_tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in runs[name])
        summary[f"{name}_peak_rss_mib"] = statistics.median(r["peak_rss_mib"] for r in runs[name])
    summary["throughput_ratio"] = summary["imsm_tokens_per_s"] / summary["vanilla_tokens_per_s"]
    summary["peak_memory_ratio"] = summary["imsm_peak_rss_mib"] / summary["vanilla_peak_rss_mib"]
    if all(r["training_peak_rss_mib"] for name in VARIANTS for r in runs[name]):
        for name in VARIANTS:
            summary[f"{name}_training_peak_rss_mib"] = statistics.median(r["training_peak_rss_mib"] for r in runs[name])
        summary["training_peak_memory_ratio"] = (
            summary["imsm_training_peak_rss_mib"] / summary["vanilla_training_peak_rss_mib"]
        )
    return summary


if __name__ == "__main__":  # the worker entry point: python -m imsm.bench.train --worker CONFIG OUT
    if len(sys.argv) != 4 or sys.argv[1] != "--worker":
        sys.exit("usage: python -m imsm.bench.train --worker CONFIG_JSON RESULT_PATH (use `imsm bench train`)")
    try:
        run_worker(sys.argv[2], sys.argv[3])
    except IMSMError as error:  # the parent shows this line; a traceback would hide it
        sys.exit(str(error))
