"""`imsm bench ...`: the command-line side of the benchmarks."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imsm.bench.choice import KNOWLEDGE_TASKS, bench_choice
from imsm.bench.decode import DECODERS, bench_decode, compiled_summary
from imsm.bench.eval import bench_eval
from imsm.bench.output import write_json
from imsm.bench.train import bench_train, write_synthetic_task
from imsm.cli.options import (
    add_command,
    check_options,
    data_dir_option,
    dtype_option,
    likelihood_option,
    model_option,
    option,
    peft_option,
)
from imsm.data import resolve_data_dir
from imsm.demo.data import write_demo_tasks
from imsm.errors import IMSMError
from imsm.provenance import provenance_header

DECODERS_TO_SKIP = DECODERS


def _output_option():
    return option(None, help="write the results JSON here")


def _random_weights_option():
    return option(
        False,
        help="--model is a config.json (or its directory): build that architecture with random weights "
        "on the device (speed does not depend on them), e.g. configs/architectures/llama3-8b.json",
    )


@dataclass
class BenchTrainOptions:
    """`imsm bench train`: training throughput and peak memory, vanilla peft against IMSM."""

    model: str = model_option()
    peft: str = peft_option()
    task: str | None = option(
        None, help="training task: registry name or spec file (default: mrpc with a data directory, else the demo's)"
    )
    data_dir: str | None = data_dir_option()
    limit: int = option(64, positive=True, help="training examples")
    epochs: int = option(3, positive=True, help="epochs")
    batch_size: int = option(16, positive=True, help="examples per optimizer step")
    micro_batch_size: int = option(8, positive=True, help="examples per forward pass")
    dtype: str = dtype_option()
    repeats: int = option(1, positive=True, help="runs of each variant, alternating")
    output: Path | None = _output_option()
    random_weights: bool = _random_weights_option()
    sequence_length: int | None = option(
        None,
        positive=True,
        help="train on --limit synthetic examples of exactly this many tokens (random text, the answer "
        "--answer-tokens long) instead of a task: no data set or tokenizer needed",
    )
    answer_tokens: int = option(128, positive=True, help="with --sequence-length: the labelled answer's length")
    gradient_checkpointing: bool = option(False, help="recompute activations in the backward pass, both variants")
    warmup_steps: int = option(0, help="leave the first N optimizer steps of each run out of the timing")

    def __post_init__(self) -> None:
        check_options(self)
        if self.sequence_length is not None and self.task is not None:
            raise IMSMError(
                "--sequence-length trains on synthetic examples; leave --task out or drop --sequence-length"
            )
        if self.sequence_length is not None and self.answer_tokens + 8 > self.sequence_length:
            raise IMSMError(
                f"--answer-tokens {self.answer_tokens} leaves no room for a prompt in --sequence-length "
                f"{self.sequence_length}; give a shorter answer or a longer sequence"
            )
        if self.warmup_steps < 0:
            raise IMSMError(f"--warmup-steps must be 0 or more, got {self.warmup_steps}")
        steps = self.epochs * -(-self.limit // self.batch_size)
        if self.warmup_steps >= steps:
            raise IMSMError(
                f"--warmup-steps {self.warmup_steps} leaves none of the {steps} optimizer steps "
                f"(--limit {self.limit} x --epochs {self.epochs} / --batch-size {self.batch_size}) to time; "
                "take fewer warm-up steps or more examples"
            )


@dataclass
class BenchDecodeOptions:
    """`imsm bench decode`: decoding tokens/s of IMSM (greedy and sampled) and of plain peft."""

    model: str = model_option()
    peft: str = peft_option()
    dtype: str = dtype_option()
    repeats: int = option(3, positive=True, help="timed repetitions, medians")
    output: Path | None = _output_option()
    summary: Path | None = option(
        None,
        help="also write issue 30's summary here (machine, model, tokens/s of IMSM compiled and eager and of "
        "transformers' compiled generate), e.g. docs/results/perf/gpu/decode_compiled.json; batch 1",
    )
    batch_size: int = option(1, positive=True, help="prompts decoded together")
    max_new_tokens: int = option(128, positive=True, help="tokens per prompt")
    prompt_repeat: int = option(1, positive=True, help="repeat each prompt k times")
    naive_tokens: int = option(16, positive=True, help="tokens for the naive decoder")
    skip: list[str] = option(default_factory=list, help=f"decoders not to run: any of {', '.join(DECODERS_TO_SKIP)}")
    random_weights: bool = _random_weights_option()

    def __post_init__(self) -> None:
        check_options(self)
        unknown = set(self.skip) - set(DECODERS_TO_SKIP)
        if unknown:
            raise IMSMError(f"--skip takes any of {', '.join(DECODERS_TO_SKIP)}, got {sorted(unknown)}")
        if self.summary and (self.batch_size != 1 or {"compiled", "hf_compiled"} & set(self.skip)):
            raise IMSMError("--summary needs --batch-size 1 and the compiled and hf_compiled decoders (not skipped)")


@dataclass
class BenchEvalOptions:
    """`imsm bench eval`: evaluation examples/s, IMSM against the same adapter without it."""

    model: str = model_option()
    peft: str = peft_option()
    dtype: str = dtype_option()
    repeats: int = option(3, positive=True, help="timed repetitions, medians")
    output: Path | None = _output_option()
    task: str = option("mrpc", help="task")
    data_dir: str | None = data_dir_option()
    limit: int = option(200, positive=True, help="examples")
    batch_size: int = option(16, positive=True, help="evaluation batch size")
    likelihood: bool = likelihood_option()
    doubled: bool = option(True, help="also the ceiling run: vanilla on every example twice")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class BenchChoiceOptions:
    """`imsm bench choice`: multiple-choice scoring requests/s, IMSM against lm-eval's `hf` model."""

    model: str = model_option()
    peft: str = peft_option()
    dtype: str = option("fp32", choices=("fp32", "bf16"), help="weights dtype, the same for every variant")
    repeats: int = option(2, positive=True, help="timed repetitions, medians")
    output: Path | None = _output_option()
    tasks: str = option(",".join(KNOWLEDGE_TASKS), help="multiple-choice tasks, comma-separated")
    data_dir: str | None = data_dir_option()
    limit: int = option(50, positive=True, help="items per task")
    batch_size: int = option(8, positive=True, help="questions (imsm) and requests (lm-eval) per batch")

    def __post_init__(self) -> None:
        check_options(self)


