"""The report's PNG plots: per grid, the paper metric per row and column, and what the probes keep.

matplotlib is imported when a figure is drawn, not with the module: it is slow to load, and its
backend must be chosen (Agg, no display) before pyplot is imported.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from imsm.atomic_write import atomic_path
from imsm.experiment.report.grid import Column, GridView, original_metrics, primary_metric, scale
from imsm.experiment.stats import mean_std
from imsm.tasks import get_task

# What each kind of probe keeps of the base model, read without answer length or yes/no bias, and
# the sign that makes "higher = more kept": the gold answer's NLL (lower is better) for text
# answers, the yes/no AUC for yes/no questions, the accuracy of multiple-choice questions (options
# scored by log-likelihood: nothing is generated), and the KL from the base model on plain text.
RETENTION_SCORES = {
    "text": ("gold_nll", -1.0, "gold NLL, nats/token"),
    "yes_no": ("yes_no_auc", 100.0, "yes/no AUC, points"),
    "multiple_choice": ("accuracy", 100.0, "multiple-choice accuracy, points"),
    "drift": ("drift_kl", -1.0, "KL(base ‖ model), nats/token"),
}


def _draw_bars(axis, view: GridView, columns: list[Column], values_of, reference_of, metric_of) -> None:
    """Grouped bars on `axis`: one group per column, one bar per row (mean ± std of
    `values_of(row, column)`), and a black tick at `reference_of(column)` where it is not None."""
    several = len(view.train_tasks) > 1
    rows = list(view.rows)
    width = 0.8 / max(1, len(rows))
    for index, row in enumerate(rows):
        means, errors = [], []
        for column in columns:
            mu, sd = mean_std(values_of(row, column))
            means.append(mu)
            errors.append(0 if math.isnan(sd) else sd)
        positions = [c + index * width for c in range(len(columns))]
        axis.bar(positions, means, width, yerr=errors, capsize=2, label=view.label(row))
    for c, column in enumerate(columns):
        reference = reference_of(column)
        if reference is not None:
            axis.hlines(reference, c - width / 2, c + 0.8 - width / 2, colors="black")
    axis.set_xticks(
        [c + width * (len(rows) - 1) / 2 for c in range(len(columns))],
        [f"{col.label(several)}\n({metric_of(col.eval_task)})" for col in columns],
        fontsize=8,
    )


def _figure(panels: int, columns: int):
    # Imported here: the backend must be chosen before pyplot loads, and only plotting needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, panels, figsize=(max(6, 1.6 * columns + 2 * panels), 3.8), squeeze=False)
    return figure, list(axes[0])


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt  # loaded by `_figure` already, with its backend

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)


def save_grid_plot(view: GridView, path: Path) -> None:
    """Each column's paper metric per row, the Original value as a black tick."""

    def values_of(row: str, column: Column) -> list[float]:
        metric = primary_metric(column.eval_task)
        return [scale(metric, v) for v in view.values(row, column, metric).values()]

    def reference_of(column: Column) -> float | None:
        original, metric = original_metrics(view.experiment, column.eval_task), primary_metric(column.eval_task)
        return scale(metric, original[metric]) if original and metric in original else None

    figure, (axis,) = _figure(1, len(view.columns))
    _draw_bars(axis, view, view.columns, values_of, reference_of, primary_metric)
    axis.set_title(f"{view.name}: mean ± std over seeds (black line: Original)", fontsize=9)
    axis.legend(fontsize=7, ncols=2)
    _save(figure, path)


def _retention_score(task_name: str) -> tuple[str, float, str] | None:
    return RETENTION_SCORES.get(get_task(task_name).answer_type)


def save_forgetting_plot(view: GridView, path: Path) -> bool:
    """Per probe (a task the cells were not trained on) and row, the change from the Original in the
    score that neither answer length nor yes/no bias moves: below 0 = forgotten. One panel per kind
    of score. False, and no file, if the grid has no such probe with an Original value."""
    panels: dict[str, list[Column]] = defaultdict(list)
    for column in view.columns:
        score = _retention_score(column.eval_task)
        if column.train_task is None or column.eval_task == column.train_task or score is None:
            continue
        if score[0] in (original_metrics(view.experiment, column.eval_task) or {}):
            panels[score[2]].append(column)
    if not panels:
        return False

    def values_of(row: str, column: Column) -> list[float]:
        name, sign, _ = _retention_score(column.eval_task)
        original = original_metrics(view.experiment, column.eval_task)[name]
        return [sign * (v - original) for v in view.values(row, column, name).values()]

    figure, axes = _figure(len(panels), sum(len(c) for c in panels.values()))
    for axis, (unit, columns) in zip(axes, panels.items(), strict=True):
        _draw_bars(axis, view, columns, values_of, lambda column: 0.0, lambda task, unit=unit: unit)
        axis.set_title("change from the Original (below 0 = forgotten)", fontsize=9)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not on them
    figure.suptitle(f"{view.name}: what the probes keep, mean ± std over seeds", fontsize=9)
    _save(figure, path)
    return True
