"""`imsm experiment`, `imsm report`, `imsm frontier` and `imsm verdicts`: the command-line side of experiment
grids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imsm.atomic_write import write_atomically
from imsm.cli.options import add_command, check_options, option
from imsm.errors import IMSMError
from imsm.experiment.device.pack import PackOptions, pack_for_device
from imsm.experiment.frontier_settings import target_metric_problem
from imsm.experiment.gates import inspect_gates
from imsm.experiment.report import render_report
from imsm.experiment.report.across_targets import render_verdicts
from imsm.experiment.report.frontier import render_frontier
from imsm.experiment.report.frontier_study import collect_study
from imsm.experiment.runner import cell_state, evaluations_left, run_experiment
from imsm.experiment.spec import load_experiment
from imsm.experiment.workers import run_workers
from imsm.metrics import GENERATED_ANSWER_TYPES
from imsm.registry import unknown_name_message
from imsm.tasks import get_task


@dataclass
class ExperimentOptions:
    """`imsm experiment`: every cell of an experiment file, resumably."""

    file: Path = option(positional=True, help="experiment YAML file (see docs/experiments.md)")
    grid: str | None = option(None, help="run only this grid's cells")
    dry_run: bool = option(False, help="check the file and list the cells, run nothing")
    inspect_gates: bool = option(
        False,
        help="instead of training, open up the gate of every finished IMSM cell (`imsm inspect-gate` on its "
        "evaluation tasks) into RESULTS/cells/CELL/gate.json; the report then shows the gates' anatomy",
    )
    gate_examples: int = option(16, positive=True, help="examples per task for --inspect-gates")
    train_only: bool = option(
        False,
        help="train every cell (resuming as usual) but evaluate nothing: e.g. on a GPU machine, leaving the "
        "evaluations to later runs of the same command",
    )
    workers: int = option(
        1,
        positive=True,
        help="worker processes that share the grid, each running the next free cell: on a CPU one per core "
        "(each then gets one thread), on a GPU several sharing the device; logs in WORK/.workers/",
    )

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class ReportOptions:
    """`imsm report`: an experiment's results as markdown tables, t-tests and plots."""

    file: Path = option(positional=True, help="the experiment YAML file whose results to report")
    output: Path | None = option(None, help="markdown file to write (default: RESULTS/report.md)")
    plots: Path | None = option(None, help="directory for the PNG plots (default: beside --output)")
    discussion: Path | None = option(
        None, help="markdown file with your reading of the results, placed before the tables"
    )


@dataclass
class FrontierOptions:
    """`imsm frontier`: the learning-forgetting report of an experiment, against the λ-scaled vanilla adapter."""

    file: Path = option(positional=True, help="the experiment YAML file whose results to report")
    output: Path | None = option(None, help="markdown file to write (default: RESULTS/frontier.md)")
    plots: Path | None = option(
        None, help="directory for the plots, named after --output: frontier.png, frontier-gold.png (default: beside it)"
    )
    task: str | None = option(None, help="the target (training) task, where the experiment trains on several")
    metric: str | None = option(
        None,
        help="the target's metric, over the experiment file's frontier.metric (default: the first of accuracy, "
        "exact_match, contains, hit@5 it has); a lower-is-better one (gold_nll) is read as its gain Base − arm",
    )

    def __post_init__(self) -> None:
        if self.metric is not None and (problem := target_metric_problem(self.metric)):
            raise IMSMError(f"--metric: {problem}")


@dataclass
class VerdictsOptions:
    """`imsm verdicts`: several studies' gated arms against their vanilla adapters, in one table."""

    study: list[str] = option(
        default_factory=list, repeat=True, help="an experiment YAML file whose results to judge (one per study)"
    )
    output: Path = option(Path("verdicts.md"), help="markdown file to write")

    def __post_init__(self) -> None:
        if not self.study:
            raise IMSMError("imsm verdicts: name at least one study, e.g. --study configs/forgetting.yaml")
        self.output = Path(self.output)


def add_experiment_parsers(commands) -> None:
    # The experiment file is the configuration, so these two take no --config file.
    add_command(
        commands,
        "experiment",
        cmd_experiment,
        ExperimentOptions,
        config_file=False,
        help="run a grid of training + evaluation cells from a YAML file, resumably",
        description="Train and evaluate every cell of the experiment file. Finished cells are skipped and "
        "each cell's results are written as soon as it finishes, so the run can be stopped and restarted.",
    )
    add_command(
        commands,
        "pack-for-device",
        cmd_pack_for_device,
        PackOptions,
        config_file=False,
        help="pack an experiment's model, data and wheels for a device machine without network, in call folders",
        description="Each call folder fits, with the working tree, under what one device call carries; "
        "OUTPUT/commands.md lists the calls to make back to back: the first ones unpack, the last runs the "
        "whole study with --workers and returns one archive of results (docs/experiments.md).",
    )
    add_command(
        commands,
        "report",
        cmd_report,
        ReportOptions,
        config_file=False,
        help="turn an experiment's results into markdown tables, t-tests and plots",
        description="Tables per grid (mean ± std over seeds), length-independent scores, paired t-tests of "
        "IMSM against vanilla PEFT, and a plot per grid. Works on partial results and lists what is missing.",
    )
    add_command(
        commands,
        "frontier",
        cmd_frontier,
        FrontierOptions,
        config_file=False,
        help="target gain against forgetting of general knowledge, each arm against the λ-scaled vanilla adapter",
        description="Curves over training length, post-hoc variants, question-level tests against the base "
        "model and between arms, and each arm's forgetting against the λ line at the same target score. "
        "Works on partial results and lists what is missing.",
    )
    add_command(
        commands,
        "verdicts",
        cmd_verdicts,
        VerdictsOptions,
        config_file=False,
        help="one table of several studies' verdicts: each gated arm against its vanilla adapter, signed + = IMSM",
        description="Each gated arm of each study at its final length against the vanilla adapter of its "
        "peft method: Δ target, and what it kept at the same length, at the same gain (the λ line, vanilla's "
        "training curve), against the untrained 50/50 mix, and its gate; as `imsm frontier` computes them. "
        "Works on partial results and says how many cells each study lacks.",
    )


