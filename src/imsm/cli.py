"""The `imsm` command line: one function per subcommand, each taking its options as a typed dataclass
whose fields are its flags and the keys of its `--config` YAML file (`imsm.options`).

Bad input ends in one line on stderr that names the problem and the fix, and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from imsm.atomic_write import disk_refusal, write_atomically
from imsm.bench.cli import add_bench_parser
from imsm.chat import Conversation, run_chat
from imsm.data import load_examples, resolve_data_dir
from imsm.demo import run_demo
from imsm.errors import IMSMError
from imsm.eval_journal import directory_digest
from imsm.evaluate import evaluate_task, format_table, journal_path, write_results
from imsm.experiment.cli import add_experiment_parsers
from imsm.gate_inspection import format_report, inspect_adapter, reports_to_json
from imsm.generate import generate_answers, stream_answer
from imsm.model.load import load_model_and_tokenizer
from imsm.model.persist import check_adapter_directory, read_imsm_config
from imsm.model.variant import check_variant, load_evaluated_model
from imsm.options import (
    DecodingOptions,
    adapter_option,
    adapter_scale_option,
    add_command,
    chat_template_option,
    check_options,
    data_dir_option,
    device_option,
    dtype_option,
    eval_batch_size_option,
    eval_limit_option,
    fusion_override_option,
    likelihood_option,
    max_new_tokens_option,
    model_option,
    option,
    read_options,
    system_option,
    trust_remote_code_option,
)
from imsm.prompting import PromptFormatter
from imsm.provenance import provenance_header
from imsm.tasks import parse_task_list
from imsm.train.config import TrainConfig
from imsm.train.run import train
from imsm.version import __version__


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the problem and where help is), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"imsm: error: {message} (see `{self.prog} --help`)\n")


def _check_json_output(output: str | None) -> None:
    if output is not None and Path(output).suffix != ".json":
        raise IMSMError(f"--output must name a .json file, got {str(output)!r}")


@dataclass
class DecodedModelOptions(DecodingOptions):
    """The model `imsm generate` and `imsm chat` decode from, and how its tokens are picked."""

    model: str = model_option()
    dtype: str = dtype_option()
    device: str | None = device_option()
    trust_remote_code: bool = trust_remote_code_option()
    adapter: str | None = adapter_option()
    fusion: str | None = fusion_override_option()
    adapter_scale: float = adapter_scale_option()


@dataclass
class GenerateOptions(DecodedModelOptions):
    """`imsm generate`: answers to prompts, greedy unless --do-sample."""

    prompt: list[str] = option(default_factory=list, repeat=True, help="the prompt")
    max_new_tokens: int = option(128, positive=True, help="cap on generated tokens")
    chat_template: str = chat_template_option()
    system: str | None = system_option()
    batch_size: int = option(8, positive=True, help="prompts decoded together")
    stream: bool = option(False, help="print each answer as it is decoded (one prompt at a time)")

    def __post_init__(self) -> None:
        check_options(self)
        if not self.prompt:
            raise IMSMError("no prompt given; pass --prompt TEXT (repeat it for several prompts)")


@dataclass
class ChatOptions(DecodedModelOptions):
    """`imsm chat`: a conversation through the model's chat template, each reply streamed."""

    system: str | None = system_option()
    max_new_tokens: int = option(256, positive=True, help="cap on each reply's tokens")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class EvalOptions:
    """`imsm eval`: a model's scores on tasks. An experiment's `eval:` section shares these defaults."""

    task: str = option(
        help="task name(s), comma-separated (mrpc, cola, ropes, gsm8k, webq, freebaseqa, multirc; multiple "
        "choice: arc_easy, arc_challenge, piqa, sciq, winogrande; drift: sciq_support), or a task spec file "
        "(.yaml/.json)"
    )
    output: str = option(help="metrics JSON; per-example JSONL files go beside it")
    model: str = model_option()
    dtype: str = dtype_option()
    device: str | None = device_option()
    trust_remote_code: bool = trust_remote_code_option()
    adapter: str | None = adapter_option()
    fusion: str | None = fusion_override_option()
    adapter_scale: float = adapter_scale_option()
    split: str | None = option(None, help="split to evaluate (default: each task's evaluation split, as in the paper)")
    limit: int | None = eval_limit_option()
    data_dir: str | None = data_dir_option()
    batch_size: int = eval_batch_size_option()
    max_new_tokens: int | None = max_new_tokens_option()
    chat_template: str = chat_template_option()
    system: str | None = system_option()
    likelihood: bool = likelihood_option()
    resume: bool = option(
        True,
        help="after an interruption, evaluate only the examples the journal (OUTPUT-stem.TASK.partial.jsonl) "
        "lacks; --no-resume starts afresh",
    )

    def __post_init__(self) -> None:
        check_options(self)
        _check_json_output(self.output)


