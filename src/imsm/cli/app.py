"""`imsm ARGS`: the parser of every subcommand, and `run`, which builds a command's options and calls it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from imsm.atomic_write import disk_refusal
from imsm.bench.cli import add_bench_parser
from imsm.cli.decode import ChatOptions, GenerateOptions, cmd_chat, cmd_generate
from imsm.cli.evaluate import EvalOptions, InspectGateOptions, cmd_eval, cmd_inspect_gate
from imsm.cli.options import add_command, check_options, dtype_option, model_option, option, read_options
from imsm.demo import run_demo
from imsm.errors import IMSMError
from imsm.experiment.cli import add_experiment_parsers
from imsm.train.config import TrainConfig
from imsm.train.run import train
from imsm.version import __version__


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the problem and where help is), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"imsm: error: {message} (see `{self.prog} --help`)\n")


@dataclass
class DemoOptions:
    """`imsm demo`: LoRA against IMSM-LoRA, learning and forgetting, offline."""

    model: str = model_option()
    output: str = option("runs/demo", help="work directory: data, adapters, results, plot")
    data_dir: str | None = option(
        None, help="use the real data sets in this directory (default: $IMSM_DATA_DIR) instead of generated ones"
    )
    train_size: int = option(256, positive=True, help="training examples")
    test_size: int = option(64, positive=True, help="target-task test examples")
    probe_size: int = option(40, positive=True, help="probe questions")
    knowledge_data_dir: str | None = option(
        None,
        help="directory with arc_easy/ and sciq/ for the knowledge probe "
        "(default: --data-dir, else ../shared/data beside the checkout; absent: the probe is skipped)",
    )
    knowledge_size: int = option(24, positive=True, help="knowledge-probe questions per task (ARC-Easy, SciQ)")
    epochs: int = option(3, positive=True, help="training epochs")
    learning_rate: float = option(2e-3, help="LoRA learning rate")
    batch_size: int = option(16, positive=True, help="evaluation batch size")
    seed: int = option(0, help="seed for data, initialisation and order")
    dtype: str = dtype_option()

    def __post_init__(self) -> None:
        check_options(self)
        if not self.learning_rate > 0:
            raise IMSMError(f"learning_rate must be greater than 0, got {self.learning_rate!r}")


def cmd_train(config: TrainConfig) -> int:
    summary = train(config)
    if summary.get("already_complete"):
        return 0  # `train` has said so; re-running the command after a crash at the very end must not fail
    print(f"imsm: trained {summary['steps']} steps, final loss {summary['final_loss']:.4f}; adapter in {config.output}")
    return 0


def cmd_demo(options: DemoOptions) -> int:
    run_demo(options)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="imsm",
        description="IMSM: fine-tune with any peft method while a query-aware gate keeps the frozen model's knowledge.",
    )
    parser.add_argument("--version", action="version", version=f"imsm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_command(
        commands,
        "generate",
        cmd_generate,
        GenerateOptions,
        help="answers from a model, with or without an adapter (greedy, or sampled with --do-sample)",
        description="Answers from a model, with or without an adapter: greedy by default, sampled with "
        "--do-sample and transformers' options; --stream prints them as they are decoded.",
    )
    add_command(
        commands,
        "chat",
        cmd_chat,
        ChatOptions,
        help="talk to a model (base or adapted) through its chat template, each reply streamed",
        description="A multi-turn conversation through the model's chat template; each reply streams as it is "
        "decoded. Type /reset to start afresh, /exit (or end the input) to stop. Reads a pipe or file as well "
        "as a terminal.",
    )
    add_command(
        commands,
        "eval",
        cmd_eval,
        EvalOptions,
        help="score a model (base, peft or IMSM adapter) on tasks",
        description="Score a model on tasks: greedy generation, the paper's metrics, "
        "and length-independent likelihood scores.",
    )
    add_command(
        commands,
        "train",
        cmd_train,
        TrainConfig,
        help="fine-tune a model with a peft method, with or without IMSM",
        description="Fine-tune with any peft method, as IMSM or as vanilla PEFT (--fusion none).",
    )
    add_command(
        commands,
        "demo",
        cmd_demo,
        DemoOptions,
        help="learning and forgetting side by side: LoRA vs IMSM-LoRA on the embedded model, offline",
        description="Fine-tune with LoRA and with IMSM-LoRA on a small target task, evaluate it and a "
        "general-knowledge probe before and after, print a table and save a plot. Offline by default "
        "(generated data); with --data-dir, MRPC is the target and WebQuestions the probe.",
    )
    add_command(
        commands,
        "inspect-gate",
        cmd_inspect_gate,
        InspectGateOptions,
        help="what a trained gate does: how decided, how far it moved, its effect on gold answers",
        description="Open up a trained IMSM gate on the gold answers of some tasks: its mean weight, how "
        "decided it is per feature (0 = every feature mixed 50/50, 1 = each feature takes one branch), how "
        "far it moved from the run's initial gate, how differently it treats each task, and the gold "
        "answers' NLL under the trained gate, the initial one, a fixed 50/50 mix, the tuned branch alone "
        "and the frozen branch alone.",
    )
    add_bench_parser(commands)
    add_experiment_parsers(commands)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """`imsm ARGS`: the exit code, 2 (and one line on stderr) for bad input."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        # Defaults, then the --config file, then the flags given; the dataclass checks the result.
        return args.handler(read_options(args))
    except IMSMError as error:
        print(f"imsm: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A file written whole fails as DiskRefusedWrite, above; this is a log or journal appended to.
        if (refusal := disk_refusal(error)) is None:
            raise
        reason, fix = refusal
        print(f"imsm: error: could not write {error.filename or 'a file'} ({reason}); {fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imsm: interrupted", file=sys.stderr)
        return 130
