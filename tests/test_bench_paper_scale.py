"""Paper scale on one GPU (issue 30), checked on tiny shapes: random weights made in their dtype
where they live, synthetic examples of an exact length, activation checkpointing in both variants,
and the figures file with the issue's keys, refused when a measurement is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from imsm.bench.paper_scale import GOALS, paper_scale_figures
from imsm.bench.paper_scale import main as paper_scale_main
from imsm.bench.random_weights import byte_tokenizer, random_causal_lm, random_model_and_tokenizer
from imsm.bench.train import _warm_up, run_worker, write_synthetic_task
from imsm.cli import main
from imsm.errors import IMSMError

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = ROOT / "configs" / "architectures"
TINY = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}
ISSUE_KEYS = ("machine", "model_shape", *GOALS)


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


class _Float32Allocations(TorchDispatchMode):
    """Records every fp32 tensor of at least `numel` values that any operation creates."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.seen = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.numel() >= self.numel:
                self.seen.append((str(func), tuple(tensor.shape)))
        return out


def test_random_weights_are_made_in_bf16_with_no_fp32_copy(tiny_config):
    # The smallest weight matrix of the tiny model: an fp32 tensor of that size would be a weight
    # made in fp32 first (what an 8B model cannot afford: 32 GB).
    smallest = TINY["hidden_size"] * TINY["hidden_size"] // 2
    with _Float32Allocations(smallest) as watch:
        model = random_causal_lm(str(tiny_config), "bf16", "cpu")
    assert watch.seen == []
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert model.lm_head.weight.shape == (TINY["vocab_size"], TINY["hidden_size"])
    assert float(model.lm_head.weight.detach().float().std()) > 0  # initialised, not left empty
    assert not model.training
    with _Float32Allocations(smallest) as control:  # the watch sees weights made in fp32
        random_causal_lm(str(tiny_config), "fp32", "cpu")
    assert len(control.seen) >= TINY["num_hidden_layers"] * 7


@pytest.mark.parametrize(
    ("name", "parameters", "layers"), [("llama3-8b.json", 8_030_261_248, 32), ("qwen1.5-4b.json", 3_950_369_280, 40)]
)
def test_the_paper_shapes_are_built_where_asked_in_the_dtype_asked(name, parameters, layers):
    # On the meta device: every shape and dtype, no memory at all (never the 8B model on a CPU).
    model = random_causal_lm(str(ARCHITECTURES / name), "bf16", "meta")
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert model.config.num_hidden_layers == layers
    if model.config.model_type == "qwen2":  # Qwen1.5's q/k/v projections carry biases
        assert model.model.layers[0].self_attn.q_proj.bias is not None


def test_without_a_tokenizer_beside_the_config_bytes_are_tokens(tiny_config):
    _, tokenizer = random_model_and_tokenizer(str(tiny_config), "fp32", "cpu")
    assert len(tokenizer) == 258 and tokenizer.pad_token_id == 257 and tokenizer.eos_token_id == 256
    ids = tokenizer("abc def", add_special_tokens=False)["input_ids"]
    assert len(ids) == 7 and max(ids) < 256 and tokenizer.decode(ids) == "abc def"
    assert byte_tokenizer()("abc def")["input_ids"] == ids  # the same ids every time
    small = tiny_config.parent / "small.json"
    small.write_text(json.dumps({**TINY, "vocab_size": 200}))
    with pytest.raises(IMSMError, match="does not fit the model's vocabulary"):
        random_model_and_tokenizer(str(small), "fp32", "cpu")


def _worker_config(tiny_config: Path, tmp_path: Path, fusion: str) -> dict:
    task = write_synthetic_task(tmp_path / "data", examples=4, answer_tokens=12)
    return {
        "task": str(task), "model": str(tiny_config), "peft": "lora", "fusion": fusion, "epochs": 1, "limit": 4,
        "batch_size": 2, "micro_batch_size": 1, "max_length": 48, "dtype": "fp32", "gradient_checkpointing": True,
        "output": str(tmp_path / f"run-{fusion}"), "overwrite": True, "random_weights": True, "warmup_steps": 1,
    }  # fmt: skip


@pytest.mark.parametrize("fusion", ["none", "imsm"])
def test_both_variants_train_random_weights_with_checkpointing_on_exact_lengths(tiny_config, tmp_path, fusion):
    result_path = tmp_path / "result.json"
    run_worker(json.dumps(_worker_config(tiny_config, tmp_path, fusion)), str(result_path))
    result = json.loads(result_path.read_text())
    assert result["activation_checkpointing"] is True
    assert result["steps"] == 2 and result["timed_steps"] == 1  # the warm-up step is not timed
    assert result["tokens"] == 2 * 48  # one timed step of two examples, each exactly max_length tokens
    assert result["dtype"] == "float32" and result["tokens_per_s"] > 0
    # The adapter learned through the recomputed activations: lora_B starts at zero.
    weights = load_file(tmp_path / f"run-{fusion}" / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in weights.items() if "lora_B" in name]
    assert lora_b and all(float(tensor.abs().sum()) > 0 for tensor in lora_b)


