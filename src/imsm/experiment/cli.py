"""`imsm experiment` and `imsm report`: the command-line side of experiment grids."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_experiment_parsers(commands) -> None:
    from imsm.cli import _positive_int

    experiment = commands.add_parser(
        "experiment",
        help="run a grid of training + evaluation cells from a YAML file, resumably",
        description="Train and evaluate every cell of the experiment file. Finished cells are skipped and "
        "each cell's results are written as soon as it finishes, so the run can be stopped and restarted.",
    )
    experiment.add_argument("file", type=Path, help="experiment YAML file (see docs/experiments.md)")
    experiment.add_argument("--grid", help="run only this grid's cells")
    experiment.add_argument("--dry-run", action="store_true", help="check the file and list the cells, run nothing")
    experiment.add_argument(
        "--inspect-gates",
        action="store_true",
        help="instead of training, open up the gate of every finished IMSM cell (`imsm inspect-gate` on its "
        "evaluation tasks) into RESULTS/cells/CELL/gate.json; the report then shows the gates' anatomy",
    )
    experiment.add_argument(
        "--gate-examples", type=_positive_int, default=16, help="examples per task for --inspect-gates (16)"
    )
    experiment.set_defaults(handler=cmd_experiment)

    report = commands.add_parser(
        "report",
        help="turn an experiment's results into markdown tables, t-tests and plots",
        description="Tables per grid (mean ± std over seeds), length-independent scores, paired t-tests of "
        "IMSM against vanilla PEFT, and a plot per grid. Works on partial results and lists what is missing.",
    )
    report.add_argument("file", type=Path, help="the experiment YAML file whose results to report")
    report.add_argument("--output", type=Path, help="markdown file to write (default RESULTS/report.md)")
    report.add_argument("--plots", type=Path, help="directory for the PNG plots (default: beside --output)")
    report.add_argument(
        "--discussion", type=Path, help="markdown file with your reading of the results, placed before the tables"
    )
    report.set_defaults(handler=cmd_report)


def cmd_experiment(args: argparse.Namespace) -> int:
    from imsm.experiment.runner import cell_state, run_experiment
    from imsm.experiment.spec import load_experiment

    experiment = load_experiment(args.file)
    if args.grid is not None and args.grid not in experiment.grids:
        from imsm.errors import IMSMError
        from imsm.registry import unknown_name_message

        raise IMSMError(unknown_name_message("grid", args.grid, list(experiment.grids)))
    if args.dry_run:
        cells = [c for c in experiment.cells if args.grid is None or args.grid in c.grids]
        counts: dict[str, int] = {}
        for cell in cells:
            state = cell_state(experiment, cell)
            counts[state] = counts.get(state, 0) + 1
            print(f"{cell.name}: {state}; evaluate on {', '.join(cell.evaluate)} ({', '.join(cell.grids)})")
        summary = ", ".join(f"{n} {state}" for state, n in counts.items())
        print(f"{len(cells)} cells ({summary}); original row on {', '.join(experiment.original) or 'nothing'}")
        return 0
    log = lambda line: print(f"imsm experiment: {line}", flush=True)  # noqa: E731
    if args.inspect_gates:
        from imsm.experiment.gates import inspect_gates

        inspect_gates(experiment, log=log, only=args.grid, limit=args.gate_examples)
        return 0
    run_experiment(experiment, log=log, only=args.grid)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from imsm.errors import IMSMError
    from imsm.evaluate import write_atomically
    from imsm.experiment.report import render_report
    from imsm.experiment.spec import load_experiment

    experiment = load_experiment(args.file)
    output = args.output or experiment.results / "report.md"
    plots = args.plots or output.parent / "plots"
    discussion = None
    if args.discussion is not None:
        if not args.discussion.is_file():
            raise IMSMError(
                f"discussion file {str(args.discussion)!r} does not exist; give a markdown file or drop --discussion"
            )
        discussion = args.discussion.read_text()
    report_command = f"imsm report {args.file} --output {output} --plots {plots}"
    if args.discussion is not None:
        report_command += f" --discussion {args.discussion}"
    commands = [f"imsm experiment {args.file}", report_command]
    output.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(experiment, plots, link_base=output.parent, discussion=discussion, commands=commands)
    write_atomically(output, text)
    print(text)
    print(f"report: {output}; plots in {plots}")
    return 0
