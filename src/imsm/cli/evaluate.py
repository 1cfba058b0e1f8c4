"""`imsm eval` and `imsm inspect-gate`: a model's scores on tasks, and what a trained gate does on them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imsm.atomic_write import write_atomically
from imsm.cli.model_options import ModelOptions
from imsm.cli.options import (
    chat_template_option,
    check_options,
    data_dir_option,
    device_option,
    dtype_option,
    eval_batch_size_option,
    eval_limit_option,
    generate_option,
    likelihood_option,
    max_new_tokens_option,
    model_option,
    option,
    system_option,
    trust_remote_code_option,
)
from imsm.config import GATED_FUSIONS
from imsm.data import load_examples, resolve_data_dir
from imsm.errors import IMSMError
from imsm.evaluation.frozen_states import FrozenStateStore
from imsm.evaluation.gate_inspection import format_report, inspect_adapter, reports_to_json
from imsm.evaluation.journal import directory_digest
from imsm.evaluation.results import format_table, journal_path, write_results
from imsm.evaluation.run import evaluate_task
from imsm.model.load import load_model_and_tokenizer
from imsm.model.persist import check_adapter_directory, read_imsm_config
from imsm.model.variant import load_evaluated_model
from imsm.prompting import PromptFormatter
from imsm.provenance import provenance_header
from imsm.tasks import parse_task_list


def _check_json_output(output: str | None) -> None:
    if output is not None and Path(output).suffix != ".json":
        raise IMSMError(f"--output must name a .json file, got {str(output)!r}")


@dataclass
class EvalOptions(ModelOptions):
    """`imsm eval`: a model's scores on tasks. An experiment's `eval:` section shares these defaults."""

    task: str = option(
        help="task name(s), comma-separated (mrpc, cola, ropes, gsm8k, webq, freebaseqa, multirc; multiple "
        "choice: arc_easy, arc_challenge, piqa, sciq, winogrande; drift: sciq_support), NAME@START for a task "
        "read from its START-th question on (0-based; --limit counts from there), or a task spec file (.yaml/.json)"
    )
    output: str = option(help="metrics JSON; per-example JSONL files go beside it")
    split: str | None = option(None, help="split to evaluate (default: each task's evaluation split, as in the paper)")
    limit: int | None = eval_limit_option()
    data_dir: str | None = data_dir_option()
    batch_size: int = eval_batch_size_option()
    max_new_tokens: int | None = max_new_tokens_option()
    chat_template: str = chat_template_option()
    system: str | None = system_option()
    likelihood: bool = likelihood_option()
    generate: bool = generate_option()
    resume: bool = option(
        True,
        help="after an interruption, evaluate only the examples the journal (OUTPUT-stem.TASK.partial.jsonl) "
        "lacks; --no-resume starts afresh",
    )
    frozen_states: str | None = option(
        None,
        help="directory where the frozen branch's states are kept and reused by every evaluation on the same "
        "base model (multiple-choice and drift tasks run the tuned branch alone once they are there)",
    )

    def __post_init__(self) -> None:
        check_options(self)
        _check_json_output(self.output)
        if not self.generate and not self.likelihood:
            raise IMSMError(
                "--no-generate leaves only the teacher-forced pass, which --no-likelihood turns off: "
                "nothing would be evaluated; drop one of them"
            )
        if not self.generate and self.max_new_tokens is not None:
            raise IMSMError("--max-new-tokens caps generated answers, and --no-generate generates none; drop one")
        if (
            self.frozen_states is not None
            and Path(self.frozen_states).exists()
            and not Path(self.frozen_states).is_dir()
        ):
            raise IMSMError(f"--frozen-states must name a directory, but {self.frozen_states} is a file")
        super().__post_init__()


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


def cmd_eval(options: EvalOptions) -> int:
    output = Path(options.output)
    # Everything the run needs is read and checked before the (slow) model load; the options
    # checked the variant when they were built.
    tasks = parse_task_list(options.task)
    if not tasks:
        raise IMSMError("--task is empty; name one or more tasks, e.g. --task mrpc,webq")
    data_dir = resolve_data_dir(options.data_dir)
    data = {task.name: load_examples(task, options.split, data_dir, options.limit) for task in tasks}
    model, tokenizer = load_evaluated_model(options)
    formatter = PromptFormatter.for_tokenizer(tokenizer, options.chat_template, options.system)
    output.parent.mkdir(parents=True, exist_ok=True)
    loaded = options.describe(model)
    header = provenance_header(
        **loaded,
        chat_template=options.chat_template,  # as asked; each task's summary says what it used
        data_dir=str(data_dir) if data_dir else None,
        limit=options.limit,
        batch_size=options.batch_size,
        likelihood=options.likelihood,
        generate=options.generate,
    )
    # What shapes the answers, for the resume journals: a journal made under other settings is
    # started afresh. The batch size is left out: greedy answers do not depend on it.
    run_settings = {
        **loaded,
        "adapter": directory_digest(Path(options.adapter)) if options.adapter else None,
        "chat_template": formatter.use_chat_template,
        "system": options.system,
    }
    store = FrozenStateStore(options.frozen_states) if options.frozen_states else None
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
            frozen_states=store,
            generate=options.generate,
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


def cmd_inspect_gate(options: InspectGateOptions) -> int:
    output = Path(options.output) if options.output else None
    adapter = check_adapter_directory(options.adapter)
    saved = read_imsm_config(adapter) or {}
    if saved.get("imsm", {}).get("fusion", "none") not in GATED_FUSIONS:
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