@dataclass
class InspectGateOptions:
    """`imsm inspect-gate`: what a trained gate does on the gold answers of some tasks."""

    adapter: str = option(help="IMSM adapter directory (an `imsm train` output)")
    task: str = option(help="task name(s), comma-separated, or a task spec file")
    model: str = model_option()
    dtype: str = dtype_option()
    device: str | None = device_option()
    trust_remote_code: bool = trust_remote_code_option()
    limit: int = option(16, positive=True, help="examples per task")
    split: str | None = option(None, help="split to read (default: each task's evaluation split)")
    data_dir: str | None = data_dir_option()
    output: str | None = option(None, help="also write the numbers to this .json file")
    chat_template: str = chat_template_option()
    system: str | None = system_option()
    initial: bool = option(
        True, help="rebuild the run's initial gate to compare against (--no-initial saves one model copy)"
    )

    def __post_init__(self) -> None:
        check_options(self)
        _check_json_output(self.output)


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


def _load_model(options: DecodedModelOptions | EvalOptions):
    """The base model, with the adapter directory of --adapter on it if given, run with --fusion and
    scaled by --adapter-scale (both checked before the slow model load)."""
    return load_evaluated_model(
        options.model,
        options.adapter,
        options.fusion,
        options.adapter_scale,
        options.dtype,
        options.device,
        options.trust_remote_code,
    )


def cmd_generate(options: GenerateOptions) -> int:
    check_variant(options.adapter, options.fusion, options.adapter_scale)
    model, tokenizer = _load_model(options)
    formatter = PromptFormatter.for_tokenizer(tokenizer, options.chat_template, options.system)
    if options.seed is not None:
        torch.manual_seed(options.seed)
    generation = options.generation_options()
    several = len(options.prompt) > 1
    if options.stream:
        for index, prompt in enumerate(options.prompt):
            if several:
                print(f"[{index + 1}] {prompt}", flush=True)
            stream_answer(model, formatter, prompt, options.max_new_tokens, sys.stdout, **generation)
            if several and index + 1 < len(options.prompt):
                print()
        return 0
    answers = generate_answers(
        model, formatter, options.prompt, options.max_new_tokens, options.batch_size, **generation
    )
    for index, answer in enumerate(answers):
        if several:
            print(f"[{index + 1}] {options.prompt[index]}")
        print(answer)
        if several and index + 1 < len(answers):
            print()
    return 0


def cmd_chat(options: ChatOptions) -> int:
    check_variant(options.adapter, options.fusion, options.adapter_scale)
    model, tokenizer = _load_model(options)
    if options.seed is not None:
        torch.manual_seed(options.seed)
    generation = {"max_new_tokens": options.max_new_tokens, **options.generation_options()}
    run_chat(Conversation(model, tokenizer, options.system, generation))
    return 0