def add_bench_parser(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="speed and memory of IMSM against plain peft, in one run",
        description="Run IMSM and plain peft on the same model, adapter, inputs and machine; report medians "
        "and the IMSM / vanilla ratio.",
    )
    modes = bench.add_subparsers(dest="mode", required=True, metavar="MODE")
    add_command(
        modes,
        "train",
        cmd_bench_train,
        BenchTrainOptions,
        help="training throughput (tokens/s) and peak memory over a full run",
        description="Train vanilla peft and IMSM over the same examples and epochs, each in a fresh process.",
    )
    add_command(
        modes,
        "decode",
        cmd_bench_decode,
        BenchDecodeOptions,
        help="greedy decoding tokens/s: IMSM, peft's generate, merged LoRA, the naive siamese decoder",
        description="Decode the same chat prompts greedily with IMSM and with plain peft (EOS ignored).",
    )
    add_command(
        modes,
        "eval",
        cmd_bench_eval,
        BenchEvalOptions,
        help="evaluation examples/s through imsm eval's code: IMSM against the same adapter without it",
        description="Evaluate the same examples with IMSM and with vanilla PEFT (the same adapter).",
    )
    add_command(
        modes,
        "choice",
        cmd_bench_choice,
        BenchChoiceOptions,
        help="multiple-choice scoring requests/s: IMSM, vanilla peft and lm-eval's hf model, same adapter",
        description="Score the options of the knowledge probes with IMSM (one prefill per question), vanilla "
        "peft through the same code, and lm-evaluation-harness's hf model with the same adapter.",
    )


def _finish(options, kind: str, result: dict) -> int:
    payload = {"benchmark": kind, **provenance_header(), **result}
    print(json.dumps(payload, indent=2))
    if options.output:
        write_json(options.output, payload)
        print(f"results: {options.output}")
    return 0


