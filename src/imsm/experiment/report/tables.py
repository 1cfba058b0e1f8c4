"""The report's markdown tables, one function per table, each built through `markdown_table`.

Every table reads one `GridView`: the paper-shaped metric table, the length-independent scores,
the gate's weight and anatomy, and the paired t-tests, by seed and question by question.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from imsm.experiment.gates import read_gate_report
from imsm.experiment.questions import paired_over_questions
from imsm.experiment.report.grid import (
    AVERAGE,
    NATS,
    Column,
    GridView,
    in_average,
    original_metrics,
    primary_metric,
    scale,
)
from imsm.experiment.stats import PairedTest, mean_std, paired_t_test

# Scores reported beside the paper's metric, where the task has them (and it is not the column's
# paper metric); lower is better for the NLLs and the drift KL. Multiple-choice probes add
# accuracy_norm and the gold option's probability among the options; drift probes their NLL and KL.
SIDE_SCORES = (
    "hit@5",
    "gold_nll",
    "yes_no_auc",
    "predicted_yes_rate",
    "accuracy_norm",
    "gold_probability",
    "drift_nll",
    "drift_kl",
)
GATE_SCORE = "gate_frozen_weight"
GATE_NLL_LABELS = {
    "gate": "gate",
    "initial": "initial gate",
    "half": "50/50",
    "tuned_only": "tuned only",
    "frozen_only": "frozen only",
}


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a markdown table: the header, the separator, then one line per row.

    Raises:
        ValueError: a row with more or fewer cells than headers (it would shift its columns).
    """

    def line(cells: Sequence[str]) -> str:
        if len(cells) != len(headers):
            raise ValueError(f"a table row has {len(cells)} cells for {len(headers)} columns: {list(cells)}")
        return "| " + " | ".join(cells) + " |"

    return [line(headers), "|" + "---|" * len(headers), *(line(cells) for cells in rows)]


def spread_text(values: Sequence[float], metric: str, expected: int) -> str:
    """mean ± sample std in display scale, with (n=k) where fewer than `expected` seeds have it."""
    if not values:
        return "–"
    mu, sd = mean_std([scale(metric, v) for v in values])
    digits = 3 if metric in NATS else 1
    text = f"{mu:.{digits}f} ± {sd:.{digits}f}" if len(values) > 1 else f"{mu:.{digits}f}"
    return text if len(values) == expected else f"{text} (n={len(values)})"


def metric_table(view: GridView, metric_for) -> list[str]:
    """The paper-shaped table; grids with probes get the paper's Table 2 "Avg." column too."""
    several = len(view.train_tasks) > 1
    averaged = view.has_probes()
    headers = ["method", "trainable params"] + [f"{c.label(several)} ({metric_for(c.eval_task)})" for c in view.columns]
    headers += [AVERAGE] if averaged else []
    rows = []
    if any(original_metrics(view.experiment, c.eval_task) for c in view.columns):
        original = ["Original", "0"]
        scores = []
        for column in view.columns:
            metrics = original_metrics(view.experiment, column.eval_task) or {}
            metric = metric_for(column.eval_task)
            original.append(spread_text([metrics[metric]], metric, 1) if metric in metrics else "–")
            if in_average(metric):
                scores.append(scale(metric, metrics[metric]) if metric in metrics else None)
        if averaged:
            complete = scores and None not in scores
            original.append(spread_text([sum(scores) / len(scores)], AVERAGE, 1) if complete else "–")
        rows.append(original)
    for row in view.rows:
        count = view.trainable(row)
        entries = [view.label(row), f"{count:,}" if count else "–"]
        for column in view.columns:
            metric = metric_for(column.eval_task)
            entries.append(spread_text(list(view.values(row, column, metric).values()), metric, view.seeds))
        if averaged:
            entries.append(spread_text(list(view.averages(row).values()), AVERAGE, view.seeds))
        rows.append(entries)
    return markdown_table(headers, rows)