def cmd_eval(options: EvalOptions) -> int:
    output = Path(options.output)
    # Everything the run needs is read and checked before the (slow) model load.
    check_variant(options.adapter, options.fusion, options.adapter_scale)
    tasks = parse_task_list(options.task)
    if not tasks:
        raise IMSMError("--task is empty; name one or more tasks, e.g. --task mrpc,webq")
    data_dir = resolve_data_dir(options.data_dir)
    data = {task.name: load_examples(task, options.split, data_dir, options.limit) for task in tasks}
    model, tokenizer = _load_model(options)
    formatter = PromptFormatter.for_tokenizer(tokenizer, options.chat_template, options.system)
    output.parent.mkdir(parents=True, exist_ok=True)
    header = provenance_header(
        model=options.model,
        adapter=options.adapter,
        fusion=model.fusion,
        adapter_scale=options.adapter_scale,
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        chat_template=options.chat_template,  # as asked; each task's summary says what it used
        data_dir=str(data_dir) if data_dir else None,
        limit=options.limit,
        batch_size=options.batch_size,
        likelihood=options.likelihood,
    )
    # What shapes the answers, for the resume journals: a journal made under other settings is
    # started afresh. The batch size is left out: greedy answers do not depend on it.
    run_settings = {
        "model": options.model,
        "adapter": directory_digest(Path(options.adapter)) if options.adapter else None,
        "fusion": model.fusion,
        "adapter_scale": options.adapter_scale,
        "dtype": header["dtype"],
        "chat_template": formatter.use_chat_template,
        "system": options.system,
    }
    results, journals = [], []
    for task in tasks:
        split = options.split or task.eval_split
        journal = journal_path(output, task) if options.resume else None
        result = evaluate_task(
            model,
            PromptFormatter.for_tokenizer(tokenizer, task.chat_template_setting(options.chat_template), options.system),
            task,
            data[task.name],
            split,
            options.batch_size,
            options.max_new_tokens,
            likelihood=options.likelihood,
            journal_path=journal,
            run_settings=run_settings,
        )
        if result.resumed_examples:
            print(f"imsm: {task.name}: {result.resumed_examples} examples came from an interrupted run ({journal})")
        results.append(result)
        journals.append(journal)
        write_results(output, header, results)  # after every task, so finished tasks are kept
    for journal in journals:  # all results are written: the journals have done their job
        if journal is not None:
            journal.unlink(missing_ok=True)
    print(format_table(results))
    print(f"metrics: {output}")
    return 0


def cmd_train(config: TrainConfig) -> int:
    summary = train(config)
    if summary.get("already_complete"):
        return 0  # `train` has said so; re-running the command after a crash at the very end must not fail
    print(f"imsm: trained {summary['steps']} steps, final loss {summary['final_loss']:.4f}; adapter in {config.output}")
    return 0


def cmd_inspect_gate(options: InspectGateOptions) -> int:
    output = Path(options.output) if options.output else None
    adapter = check_adapter_directory(options.adapter)
    saved = read_imsm_config(adapter) or {}
    if saved.get("imsm", {}).get("fusion", "none") not in ("imsm", "no-query"):
        raise IMSMError(
            f"{options.adapter} holds no IMSM gate (a vanilla or mean-fusion adapter); pass an IMSM adapter"
        )
    tasks = parse_task_list(options.task)
    if not tasks:
        raise IMSMError("--task is empty; name one or more tasks, e.g. --task ropes,webq")
    data_dir = resolve_data_dir(options.data_dir)
    data = {task.name: (task, load_examples(task, options.split, data_dir, options.limit)) for task in tasks}
    base, tokenizer = load_model_and_tokenizer(options.model, options.dtype, options.device, options.trust_remote_code)
    formatter = PromptFormatter.for_tokenizer(tokenizer, options.chat_template, options.system)
    reports = inspect_adapter(base, adapter, formatter, data, with_initial=options.initial)
    print(format_report(reports))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        header = provenance_header(adapter=str(adapter), model=options.model, limit=options.limit, split=options.split)
        write_atomically(output, reports_to_json(reports, header))
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


def main(argv: Sequence[str] | None = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
