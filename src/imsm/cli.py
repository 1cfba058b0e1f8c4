"""The `imsm` command line: one function per subcommand, every flag also settable from YAML.

Bad input ends in one line on stderr that names the problem and the fix, and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from imsm.errors import IMSMError


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the problem and where help is), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"imsm: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="embedded model name (smollm2-135m), local directory, or Hugging Face id",
    )
    parser.add_argument("--dtype", default="auto", help="auto (bf16 where fast), bf16 or fp32")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N]; CUDA if available")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let transformers run code shipped with the model (off unless asked)",
    )
    parser.add_argument("--config", type=Path, help="YAML file setting any of these flags (the command line wins)")


def _load_model(args: argparse.Namespace):
    """The base model, with the adapter directory of --adapter on it if given."""
    from imsm.model.load import load_model_and_tokenizer
    from imsm.model.persist import check_adapter_directory
    from imsm.model.siamese import IMSMModel

    adapter = getattr(args, "adapter", None)
    if adapter is not None:
        check_adapter_directory(adapter)  # fail before the slow model load
    base, tokenizer = load_model_and_tokenizer(args.model, args.dtype, args.device, args.trust_remote_code)
    if adapter is None:
        from imsm.config import IMSMConfig

        model = IMSMModel(base, IMSMConfig(fusion="none"))  # the base model alone, same decoding code
    else:
        model = IMSMModel.from_pretrained(base, adapter)
    return model.eval(), tokenizer


def cmd_generate(args: argparse.Namespace) -> int:
    from imsm.generate import generate_answers
    from imsm.prompting import PromptFormatter

    if not args.prompt:
        raise IMSMError("no prompt given; pass --prompt TEXT (repeat it for several prompts)")
    model, tokenizer = _load_model(args)
    formatter = PromptFormatter.for_tokenizer(tokenizer, args.chat_template, args.system)
    answers = generate_answers(model, formatter, args.prompt, args.max_new_tokens, args.batch_size)
    for index, answer in enumerate(answers):
        if len(answers) > 1:
            print(f"[{index + 1}] {args.prompt[index]}")
        print(answer)
        if len(answers) > 1 and index + 1 < len(answers):
            print()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import datetime
    import platform

    from imsm import __version__
    from imsm.data import load_examples, resolve_data_dir
    from imsm.eval_journal import directory_digest
    from imsm.evaluate import evaluate_task, format_table, journal_path, write_results
    from imsm.prompting import PromptFormatter
    from imsm.tasks import parse_task_list

    output = Path(args.output)
    if output.suffix != ".json":
        raise IMSMError(f"--output must name a .json file, got {str(output)!r}")
    # Everything the run needs is read and checked before the (slow) model load.
    tasks = parse_task_list(args.task)
    if not tasks:
        raise IMSMError("--task is empty; name one or more tasks, e.g. --task mrpc,webq")
    data_dir = resolve_data_dir(args.data_dir)
    data = {task.name: load_examples(task, args.split, data_dir, args.limit) for task in tasks}
    model, tokenizer = _load_model(args)
    formatter = PromptFormatter.for_tokenizer(tokenizer, args.chat_template, args.system)
    output.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "imsm_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": args.model,
        "adapter": args.adapter,
        "fusion": model.fusion,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "chat_template": formatter.use_chat_template,
        "data_dir": str(data_dir) if data_dir else None,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "likelihood": not args.no_likelihood,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch_version()}",
    }
    # What shapes the answers, for the resume journals: a journal made under other settings is
    # started afresh. The batch size is left out: greedy answers do not depend on it.
    run_settings = {
        "model": args.model,
        "adapter": directory_digest(Path(args.adapter)) if args.adapter else None,
        "dtype": header["dtype"],
        "chat_template": formatter.use_chat_template,
        "system": args.system,
    }
    results, journals = [], []
    for task in tasks:
        split = args.split or task.eval_split
        journal = None if args.no_resume else journal_path(output, task)
        result = evaluate_task(
            model,
            formatter,
            task,
            data[task.name],
            split,
            args.batch_size,
            args.max_new_tokens,
            likelihood=not args.no_likelihood,
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


def _field_docs(cls) -> dict[str, str]:
    """Field descriptions from a dataclass's "Attributes:" docstring, so help is written once."""
    docs, current = {}, None
    for line in (cls.__doc__ or "").split("Attributes:", 1)[-1].splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        name, sep, text = stripped.partition(":")
        if sep and name.isidentifier() and line.startswith(" " * 8) and not line.startswith(" " * 12):
            current = name
            docs[name] = text.strip()
        elif current:
            docs[current] += " " + stripped
    return docs