def cmd_bench_decode(options: BenchDecodeOptions) -> int:
    result = bench_decode(
        options.model,
        options.peft,
        options.dtype,
        options.batch_size,
        options.max_new_tokens,
        options.repeats,
        options.naive_tokens,
        options.prompt_repeat,
        include=tuple(x for x in DECODERS_TO_SKIP if x not in options.skip),
        random_weights=options.random_weights,
    )
    code = _finish(options, "decode", result)
    if options.summary:
        write_json(options.summary, compiled_summary({**provenance_header(), **result}))
        print(f"summary: {options.summary}")
    return code


def cmd_bench_eval(options: BenchEvalOptions) -> int:
    result = bench_eval(
        options.model,
        options.peft,
        options.dtype,
        options.task,
        options.data_dir,
        options.limit,
        options.batch_size,
        options.repeats,
        likelihood=options.likelihood,
        doubled=options.doubled,
    )
    return _finish(options, "eval", result)


def cmd_bench_choice(options: BenchChoiceOptions) -> int:
    tasks = tuple(name.strip() for name in options.tasks.split(",") if name.strip())
    result = bench_choice(
        options.model, options.peft, options.dtype, tasks, options.limit, options.batch_size, options.repeats,
        options.data_dir,
    )  # fmt: skip
    return _finish(options, "choice", result)


def cmd_bench_train(options: BenchTrainOptions) -> int:
    data_dir = resolve_data_dir(options.data_dir)
    with tempfile.TemporaryDirectory(prefix="imsm-bench-data-") as generated:
        task = options.task
        if options.sequence_length is not None:
            task = str(write_synthetic_task(Path(generated), options.limit, options.answer_tokens))
        elif task is None:
            task = "mrpc" if data_dir else str(write_demo_tasks(Path(generated), options.limit, 1, 1)["train"])
        config = {
            "task": task,
            "model": options.model,
            "peft": options.peft,
            "epochs": options.epochs,
            "limit": options.limit,
            "data_dir": str(data_dir) if data_dir else None,
            "batch_size": options.batch_size,
            "micro_batch_size": options.micro_batch_size,
            "dtype": options.dtype,
            "gradient_checkpointing": options.gradient_checkpointing,
            "random_weights": options.random_weights,
            "warmup_steps": options.warmup_steps,
        }
        if options.sequence_length is not None:
            config["max_length"] = options.sequence_length  # every prompt is cut to fit: all this long
        print(
            f"imsm bench train: {options.peft} on {Path(task).stem}, {options.limit} examples x {options.epochs} epochs"
        )

        def report(name, repeat, result):
            print(
                f"  {name:<8} run {repeat + 1}/{options.repeats}: {result['tokens_per_s']:.1f} tokens/s, "
                f"{result['seconds']:.1f} s (frozen memories {result['frozen_cache_seconds']:.1f} s), "
                f"peak {result['peak_rss_mib']:.0f} MiB (in training {result['training_peak_rss_mib'] or 0:.0f} MiB)"
                + (f", GPU {result['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in result else ""),
                flush=True,
            )

        summary = bench_train(config, options.repeats, on_result=report)
    training_ratio = summary.get("training_peak_memory_ratio")
    cuda_ratio = summary.get("cuda_peak_memory_ratio")
    print(
        f"IMSM / vanilla: throughput {summary['throughput_ratio']:.3f}, peak memory {summary['peak_memory_ratio']:.3f}"
        + (f", peak memory in training {training_ratio:.3f}" if training_ratio else "")
        + (f", peak GPU memory {cuda_ratio:.3f}" if cuda_ratio else "")
    )
    if options.output:
        settings = {**config, "task": Path(config["task"]).stem, "repeats": options.repeats}
        if options.sequence_length is not None:
            settings.update(sequence_length=options.sequence_length, answer_tokens=options.answer_tokens)
        payload = {"benchmark": "train", **provenance_header(settings=settings), **summary}
        write_json(options.output, payload)
        print(f"results: {options.output}")
    return 0