def side_score_table(view: GridView) -> list[str]:
    """hit@5 / gold NLL / yes-no AUC / predicted-yes rate, and accuracy_norm / gold probability /
    drift NLL and KL, where each task has them, and the answers' length in characters beside
    "contains"."""
    several = len(view.train_tasks) > 1
    pairs = []
    for column in view.columns:
        sample = original_metrics(view.experiment, column.eval_task) or next(
            (r["metrics"].get(column.eval_task, {}) for r in view.results.values() if r), {}
        )
        shown = primary_metric(column.eval_task)  # already in the metric table
        pairs += [(column, score) for score in SIDE_SCORES if score in sample and score != shown]
        if "hit@5" in sample and "answer_chars" in sample:
            # Not a length-independent score but what "contains" moves with: the answer's length.
            pairs.append((column, "answer_chars"))
    if not pairs:
        return []
    headers = ["method"] + [f"{c.label(several)} {score}" for c, score in pairs]
    rows = []
    if any(original_metrics(view.experiment, c.eval_task) for c, _ in pairs):
        entries = ["Original"]
        for column, score in pairs:
            metrics = original_metrics(view.experiment, column.eval_task) or {}
            entries.append(spread_text([metrics[score]], score, 1) if score in metrics else "–")
        rows.append(entries)
    for row in view.rows:
        entries = [view.label(row)]
        for column, score in pairs:
            entries.append(spread_text(list(view.values(row, column, score).values()), score, view.seeds))
        rows.append(entries)
    return markdown_table(headers, rows)


def gate_table(view: GridView) -> list[str]:
    """The gate's mean weight on the frozen branch over the gold answers' tokens, per gated row:
    how much of each answer the base model's memory supplies (0.5 = both memories equally)."""
    several = len(view.train_tasks) > 1
    rows = {
        row: [spread_text(list(view.values(row, c, GATE_SCORE).values()), GATE_SCORE, view.seeds) for c in view.columns]
        for row in view.rows
    }
    rows = {row: entries for row, entries in rows.items() if any(e != "–" for e in entries)}
    if not rows:
        return []
    headers = ["method"] + [c.label(several) for c in view.columns]
    return markdown_table(headers, ([view.label(row), *entries] for row, entries in rows.items()))


def gate_anatomy_table(view: GridView) -> list[str]:
    """From the cells' gate.json (`imsm experiment --inspect-gates`): per gated row and task, the
    gate's shape and the gold answers' NLL under it and its stand-ins, averaged over seeds, and
    beside them the vanilla twin's NLL on the same questions (from its per-question scores) where
    the grid has vanilla rows."""
    several = len(view.train_tasks) > 1
    # A cell shared with another grid may have been inspected on tasks this grid does not show.
    columns = {(Path(c.trained_on).stem, Path(c.eval_task).stem): c for c in view.columns}
    twins = dict(view.twins())
    groups: dict[tuple[str, Column], list[dict[str, Any]]] = defaultdict(list)
    limits: dict[tuple[str, Column], set[int]] = defaultdict(set)
    seeds: dict[tuple[str, Column], set[int]] = defaultdict(set)
    for row, cells in view.rows.items():
        for cell in cells:
            report = read_gate_report(view.experiment, cell) or {}
            for task in report.get("tasks", []):
                column = columns.get((Path(str(cell.config["task"])).stem, task["task"]))
                if column is not None:
                    groups[(row, column)].append(task)
                    limits[(row, column)].add(report["limit"])
                    seeds[(row, column)].add(cell.config["seed"])
    if not groups:
        return []
    headers = ["method", "task", "seeds", "mean g", "decisiveness (initial)", "moved", "specificity (initial)"]
    headers += [f"NLL {label}" for label in GATE_NLL_LABELS.values()] + (["NLL vanilla twin"] if twins else [])

    def average(values: list[float | None]) -> str:
        present = [v for v in values if v is not None]
        return f"{sum(present) / len(present):.3f}" if present else "–"

    def twin_nll(row: str, column: Column) -> str:
        if row not in twins or len(limits[(row, column)]) != 1:
            return "–"
        (limit,) = limits[(row, column)]
        per_seed = []
        for seed, questions in view.questions(twins[row], column).items():
            if seed not in seeds[(row, column)]:
                continue  # the same seeds as the inspected gates
            shown = [n for i, n in zip(questions["index"], questions.get("gold_nll", []), strict=False) if i < limit]
            if shown:
                per_seed.append(sum(shown) / len(shown))
        return average(per_seed)

    rows = []
    for (row, column), tasks in groups.items():
        cells = [view.label(row), column.label(several), str(len(tasks)), average([t["frozen_weight"] for t in tasks])]
        for key in ("decisiveness", "moved", "specificity"):
            value = average([t[key] for t in tasks])
            initial = average([t.get(f"initial_{key}") for t in tasks])  # absent from older gate.json
            cells.append(value if key == "moved" else f"{value} ({initial})")
        cells += [average([t["gold_nll"].get(key) for t in tasks]) for key in GATE_NLL_LABELS]
        cells += [twin_nll(row, column)] if twins else []
        rows.append(cells)
    return markdown_table(headers, rows)