def _add_dataclass_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of `cls`, typed from its annotation, helped from its docstring."""
    import dataclasses

    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_text = docs.get(f.name, "")
        annotation = str(f.type)
        if annotation == "bool":
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text + f" (default: {'on' if f.default else 'off'})",
            )
        elif annotation.startswith("list"):
            parser.add_argument(
                flag,
                dest=f.name,
                type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
                help=help_text + " (comma-separated)",
            )
        elif annotation.startswith("dict"):
            parser.add_argument(flag, dest=f.name, type=_key_values, help=help_text + " (key=value,key=value)")
        else:
            kind = int if annotation.startswith("int") else float if annotation.startswith("float") else str
            # Required fields are checked once a --config file has had its say, not by argparse.
            default = None if required else f.default
            suffix = " (required)" if required else "" if default is None else f" ({default})"
            parser.add_argument(flag, dest=f.name, type=kind, default=default, help=help_text + suffix)


def _key_values(text: str) -> dict:
    import yaml

    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        values[key.strip()] = yaml.safe_load(value)
    return values


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from imsm.train.config import TrainConfig
    from imsm.train.run import train

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    for required in ("task", "output"):
        if values.get(required) is None:
            raise IMSMError(f"--{required} is required (on the command line or in the --config file)")
    config = TrainConfig(**{k: v for k, v in values.items() if v is not None})
    summary = train(config)
    print(f"imsm: trained {summary['steps']} steps, final loss {summary['final_loss']:.4f}; adapter in {config.output}")
    return 0


def cmd_inspect_gate(args: argparse.Namespace) -> int:
    from imsm.data import load_examples, resolve_data_dir
    from imsm.evaluate import write_atomically
    from imsm.gate_inspection import format_report, inspect_adapter, reports_to_json
    from imsm.model.load import load_model_and_tokenizer
    from imsm.model.persist import check_adapter_directory, read_imsm_config
    from imsm.prompting import PromptFormatter
    from imsm.tasks import parse_task_list

    output = Path(args.output) if args.output else None
    if output is not None and output.suffix != ".json":
        raise IMSMError(f"--output must name a .json file, got {str(output)!r}")
    adapter = check_adapter_directory(args.adapter)
    saved = read_imsm_config(adapter) or {}
    if saved.get("imsm", {}).get("fusion", "none") not in ("imsm", "no-query"):
        raise IMSMError(f"{args.adapter} holds no IMSM gate (a vanilla or mean-fusion adapter); pass an IMSM adapter")
    tasks = parse_task_list(args.task)
    if not tasks:
        raise IMSMError("--task is empty; name one or more tasks, e.g. --task ropes,webq")
    data_dir = resolve_data_dir(args.data_dir)
    data = {task.name: (task, load_examples(task, args.split, data_dir, args.limit)) for task in tasks}
    base, tokenizer = load_model_and_tokenizer(args.model, args.dtype, args.device, args.trust_remote_code)
    formatter = PromptFormatter.for_tokenizer(tokenizer, args.chat_template, args.system)
    reports = inspect_adapter(base, adapter, formatter, data, with_initial=not args.no_initial)
    print(format_report(reports))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        header = {"adapter": str(adapter), "model": args.model, "limit": args.limit, "split": args.split}
        write_atomically(output, reports_to_json(reports, header))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from imsm.demo import run_demo

    run_demo(args)
    return 0


def torch_version() -> str:
    import torch

    return torch.__version__


def build_parser() -> argparse.ArgumentParser:
    from imsm import __version__

    parser = _OneLineParser(
        prog="imsm",
        description="IMSM: fine-tune with any peft method while a query-aware gate keeps the frozen model's knowledge.",
    )
    parser.add_argument("--version", action="version", version=f"imsm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser(
        "generate",
        help="greedy answers from a model, with or without an adapter",
        description="Greedy answers from a model, with or without an adapter.",
    )
    _add_model_arguments(generate)
    generate.add_argument("--adapter", help="adapter directory (IMSM or plain peft) to load on the model")
    generate.add_argument("--prompt", action="append", default=[], help="the prompt; repeat for several")
    generate.add_argument("--max-new-tokens", type=_positive_int, default=128, help="cap on generated tokens (128)")
    generate.add_argument(
        "--chat-template",
        choices=["auto", "on", "off"],
        default="auto",
        help="wrap prompts in the model's chat template (auto: when it has one)",
    )
    generate.add_argument("--system", help="system message for the chat template (the template's default if omitted)")
    generate.add_argument("--batch-size", type=_positive_int, default=8, help="prompts decoded together (8)")
    generate.set_defaults(handler=cmd_generate)

    evaluate = commands.add_parser(
        "eval",
        help="score a model (base, peft or IMSM adapter) on tasks",
        description="Score a model on tasks: greedy generation, the paper's metrics, "
        "and length-independent likelihood scores.",
    )
    _add_model_arguments(evaluate)
    evaluate.add_argument("--adapter", help="adapter directory (IMSM or plain peft); the base model alone if omitted")
    evaluate.add_argument(
        "--task",
        required=True,
        help="task name(s), comma-separated (mrpc, cola, ropes, gsm8k, webq, freebaseqa, multirc), "
        "or a task spec file (.yaml/.json)",
    )
    evaluate.add_argument("--output", required=True, help="metrics JSON; per-example JSONL files go beside it")
    evaluate.add_argument("--split", help="split to evaluate (default: each task's evaluation split, as in the paper)")
    evaluate.add_argument("--limit", type=_positive_int, help="evaluate the first N examples only")
    evaluate.add_argument(
        "--data-dir", help="directory laid out like shared/data (default: $IMSM_DATA_DIR, else the hub)"
    )
    evaluate.add_argument("--batch-size", type=_positive_int, default=8, help="examples decoded together (8)")
    evaluate.add_argument("--max-new-tokens", type=_positive_int, help="override each task's generation cap")
    evaluate.add_argument(
        "--chat-template",
        choices=["auto", "on", "off"],
        default="auto",
        help="wrap prompts in the model's chat template (auto: when it has one)",
    )
    evaluate.add_argument("--system", help="system message for the chat template")
    evaluate.add_argument(
        "--no-likelihood", action="store_true", help="skip the teacher-forced pass (gold NLL, yes/no margin and AUC)"
    )
    evaluate.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh; by default a rerun after an interruption evaluates only the examples "
        "its journal (OUTPUT-stem.TASK.partial.jsonl) lacks",
    )
    evaluate.set_defaults(handler=cmd_eval)

    from imsm.train.config import TrainConfig

    training = commands.add_parser(
        "train",
        help="fine-tune a model with a peft method, with or without IMSM",
        description="Fine-tune with any peft method, as IMSM or as vanilla PEFT (--fusion none).",
    )
    _add_dataclass_arguments(training, TrainConfig)
    training.add_argument("--config", type=Path, help="YAML file setting any of these options (the command line wins)")
    training.set_defaults(handler=cmd_train)

    demo = commands.add_parser(
        "demo",
        help="learning and forgetting side by side: LoRA vs IMSM-LoRA on the embedded model, offline",
        description="Fine-tune with LoRA and with IMSM-LoRA on a small target task, evaluate it and a "
        "general-knowledge probe before and after, print a table and save a plot. Offline by default "
        "(generated data); with --data-dir, MRPC is the target and WebQuestions the probe.",
    )
    demo.add_argument("--model", default="smollm2-135m", help="model to fine-tune (smollm2-135m)")
    demo.add_argument("--output", default="runs/demo", help="work directory: data, adapters, results, plot")
    demo.add_argument("--data-dir", help="use the real data sets in this directory instead of generated ones")
    demo.add_argument("--train-size", type=_positive_int, default=256, help="training examples (256)")
    demo.add_argument("--test-size", type=_positive_int, default=64, help="target-task test examples (64)")
    demo.add_argument("--probe-size", type=_positive_int, default=40, help="probe questions (40)")
    demo.add_argument("--epochs", type=_positive_int, default=3, help="training epochs (3)")
    demo.add_argument("--learning-rate", type=float, default=2e-3, help="LoRA learning rate (2e-3)")
    demo.add_argument("--batch-size", type=_positive_int, default=16, help="evaluation batch size (16)")
    demo.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and order (0)")
    demo.add_argument("--dtype", default="auto", help="auto (bf16 only where computed natively), bf16 or fp32")
    demo.add_argument("--config", type=Path, help="YAML file setting any of these options (the command line wins)")
    demo.set_defaults(handler=cmd_demo)

    inspect = commands.add_parser(
        "inspect-gate",
        help="what a trained gate does: how decided, how far it moved, its effect on gold answers",
        description="Open up a trained IMSM gate on the gold answers of some tasks: its mean weight, how "
        "decided it is per feature (0 = every feature mixed 50/50, 1 = each feature takes one branch), how "
        "far it moved from the run's initial gate, how differently it treats each task, and the gold "
        "answers' NLL under the trained gate, the initial one, a fixed 50/50 mix, the tuned branch alone "
        "and the frozen branch alone.",
    )
    _add_model_arguments(inspect)
    inspect.add_argument("--adapter", required=True, help="IMSM adapter directory (an `imsm train` output)")
    inspect.add_argument("--task", required=True, help="task name(s), comma-separated, or a task spec file")
    inspect.add_argument("--limit", type=_positive_int, default=16, help="examples per task (16)")
    inspect.add_argument("--split", help="split to read (default: each task's evaluation split)")
    inspect.add_argument("--data-dir", help="directory laid out like shared/data (default: $IMSM_DATA_DIR)")
    inspect.add_argument("--output", help="also write the numbers to this .json file")
    inspect.add_argument(
        "--chat-template", choices=["auto", "on", "off"], default="auto", help="as for `imsm eval` (auto)"
    )
    inspect.add_argument("--system", help="system message for the chat template")
    inspect.add_argument(
        "--no-initial", action="store_true", help="skip rebuilding the run's initial gate (saves one model copy)"
    )
    inspect.set_defaults(handler=cmd_inspect_gate)

    from imsm.bench.cli import add_bench_parser

    add_bench_parser(commands, _positive_int)

    from imsm.experiment.cli import add_experiment_parsers

    add_experiment_parsers(commands)
    return parser


def _apply_yaml_config(
    parser: argparse.ArgumentParser, argv: Sequence[str], args: argparse.Namespace
) -> argparse.Namespace:
    """Re-parse with the YAML file's values as defaults, so explicit flags still win."""
    import yaml

    path: Path = args.config
    if not path.is_file():
        raise IMSMError(f"config file {str(path)!r} does not exist; pass the path of a YAML file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise IMSMError(f"config file {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise IMSMError(f"config file {str(path)!r} must hold a mapping of flag names to values")
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    known = {action.dest for action in subparser._actions if action.dest not in ("help", "config")}
    defaults = {str(key).replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise IMSMError(
            f"config file {str(path)!r} sets unknown option(s) {unknown}; known: {', '.join(sorted(known))}"
        )
    subparser.set_defaults(**defaults)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        if getattr(args, "config", None) is not None:
            args = _apply_yaml_config(parser, argv, args)
        return handler(args)
    except IMSMError as error:
        print(f"imsm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imsm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
