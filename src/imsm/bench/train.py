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
and saving are outside it. `warmup_steps` leaves the first steps out of both counts (a GPU's
first step pays for its kernels' set-up, its optimizer state's allocation); IMSM's frozen memories
then count in proportion to the steps timed (they are computed once for every step's examples).

On CUDA each run also reports its peak allocated GPU memory, over the whole process and from the
start of training on (the counter is reset once the model is built), and whether activation
checkpointing was on. Paper scale (`--random-weights`, `--sequence-length`): the architecture of a
config.json with random weights made on the GPU, trained on synthetic examples of exactly
`sequence_length` tokens, so no weights, tokenizer or data set need be at hand.
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from imsm.bench.random_weights import random_model_and_tokenizer
from imsm.errors import IMSMError
from imsm.model.load import load_model_and_tokenizer
from imsm.train.config import TrainConfig
from imsm.train.loop import StepResult, TrainingHooks
from imsm.train.run import train

VARIANTS = {"vanilla": "none", "imsm": "imsm"}
# Keys of a run's config that set up the measurement rather than the training (TrainConfig's fields).
BENCH_KEYS = {"random_weights": False, "warmup_steps": 0}


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


def write_synthetic_task(directory: Path, examples: int, answer_tokens: int, seed: int = 0) -> Path:
    """A task of `examples` rows of random lowercase words: a prompt far longer than any
    `max_length` (so training cuts every prompt and every example is exactly `max_length` tokens)
    and an answer of `answer_tokens` characters, one token each under `byte_tokenizer`. Returns
    the spec file."""
    generator = random.Random(seed)

    def text(characters: int) -> str:
        words, length = [], 0
        while length < characters:
            words.append("".join(generator.choices("abcdefghijklmnopqrstuvwxyz", k=generator.randint(2, 9))))
            length += len(words[-1]) + 1
        return " ".join(words)[:characters]

    directory.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": text(16_384), "answer": text(answer_tokens)} for _ in range(examples)]
    (directory / "synthetic.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = directory / "synthetic.yaml"
    spec.write_text(
        'name: synthetic\ndata: synthetic.jsonl\nprompt: "{prompt}"\nanswer: answer\nmetrics: [exact_match]\n'
    )
    return spec


def _load_random_weights(model: str, dtype: str, device, trust_remote_code: bool = False):
    return random_model_and_tokenizer(model, dtype, device)


@torch.no_grad()
def _warm_up(model, micro_batch_size: int, length: int) -> None:
    """One no-grad forward of a micro-batch's shape before the clock starts, so that neither
    variant pays CUDA's first-call set-up (cuBLAS handles, the allocator's first blocks) in its
    measured time: IMSM's frozen memories would otherwise pay it for IMSM, the first step for vanilla."""
    was_training = model.training
    model.eval()
    ids = torch.randint(0, 256, (micro_batch_size, length), device=model.device)
    labels = ids.clone()
    labels[:, : length // 2] = -100
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, return_logits=False)
    torch.cuda.synchronize()
    model.train(was_training)


def run_worker(config_json: str, result_path: str) -> None:
    """Inside the fresh process: train once, write the timings and the peak memory."""
    config = json.loads(config_json)
    bench = {key: config.pop(key, default) for key, default in BENCH_KEYS.items()}
    measured: dict[str, Any] = {"reset": False, "step_seconds": 0.0, "tokens": 0, "steps": 0}
    cuda = torch.cuda.is_available()

    def on_start(model) -> None:
        # Loading the model dominates the process's peak (conversion buffers, the loader's
        # copies), which would hide what training itself holds; so also measure the peak from
        # the moment training starts, with the model loaded and built.
        measured["activation_checkpointing"] = model.is_activation_checkpointing
        measured["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
        if cuda:
            measured["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20  # the model's build
            measured["model_cuda_mib"] = torch.cuda.memory_allocated() / 2**20  # weights, adapter, gate
            _warm_up(model, config.get("micro_batch_size", 4), min(config.get("max_length", 512), 64))
            torch.cuda.reset_peak_memory_stats()
        measured["reset"] = _reset_peak_rss()

    def on_step(step: int, result: StepResult, seconds: float) -> None:
        if step <= bench["warmup_steps"]:
            return
        measured["step_seconds"] += seconds
        measured["tokens"] += result.tokens
        measured["steps"] += 1

    hooks = TrainingHooks(on_start=on_start, on_step=on_step)
    load = _load_random_weights if bench["random_weights"] else load_model_and_tokenizer
    summary = train(TrainConfig(**config), progress=False, hooks=hooks, load_model=load)
    if not measured["steps"]:
        raise IMSMError(
            f"bench train: {summary['steps']} steps, none after the {bench['warmup_steps']} warm-up steps; "
            "train on more examples or take fewer warm-up steps"
        )
    frozen_seconds = summary["frozen_cache_seconds"] * measured["steps"] / summary["steps"]
    seconds = measured["step_seconds"] + frozen_seconds
    result = {
        "tokens": measured["tokens"],
        "steps": summary["steps"],
        "timed_steps": measured["steps"],
        "seconds": round(seconds, 3),
        "frozen_cache_seconds": summary["frozen_cache_seconds"],
        "tokens_per_s": measured["tokens"] / seconds,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "training_peak_rss_mib": _peak_rss_mib() if measured["reset"] else None,
        "trainable_parameters": summary["resolved"]["trainable_parameters"],
        "total_parameters": summary["resolved"]["total_parameters"],
        "final_loss": summary["final_loss"],
        "activation_checkpointing": measured["activation_checkpointing"],
        "dtype": measured["dtype"],
    }
    if cuda:
        result["training_peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["model_cuda_mib"] = measured["model_cuda_mib"]
        result["peak_cuda_mib"] = max(measured["peak_cuda_mib"], result["training_peak_cuda_mib"])
        result["gpu"] = torch.cuda.get_device_name(0)
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

    `base_config` holds TrainConfig fields except `fusion` and `output`, and any of `BENCH_KEYS`.
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
    if all("training_peak_cuda_mib" in r for name in VARIANTS for r in runs[name]):
        for name in VARIANTS:
            for key in ("peak_cuda_mib", "training_peak_cuda_mib", "model_cuda_mib"):
                summary[f"{name}_{key}"] = statistics.median(r[key] for r in runs[name])
        summary["cuda_peak_memory_ratio"] = summary["imsm_peak_cuda_mib"] / summary["vanilla_peak_cuda_mib"]
    return summary


if __name__ == "__main__":  # the worker entry point: python -m imsm.bench.train --worker CONFIG OUT
    if len(sys.argv) != 4 or sys.argv[1] != "--worker":
        sys.exit("usage: python -m imsm.bench.train --worker CONFIG_JSON RESULT_PATH (use `imsm bench train`)")
    try:
        run_worker(sys.argv[2], sys.argv[3])
    except IMSMError as error:  # the parent shows this line; a traceback would hide it
        sys.exit(str(error))