def _evaluation_progress(experiment, cell) -> str:
    """How many of a cell's evaluations are done, and which are left, grouped by variant."""
    total, left = len(cell.evaluations()), evaluations_left(experiment, cell)
    if not left:
        return f"{total} evaluations" if total else "nothing to evaluate"
    by_variant: dict[str, list[str]] = {}
    for variant, task in left:
        by_variant.setdefault(f"[{variant.key}]" if variant.key else "as trained", []).append(task)
    plan = "; ".join(f"{name} on {', '.join(tasks)}" for name, tasks in by_variant.items())
    return f"{total - len(left)} of {total} evaluations done; to evaluate: {plan}"


def cmd_experiment(options: ExperimentOptions) -> int:
    experiment = load_experiment(options.file)
    if options.grid is not None and options.grid not in experiment.grids:
        raise IMSMError(unknown_name_message("grid", options.grid, list(experiment.grids)))
    if options.dry_run:
        cells = [c for c in experiment.cells if options.grid is None or options.grid in c.grids]
        counts: dict[str, int] = {}
        for cell in cells:
            state = cell_state(experiment, cell)
            counts[state] = counts.get(state, 0) + 1
            print(f"{cell.name}: {state}; {_evaluation_progress(experiment, cell)} ({', '.join(cell.grids)})")
        summary = ", ".join(f"{n} {state}" for state, n in counts.items())
        print(f"{len(cells)} cells ({summary}); original row on {', '.join(experiment.original) or 'nothing'}")
        tasks = dict.fromkeys([*(task for cell in cells for _, task in cell.evaluations()), *experiment.original])
        quiet = [
            t
            for t in tasks
            if not experiment.eval_options.generates(t) and get_task(t).answer_type in GENERATED_ANSWER_TYPES
        ]
        if quiet:
            print(f"evaluated without generation (the teacher-forced pass alone, gold NLL): {', '.join(quiet)}")
        return 0
    log = lambda line: print(f"imsm experiment: {line}", flush=True)  # noqa: E731
    if options.workers > 1:
        return run_workers(options, experiment.work, log=log)
    if options.inspect_gates:
        inspect_gates(experiment, log=log, only=options.grid, limit=options.gate_examples)
        return 0
    run_experiment(experiment, log=log, only=options.grid, train_only=options.train_only)
    return 0


def cmd_pack_for_device(options: PackOptions) -> int:
    pack_for_device(options, log=lambda line: print(f"imsm pack-for-device: {line}", flush=True))
    return 0


def cmd_report(options: ReportOptions) -> int:
    experiment = load_experiment(options.file)
    output = options.output or experiment.results / "report.md"
    plots = options.plots or output.parent / "plots"
    discussion = None
    if options.discussion is not None:
        if not options.discussion.is_file():
            raise IMSMError(
                f"discussion file {str(options.discussion)!r} does not exist; give a markdown file or drop --discussion"
            )
        try:
            discussion = options.discussion.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise IMSMError(
                f"discussion file {str(options.discussion)!r} is not UTF-8 text (byte {error.start}); "
                "save it as UTF-8 markdown"
            ) from None
    report_command = f"imsm report {options.file} --output {output} --plots {plots}"
    if options.discussion is not None:
        report_command += f" --discussion {options.discussion}"
    commands = [f"imsm experiment {options.file}", report_command]
    output.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(experiment, plots, link_base=output.parent, discussion=discussion, commands=commands)
    write_atomically(output, text)
    print(text)
    print(f"report: {output}; plots in {plots}")
    return 0


def cmd_frontier(options: FrontierOptions) -> int:
    experiment = load_experiment(options.file)
    output = options.output or experiment.results / "frontier.md"
    plots = options.plots or output.parent
    study = collect_study(experiment, options.task, options.metric)
    command = f"imsm frontier {options.file} --output {output} --plots {plots}"
    command += "".join(
        f" --{name} {value}" for name, value in [("task", options.task), ("metric", options.metric)] if value
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    commands = [f"imsm experiment {options.file}", command]
    text = render_frontier(study, plots, link_base=output.parent, commands=commands, plot_name=output.stem)
    write_atomically(output, text)
    print(f"frontier: {output}; plots in {plots}")
    return 0


def cmd_verdicts(options: VerdictsOptions) -> int:
    experiments = [load_experiment(Path(file)) for file in options.study]
    studies = [collect_study(experiment) for experiment in experiments]
    command = "imsm verdicts " + " ".join(f"--study {file}" for file in options.study) + f" --output {options.output}"
    commands = [*(f"imsm experiment {file}" for file in options.study), command]
    options.output.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(options.output, render_verdicts(studies, commands))
    print(f"verdicts: {options.output}")
    return 0