def _test_cells(test: PairedTest, metric: str) -> tuple[str, str, str]:
    """Mean difference (in the metric's display scale), t and p, with dashes where undefined."""
    difference = "–" if math.isnan(test.mean_difference) else f"{scale(metric, test.mean_difference):+.2f}"
    t = "–" if math.isnan(test.t) else f"{test.t:.2f}"
    p = "–" if math.isnan(test.p) else f"{test.p:.3f}"
    if math.isinf(test.t):
        # Every pair differs by the same amount: with a few seeds and counts of questions this
        # happens by chance, and p = 0 would read as certainty; no test is possible.
        t, p = "–", "– (all pairs differ equally)"
    return difference, t, p


def significance_table(view: GridView) -> list[str]:
    """Each pair `GridView.comparisons` makes (a gated row and its vanilla twin, a variant and
    default IMSM), paired by seed; for grids with probes, their averages too (the paper's "overall
    performance")."""
    rows = []
    several = len(view.train_tasks) > 1
    for row, twin in view.comparisons():
        label = f"{view.label(row)} − {view.label(twin)}"
        compared = []
        for column in view.columns:
            metric = primary_metric(column.eval_task)
            treated, control = view.values(row, column, metric), view.values(twin, column, metric)
            compared.append((f"{column.label(several)} ({metric})", metric, treated, control))
        if view.has_probes():
            compared.append((AVERAGE, AVERAGE, view.averages(row), view.averages(twin)))
        for name, metric, treated, control in compared:
            seeds = sorted(set(treated) & set(control))
            test = paired_t_test([treated[s] for s in seeds], [control[s] for s in seeds])
            difference, t, p = _test_cells(test, metric)
            rows.append([label, name, str(test.n), difference, t, p])
    if not rows:
        return []
    return markdown_table(["comparison", "task (metric)", "seeds", "mean difference", "t", "p"], rows)


def _per_question_metric(task_name: str, columns: list[dict[str, list[Any]]]) -> str:
    """The paper's metric if it is scored per question; else (MCC, F1: corpus-level) accuracy."""
    metric = primary_metric(task_name)
    return metric if any(metric in c for c in columns) or not columns else "accuracy"


def question_table(view: GridView) -> list[str]:
    """Each compared pair (`GridView.comparisons`) question by question: every question's score averaged
    over the seeds both finished, then a paired t-test over questions, for the paper's metric and
    for the gold answer's NLL."""
    rows = []
    several = len(view.train_tasks) > 1
    for row, twin in view.comparisons():
        for column in view.columns:
            treated, control = view.questions(row, column), view.questions(twin, column)
            metric = _per_question_metric(column.eval_task, [*treated.values(), *control.values()])
            by_metric, seeds = paired_over_questions(treated, control, metric)
            by_nll, _ = paired_over_questions(treated, control, "gold_nll")
            if seeds == 0:
                continue
            metric_difference, _, metric_p = _test_cells(by_metric, metric)
            nll_difference, _, nll_p = _test_cells(by_nll, "gold_nll")
            rows.append(
                [
                    f"{view.label(row)} − {view.label(twin)}",
                    f"{column.label(several)} ({metric})",
                    f"{by_metric.n} × {seeds}",
                    metric_difference,
                    metric_p,
                    nll_difference,
                    nll_p,
                ]
            )
    if not rows:
        return []
    headers = ["comparison", "task", "questions × seeds", "Δ metric", "p", "Δ gold NLL", "p"]
    return markdown_table(headers, rows)


def compared_against(view: GridView) -> str:
    """What the t-tests compare, for the sentence above their table."""
    pairs = view.comparisons()
    to_vanilla = any(json.loads(twin)["fusion"] == "none" for _, twin in pairs)
    to_imsm = any(json.loads(twin)["fusion"] != "none" for _, twin in pairs)
    parts = ["each gated row − its vanilla twin"] * to_vanilla
    parts += ["each variant − IMSM at its default gate settings"] * to_imsm
    return "; ".join(parts)
