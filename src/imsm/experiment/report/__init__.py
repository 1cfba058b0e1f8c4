"""`imsm report`: an experiment's results as markdown tables and PNG plots.

Every grid becomes a table shaped like the paper's: one row per setting (peft method, fusion,
gate rank, ...), one column per evaluated task, mean ± sample std over seeds of the task's paper
metric, and the trainable parameters. Beside it: the length-independent scores (hit@5, gold NLL,
yes/no AUC and the predicted-yes rate), and a paired t-test, pairs sharing a seed, of every IMSM
variant against its vanilla twin where the grid holds vanilla cells (fusion none), and of every
ablation or gate setting against IMSM at its defaults; the same comparisons question by question
where the results keep per-question scores. Missing cells are listed, never silently dropped.

This module lays out the page; `grid` reads a grid's cells into rows and columns, `tables` and
`plots` draw them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from imsm.experiment.report.grid import GridView, original_metrics, primary_metric
from imsm.experiment.report.plots import save_forgetting_plot, save_grid_plot
from imsm.experiment.report.tables import (
    compared_against,
    gate_anatomy_table,
    gate_table,
    metric_table,
    question_table,
    side_score_table,
    significance_table,
)
from imsm.experiment.runner import is_done, read_cell_result
from imsm.experiment.spec import Experiment

__all__ = ["made_with", "render_report"]


def made_with(experiment: Experiment, commands: list[str]) -> list[str]:
    """How the numbers were made: the commands, the machines the cells ran on, the compute spent."""
    results = [r for c in experiment.cells if (r := read_cell_result(experiment, c))]
    machines = sorted({r["machine"] for r in results if r.get("machine")})
    training = sum((r.get("training") or {}).get("seconds") or 0 for r in results)
    evaluating = sum(e.get("seconds") or 0 for r in results for e in (r.get("evaluation") or {}).values())
    lines = ["Made with:", "", "```bash", *commands, "```", ""]
    if machines:
        lines += [f"Machine{'s' if len(machines) > 1 else ''}: " + "; ".join(machines) + "."]
        finished = sum(is_done(experiment, c) for c in experiment.cells)
        partly = f" ({len(results) - finished} more partly evaluated)" if len(results) > finished else ""
        lines += [
            f"{finished} of {len(experiment.cells)} cells finished{partly}, "
            f"{training / 3600:.1f} h of training and {evaluating / 3600:.1f} h of evaluation in all.",
            "",
        ]
    return lines


def render_report(
    experiment: Experiment,
    plots: Path | None,
    link_base: Path | None = None,
    discussion: str | None = None,
    commands: list[str] | None = None,
) -> str:
    """The markdown report; writes one PNG per grid into `plots` when given. `discussion` (the
    author's reading of the numbers, markdown) goes right after the header, before the tables."""
    lines = [f"# Experiment `{experiment.name}`", ""]
    lines += [
        f"Model `{experiment.model}`; shared training options `{json.dumps(experiment.train)}`; "
        f"evaluation `{json.dumps(experiment.eval)}`. Metrics in % (MCC ×100, as the paper shows it), except "
        "gold NLL (nats per token, lower is better) and answer length (characters); mean ± sample "
        "std over seeds; (n=k) marks rows with fewer finished seeds than planned.",
        "",
    ]
    if commands:
        lines += made_with(experiment, commands)
    if discussion:
        lines += [discussion.strip(), ""]
    for name in experiment.grids:
        view = GridView(experiment, name)
        lines += [f"## {name}", ""]
        if view.shared:
            lines += ["Every row: " + ", ".join(f"{k}={v}" for k, v in view.shared.items()) + ".", ""]
        lines += metric_table(view, primary_metric) + [""]
        side = side_score_table(view)
        if side:
            lines += ["Length- and bias-independent scores (and answer length in characters):", ""] + side + [""]
        gates = gate_table(view)
        if gates:
            lines += ["Gate weight on the frozen branch over the gold answers' tokens (%; 50 = both equally):", ""]
            lines += gates + [""]
        anatomy = gate_anatomy_table(view)
        if anatomy:
            lines += [
                "The gate opened up (`imsm experiment FILE --inspect-gates`, each task's first examples, mean "
                "over seeds): mean g on the frozen branch; decisiveness, mean |2g − 1| (0: every feature "
                "mixed evenly, 1: each feature takes one branch); moved, mean |g − g_initial|; specificity "
                "of each task's per-feature gate, the initial gate's in brackets; the gold answers' NLL under "
                "the gate and its stand-ins (tuned only = the adapter without fusion, frozen only = the base "
                "model), and the vanilla adapter's on the same questions. See docs/experiments.md:",
                "",
                *anatomy,
                "",
            ]
        tests = significance_table(view)
        if tests:
            lines += [f"Paired t-tests ({compared_against(view)}, same seeds; two-sided):", ""] + tests + [""]
        by_question = question_table(view)
        if by_question:
            lines += [
                "The same comparisons question by question (each question averaged over the seeds both "
                "finished; paired t-test over questions, two-sided). This says whether a difference holds "
                "across questions for these trained adapters, not whether it survives other seeds:",
                "",
                *by_question,
                "",
            ]
        if plots is not None and view.cells:
            plot, forgetting = plots / f"{name}.png", plots / f"{name}-forgetting.png"
            save_grid_plot(view, plot)
            shown = [plot, *([forgetting] if save_forgetting_plot(view, forgetting) else [])]
            for picture in shown:
                linked = picture if link_base is None else Path(*_relative(picture, link_base))
                lines += [f"![{picture.stem}]({linked.as_posix()})", ""]
        missing = view.missing()
        if missing:
            lines += [f"Missing ({len(missing)} of {len(view.cells)} cells): " + ", ".join(missing[:12])]
            lines += ["" if len(missing) <= 12 else f"... and {len(missing) - 12} more", ""]
    missing_original = [t for t in experiment.original if original_metrics(experiment, t) is None]
    if missing_original:
        lines += [f"Original row missing for: {', '.join(missing_original)}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _relative(path: Path, base: Path) -> tuple[str, ...]:
    return tuple(Path(os.path.relpath(path.resolve(), base.resolve())).parts)