def test_the_warm_up_changes_neither_the_weights_nor_the_mode(tiny_config, monkeypatch):
    from imsm import IMSMConfig, get_imsm_model
    from imsm.peft_methods.builders import build_peft_config

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)  # it runs on CUDA only; here the CPU stands in
    base = random_causal_lm(str(tiny_config), "fp32", "cpu")
    model = get_imsm_model(base, build_peft_config("lora", ["q_proj", "v_proj"]), IMSMConfig()).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _warm_up(model, micro_batch_size=2, length=16)
    assert model.training
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_the_device_script_runs_end_to_end_on_a_tiny_shape(tiny_config, tmp_path):
    # The script's whole logic on the CPU, with a tiny shape in place of the 8B one.
    (tmp_path / "architectures").mkdir()
    (tmp_path / "architectures" / "tiny.json").write_text(tiny_config.read_text())
    settings = {
        "ARCHITECTURES": str(tmp_path / "architectures"), "SHAPES": "tiny", "SEQUENCE_LENGTH": "48",
        "ANSWER_TOKENS": "8", "LIMIT": "4", "BATCH": "2", "MICRO": "2", "REPEATS": "1", "NEW_TOKENS": "4",
        "DECODE_REPEATS": "1", "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "WHEELS": str(tmp_path),
    }  # fmt: skip
    environment = {**os.environ, **settings, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_paper_scale.sh")],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "out"
    figures = json.loads((out / "paper_scale_tiny.json").read_text())
    assert set(ISSUE_KEYS) <= set(figures) and figures["met"] is None
    with tarfile.open(out / "bench_results.tar.gz") as archive:
        names = {Path(name).name for name in archive.getnames()}
    assert {"tiny_train.json", "tiny_decode_b1.json", "tiny_decode_b8.json"} <= names
    assert sorted(path.name for path in out.iterdir()) == [
        "bench_results.tar.gz",
        "paper_scale.log",
        "paper_scale_tiny.json",
    ]


@pytest.mark.slow
def test_bench_train_at_paper_settings_on_a_tiny_shape(tiny_config, tmp_path, capsys):
    output = tmp_path / "train.json"
    code = main(
        [
            "bench", "train", "--random-weights", "--model", str(tiny_config), "--sequence-length", "40",
            "--answer-tokens", "8", "--limit", "4", "--epochs", "1", "--batch-size", "2", "--micro-batch-size", "2",
            "--dtype", "bf16", "--gradient-checkpointing", "--warmup-steps", "1", "--output", str(output),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(output.read_text())
    for name in ("vanilla", "imsm"):
        run = result["runs"][name][0]
        assert run["activation_checkpointing"] is True and run["dtype"] == "bfloat16"
        assert run["tokens"] == 2 * 40
    assert result["settings"]["sequence_length"] == 40 and result["settings"]["gradient_checkpointing"] is True
    assert "IMSM / vanilla: throughput" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sequence-length", "64", "--task", "mrpc"], "leave --task out"),
        (["--sequence-length", "64", "--answer-tokens", "60"], "leaves no room for a prompt"),
        (["--limit", "4", "--batch-size", "4", "--epochs", "1", "--warmup-steps", "1"], "leaves none of the 1"),
    ],
)
def test_bench_train_refuses_settings_that_cannot_measure(flags, message, capsys):
    assert main(["bench", "train", *flags]) == 2
    assert message in capsys.readouterr().err


# --- the figures file -------------------------------------------------------------------------

MACHINE = "some CPU, 16 cpus, GPU NVIDIA H100 80GB HBM3, torch 2.11.0"


def _bench_files(directory: Path, gpu: bool = True) -> tuple[Path, Path, Path]:
    """Bench results as the benches write them, with made-up numbers."""
    settings = {"model": "configs/architectures/llama3-8b.json", "peft": "lora", "random_weights": True,
                "gradient_checkpointing": True, "sequence_length": 512, "micro_batch_size": 2}  # fmt: skip
    run = {"activation_checkpointing": True, "dtype": "bfloat16", "total_parameters": 8_030_261_248}
    train = {
        "benchmark": "train", "machine": MACHINE, "versions": {"torch": "2.11.0"}, "settings": settings,
        "runs": {"vanilla": [run], "imsm": [run]}, "vanilla_tokens_per_s": 10_000.0, "imsm_tokens_per_s": 9_000.0,
        "throughput_ratio": 0.9, "vanilla_training_peak_rss_mib": 3000.0, "imsm_training_peak_rss_mib": 3100.0,
        "training_peak_memory_ratio": 3100 / 3000, "peak_memory_ratio": 1.0,
    }  # fmt: skip
    if gpu:
        train.update(vanilla_peak_cuda_mib=20_000.0, imsm_peak_cuda_mib=21_000.0, cuda_peak_memory_ratio=1.05)
        train.update(vanilla_model_cuda_mib=15_400.0, imsm_model_cuda_mib=15_410.0)
    paths = [directory / "train.json"]
    paths[0].write_text(json.dumps(train))
    for batch, ratio in ((1, 0.93), (8, 0.88)):
        decode = {"benchmark": "decode", "machine": MACHINE, "model": settings["model"], "peft": "lora",
                  "random_weights": True, "dtype": "bfloat16", "batch_size": batch, "imsm_tokens_per_s": 30 * ratio,
                  "vanilla_tokens_per_s": 30.0, "ratio": ratio}  # fmt: skip
        paths.append(directory / f"decode_b{batch}.json")
        paths[-1].write_text(json.dumps(decode))
    return tuple(paths)


def test_the_figures_hold_the_issues_keys_and_say_which_goals_are_met(tmp_path):
    train, b1, b8 = _bench_files(tmp_path)
    output = tmp_path / "gpu" / "paper_scale.json"
    argv = ["--train", str(train), "--decode-b1", str(b1), "--decode-b8", str(b8), "--output", str(output)]
    assert paper_scale_main(argv) == 0
    figures = json.loads(output.read_text())
    assert set(ISSUE_KEYS) <= set(figures)
    assert figures["model_shape"] == "llama3-8b" and figures["machine"] == MACHINE
    assert figures["train_tokens_per_s_ratio"] == 0.9 and figures["train_peak_memory_ratio"] == 1.05
    assert (figures["decode_b1_ratio"], figures["decode_b8_ratio"]) == (0.93, 0.88)
    assert figures["met"] == {
        "train_tokens_per_s_ratio": True, "train_peak_memory_ratio": True, "decode_b1_ratio": True,
        "decode_b8_ratio": False,
    }  # fmt: skip
    assert figures["train"]["imsm_peak_gib"] == pytest.approx(21_000 / 1024)


def test_a_cpu_dry_run_meets_no_goal(tmp_path):
    figures = paper_scale_figures(*_bench_files(tmp_path, gpu=False))
    assert figures["met"] is None and figures["device"].startswith("cpu")
    assert figures["train_peak_memory_ratio"] == pytest.approx(3100 / 3000)  # the resident set's, said so
    assert "resident set" in figures["train"]["memory_measure"]


def _edit(path: Path, **changes) -> None:
    payload = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            payload.pop(key)
        else:
            payload[key] = value
    path.write_text(json.dumps(payload))


@pytest.mark.parametrize(
    ("which", "changes", "message"),
    [
        ("b1", {"ratio": None}, "--decode-b1 .* lacks 'ratio': that measurement was not made"),
        ("train", {"throughput_ratio": None}, "--train .* lacks 'throughput_ratio'"),
        ("b8", {"batch_size": 1}, "decoded at batch 1, not 8"),
        ("b8", {"model": "configs/architectures/qwen1.5-4b.json"}, "give the files of one architecture"),
        ("b1", {"machine": "another machine"}, "the ratios must come from one machine"),
        ("b1", {"random_weights": False}, "without --random-weights"),
        ("train", {"benchmark": "decode"}, "is not an `imsm bench train` result"),
    ],
)
def test_missing_or_mismatched_measurements_are_refused(tmp_path, which, changes, message):
    train, b1, b8 = _bench_files(tmp_path)
    _edit({"train": train, "b1": b1, "b8": b8}[which], **changes)
    with pytest.raises(IMSMError, match=message):
        paper_scale_figures(train, b1, b8)


def test_a_run_without_checkpointing_or_a_missing_file_is_refused_and_nothing_written(tmp_path, capsys):
    train, b1, b8 = _bench_files(tmp_path)
    payload = json.loads(train.read_text())
    payload["runs"]["imsm"][0]["activation_checkpointing"] = False
    train.write_text(json.dumps(payload))
    output = tmp_path / "paper_scale.json"
    argv = ["--train", str(train), "--decode-b1", str(b1), "--decode-b8", str(b8), "--output", str(output)]
    assert paper_scale_main(argv) == 2
    assert "the imsm variant trained without activation checkpointing" in capsys.readouterr().err
    assert not output.exists()
    train, b1, b8 = _bench_files(tmp_path)
    b8.unlink()
    assert paper_scale_main(argv) == 2
    assert "decode_b8.json' does not exist; run the bench that writes it first" in capsys.readouterr().err
    assert not output.exists()


def test_gradient_checkpointing_is_memory_not_identity():
    # Recomputed activations give the same gradients: an experiment's cells keep their names (and
    # their finished results) whether it is on or off, and a run may resume with it switched.
    from imsm.experiment.spec import Cell
    from imsm.train.config import TrainConfig

    config = TrainConfig(task="mrpc", output="-").to_dict()
    config.pop("output")
    assert Cell({**config, "gradient_checkpointing": True}).name == Cell(config).name
    other = {k: v for k, v in config.items() if k != "gradient_checkpointing"}  # a cell resolved before the option
    assert Cell(other).name == Cell(config).name
