"""`imsm report`: an experiment's results as markdown tables and PNG plots.

Every grid becomes a table shaped like the paper's: one row per setting (peft method, fusion,
gate rank, ...), one column per evaluated task, mean ± sample std over seeds of the task's paper
metric, and the trainable parameters. Beside it: the length-independent scores (hit@5, gold NLL,
yes/no AUC and the predicted-yes rate), and a paired t-test, pairs sharing a seed, of every IMSM
variant against its vanilla twin where the grid holds vanilla cells (fusion none), and of every
ablation or gate setting against IMSM at its defaults; the same comparisons question by question
where the results keep per-question scores. Missing cells are listed, never silently dropped.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imsm.experiment.questions import paired_over_questions
from imsm.experiment.runner import is_done, original_path, read_cell_result
from imsm.experiment.spec import GATE_OPTIONS, TARGET, Cell, Experiment
from imsm.experiment.stats import PairedTest, mean_std, paired_t_test

FUSION_LABELS = {"none": "{}", "imsm": "IMSM-{}", "no-query": "IMSM-{} (no query)", "mean": "IMSM-{} (mean)"}
METHOD_LABELS = {"lora": "LoRA", "ia3": "(IA)3", "adalora": "AdaLoRA", "dora": "DoRA", "loramoe": "LoRAMoE"}
# Scores reported beside the paper's metric, where the task has them; lower is better for NLL.
SIDE_SCORES = ("hit@5", "gold_nll", "yes_no_auc", "predicted_yes_rate")
GATE_SCORE = "gate_frozen_weight"
# Shown as they are; every other score is a proportion shown in %, and MCC x 100 as the paper does.
# The paper's "Avg." over a row's columns, already in display scale.
AVERAGE = "avg."
UNSCALED = {"gold_nll", "answer_chars", AVERAGE}


@dataclass(frozen=True)
class Column:
    train_task: str | None  # None: each row's own training task (the "target" column)
    eval_task: str

    @property
    def trained_on(self) -> str:
        """The training task of the cells this column reads."""
        return self.train_task if self.train_task is not None else self.eval_task

    def label(self, several_train_tasks: bool) -> str:
        evaluated = Path(self.eval_task).stem
        if self.train_task is None or not several_train_tasks:
            return evaluated
        return f"{evaluated} (trained on {Path(self.train_task).stem})"


def primary_metric(task_name: str) -> str:
    from imsm.tasks import get_task

    return get_task(task_name).metrics[0]


def _scale(metric: str, value: float) -> float:
    return value if metric in UNSCALED else 100 * value


def _format(values: list[float], metric: str, expected: int) -> str:
    if not values:
        return "–"
    mu, sd = mean_std([_scale(metric, v) for v in values])
    digits = 3 if metric == "gold_nll" else 1
    text = f"{mu:.{digits}f} ± {sd:.{digits}f}" if len(values) > 1 else f"{mu:.{digits}f}"
    return text if len(values) == expected else f"{text} (n={len(values)})"


def row_label(settings: dict[str, Any], varying: list[str]) -> str:
    method = METHOD_LABELS.get(settings["peft"], settings["peft"])
    label = FUSION_LABELS.get(settings["fusion"], "{} (" + settings["fusion"] + ")").format(method)
    fixed = ("peft", "fusion", "task", "seed", *(GATE_OPTIONS if settings["fusion"] == "none" else ()))
    extras = [f"{axis}={settings[axis]}" for axis in varying if axis not in fixed]
    return label + (f" [{', '.join(extras)}]" if extras else "")


class GridView:
    """One grid's cells, grouped into rows (settings without task and seed) and columns."""

    def __init__(self, experiment: Experiment, name: str):
        self.experiment, self.name = experiment, name
        grid = experiment.grids[name]
        self.cells: list[Cell] = [c for c in experiment.cells if name in c.grids]
        self.varying = [axis for axis, values in grid.items() if axis != "evaluate" and isinstance(values, list)]
        self.train_tasks = list(dict.fromkeys(str(c.config["task"]) for c in self.cells))
        evaluate = grid.get("evaluate", [TARGET])
        evaluate = evaluate if isinstance(evaluate, list) else [evaluate]
        self.columns: list[Column] = []
        for target in evaluate:
            if target == TARGET:
                self.columns += [Column(None, t) for t in self.train_tasks]
            else:
                self.columns += [Column(t, str(target)) for t in self.train_tasks]
        grouped: dict[str, list[Cell]] = defaultdict(list)
        for cell in self.cells:
            grouped[self.row_key(cell)].append(cell)

        def grid_order(row: str) -> tuple[int, ...]:  # rows in the order the grid lists its values
            settings = grouped[row][0].config
            axes = [a for a in self.varying if a not in ("task", "seed")]
            return tuple(_position(grid[a], settings[a]) for a in axes)

        self.rows = {row: grouped[row] for row in sorted(grouped, key=grid_order)}
        self.results = {c.key: read_cell_result(experiment, c) for c in self.cells}
        self.seeds = len({c.config["seed"] for c in self.cells})

    def row_key(self, cell: Cell) -> str:
        # Options set per training task (e.g. a smaller ROPES subset) belong to the column, not the row.
        per_task = {key for options in self.experiment.task_options.values() for key in options}
        ignored = {"task", "seed", *(per_task - set(self.varying))}
        return json.dumps({k: v for k, v in cell.config.items() if k not in ignored}, sort_keys=True)

    def _results_in(self, row: str, column: Column) -> dict[int, dict[str, Any]]:
        """seed -> result.json of the finished cells of this row trained for this column."""
        out = {}
        for cell in self.rows[row]:
            trained_on = str(cell.config["task"])
            if trained_on != column.trained_on:
                continue
            result = self.results.get(cell.key)
            if result is not None:
                out[cell.config["seed"]] = result
        return out

    def values(self, row: str, column: Column, metric: str) -> dict[int, float]:
        """seed -> metric, over the finished cells of this row and column."""
        out = {}
        for seed, result in self._results_in(row, column).items():
            value = result.get("metrics", {}).get(column.eval_task, {}).get(metric)
            if value is not None and not math.isnan(value):
                out[seed] = value
        return out

    def questions(self, row: str, column: Column) -> dict[int, dict[str, list[Any]]]:
        """seed -> per-question columns (see `imsm.experiment.questions`) of this row and column."""
        out = {}
        for seed, result in self._results_in(row, column).items():
            columns = result.get("questions", {}).get(column.eval_task)
            if columns:
                out[seed] = columns
        return out

    def twins(self) -> list[tuple[str, str]]:
        """(gated row, the vanilla row with the same other settings), for every gated row that has one."""
        settings = {row: json.loads(row) for row in self.rows}
        pairs = []
        for row, mine in settings.items():
            if mine["fusion"] == "none":
                continue
            twin = next((r for r, s in settings.items() if s["fusion"] == "none" and _same_but_gate(s, mine)), None)
            if twin is not None:
                pairs.append((row, twin))
        return pairs

    def comparisons(self) -> list[tuple[str, str]]:
        """(row, the row it is tested against): every gated row against its vanilla twin, then every
        other gated row against IMSM at its default gate settings, the configuration the paper
        reports. An ablation or gate-option grid reads both ways: does the variant beat plain PEFT,
        and does it beat IMSM as the paper builds it."""
        pairs = self.twins()
        settings = {row: json.loads(row) for row in self.rows}
        reference = next((row for row, s in settings.items() if _is_default_imsm(s)), None)
        if reference is not None:
            pairs += [
                (row, reference)
                for row, mine in settings.items()
                if row != reference and mine["fusion"] != "none" and _same_but_gate(settings[reference], mine)
            ]
        return pairs

    def has_probes(self) -> bool:
        """Whether cells are evaluated on tasks beyond their own (the paper's forgetting tables)."""
        return any(c.train_task is not None and c.eval_task != c.train_task for c in self.columns)

    def averages(self, row: str) -> dict[int, float]:
        """seed -> mean of the columns' paper metrics in display scale (the paper's "Avg."), over
        the seeds that have every column."""
        per_column = []
        for column in self.columns:
            metric = primary_metric(column.eval_task)
            per_column.append({seed: _scale(metric, v) for seed, v in self.values(row, column, metric).items()})
        seeds = set.intersection(*(set(values) for values in per_column)) if per_column else set()
        return {seed: sum(values[seed] for values in per_column) / len(per_column) for seed in sorted(seeds)}

    def label(self, row: str) -> str:
        return row_label(self.rows[row][0].config, self.varying)

    def missing(self) -> list[str]:
        """Cells without a result for every task this grid shows. A cell shared with another grid
        may still owe that grid evaluations; they are that grid's missing cells, not this one's."""
        names = []
        for cell in self.cells:
            result = self.results.get(cell.key)
            trained_on = str(cell.config["task"])
            shown = [c.eval_task for c in self.columns if c.trained_on == trained_on]
            if result is None or any(task not in result["metrics"] for task in shown):
                names.append(cell.name)
        return names

    def trainable(self, row: str) -> int | None:
        counts = {r["trainable_parameters"] for c in self.rows[row] if (r := self.results.get(c.key))}
        return counts.pop() if len(counts) == 1 else None


def _position(values: list[Any], value: Any) -> int:
    return values.index(value) if value in values else len(values)


def _original(experiment: Experiment, task: str) -> dict[str, float] | None:
    path = original_path(experiment, task)
    return json.loads(path.read_text())["metrics"] if path.exists() else None


def metric_table(view: GridView, metric_for) -> list[str]:
    """The paper-shaped table; grids with probes get the paper's Table 2 "Avg." column too."""
    several = len(view.train_tasks) > 1
    averaged = view.has_probes()
    headers = ["method", "trainable params"] + [f"{c.label(several)} ({metric_for(c.eval_task)})" for c in view.columns]
    headers += [AVERAGE] if averaged else []
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    original = ["Original", "0"]
    if any(_original(view.experiment, c.eval_task) for c in view.columns):
        scores = []
        for column in view.columns:
            metrics = _original(view.experiment, column.eval_task) or {}
            metric = metric_for(column.eval_task)
            original.append(_format([metrics[metric]], metric, 1) if metric in metrics else "–")
            scores.append(_scale(metric, metrics[metric]) if metric in metrics else None)
        if averaged:
            original.append(_format([sum(scores) / len(scores)], AVERAGE, 1) if None not in scores else "–")
        lines.append("| " + " | ".join(original) + " |")
    for row in view.rows:
        count = view.trainable(row)
        entries = [view.label(row), f"{count:,}" if count else "–"]
        for column in view.columns:
            metric = metric_for(column.eval_task)
            entries.append(_format(list(view.values(row, column, metric).values()), metric, view.seeds))
        if averaged:
            entries.append(_format(list(view.averages(row).values()), AVERAGE, view.seeds))
        lines.append("| " + " | ".join(entries) + " |")
    return lines


def side_score_table(view: GridView) -> list[str]:
    """hit@5 / gold NLL / yes-no AUC / predicted-yes rate where each task has them, and the
    answers' length in characters beside "contains"."""
    several = len(view.train_tasks) > 1
    pairs = []
    for column in view.columns:
        sample = _original(view.experiment, column.eval_task) or next(
            (r["metrics"].get(column.eval_task, {}) for r in view.results.values() if r), {}
        )
        pairs += [(column, score) for score in SIDE_SCORES if score in sample]
        if "hit@5" in sample and "answer_chars" in sample:
            # Not a length-independent score but what "contains" moves with: the answer's length.
            pairs.append((column, "answer_chars"))
    if not pairs:
        return []
    headers = ["method"] + [f"{c.label(several)} {score}" for c, score in pairs]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    if any(_original(view.experiment, c.eval_task) for c, _ in pairs):
        entries = ["Original"]
        for column, score in pairs:
            metrics = _original(view.experiment, column.eval_task) or {}
            entries.append(_format([metrics[score]], score, 1) if score in metrics else "–")
        lines.append("| " + " | ".join(entries) + " |")
    for row in view.rows:
        entries = [view.label(row)]
        for column, score in pairs:
            entries.append(_format(list(view.values(row, column, score).values()), score, view.seeds))
        lines.append("| " + " | ".join(entries) + " |")
    return lines


def gate_table(view: GridView) -> list[str]:
    """The gate's mean weight on the frozen branch over the gold answers' tokens, per gated row:
    how much of each answer the base model's memory supplies (0.5 = both memories equally)."""
    several = len(view.train_tasks) > 1
    rows = {
        row: [_format(list(view.values(row, c, GATE_SCORE).values()), GATE_SCORE, view.seeds) for c in view.columns]
        for row in view.rows
    }
    rows = {row: entries for row, entries in rows.items() if any(e != "–" for e in entries)}
    if not rows:
        return []
    headers = ["method"] + [c.label(several) for c in view.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row, entries in rows.items():
        lines.append("| " + " | ".join([view.label(row), *entries]) + " |")
    return lines


GATE_NLL_LABELS = {
    "gate": "gate",
    "initial": "initial gate",
    "half": "50/50",
    "tuned_only": "tuned only",
    "frozen_only": "frozen only",
}


def gate_anatomy_table(view: GridView) -> list[str]:
    """From the cells' gate.json (`imsm experiment --inspect-gates`): per gated row and task, the
    gate's shape and the gold answers' NLL under it and its stand-ins, averaged over seeds, and
    beside them the vanilla twin's NLL on the same questions (from its per-question scores) where
    the grid has vanilla rows."""
    from imsm.experiment.gates import read_gate_report

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
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]

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

    for (row, column), tasks in groups.items():
        cells = [view.label(row), column.label(several), str(len(tasks)), average([t["frozen_weight"] for t in tasks])]
        for key in ("decisiveness", "moved", "specificity"):
            value = average([t[key] for t in tasks])
            initial = average([t.get(f"initial_{key}") for t in tasks])  # absent from older gate.json
            cells.append(value if key == "moved" else f"{value} ({initial})")
        cells += [average([t["gold_nll"].get(key) for t in tasks]) for key in GATE_NLL_LABELS]
        cells += [twin_nll(row, column)] if twins else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _test_cells(test: PairedTest, metric: str) -> tuple[str, str, str]:
    """Mean difference (in the metric's display scale), t and p, with dashes where undefined."""
    difference = "–" if math.isnan(test.mean_difference) else f"{_scale(metric, test.mean_difference):+.2f}"
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
    lines = []
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
            if not lines:
                lines = [
                    "| comparison | task (metric) | seeds | mean difference | t | p |",
                    "|---|---|---|---|---|---|",
                ]
            difference, t, p = _test_cells(test, metric)
            lines.append(f"| {label} | {name} | {test.n} | {difference} | {t} | {p} |")
    return lines


def _per_question_metric(task_name: str, columns: list[dict[str, list[Any]]]) -> str:
    """The paper's metric if it is scored per question; else (MCC, F1: corpus-level) accuracy."""
    metric = primary_metric(task_name)
    return metric if any(metric in c for c in columns) or not columns else "accuracy"


def question_table(view: GridView) -> list[str]:
    """Each compared pair (`GridView.comparisons`) question by question: every question's score averaged
    over the seeds both finished, then a paired t-test over questions, for the paper's metric and
    for the gold answer's NLL."""
    lines = []
    several = len(view.train_tasks) > 1
    for row, twin in view.comparisons():
        for column in view.columns:
            treated, control = view.questions(row, column), view.questions(twin, column)
            metric = _per_question_metric(column.eval_task, [*treated.values(), *control.values()])
            by_metric, seeds = paired_over_questions(treated, control, metric)
            by_nll, _ = paired_over_questions(treated, control, "gold_nll")
            if seeds == 0:
                continue
            if not lines:
                lines = [
                    "| comparison | task | questions × seeds | Δ metric | p | Δ gold NLL | p |",
                    "|---|---|---|---|---|---|---|",
                ]
            metric_difference, _, metric_p = _test_cells(by_metric, metric)
            nll_difference, _, nll_p = _test_cells(by_nll, "gold_nll")
            lines.append(
                f"| {view.label(row)} − {view.label(twin)} | {column.label(several)} ({metric}) | "
                f"{by_metric.n} × {seeds} | {metric_difference} | {metric_p} | {nll_difference} | {nll_p} |"
            )
    return lines


def _compared_against(view: GridView) -> str:
    pairs = view.comparisons()
    to_vanilla = any(json.loads(twin)["fusion"] == "none" for _, twin in pairs)
    to_imsm = any(json.loads(twin)["fusion"] != "none" for _, twin in pairs)
    parts = ["each gated row − its vanilla twin"] * to_vanilla
    parts += ["each variant − IMSM at its default gate settings"] * to_imsm
    return "; ".join(parts)


def _is_default_imsm(settings: dict[str, Any]) -> bool:
    from imsm.train.config import TrainConfig

    defaults = TrainConfig.__dataclass_fields__
    return settings["fusion"] == "imsm" and all(
        settings.get(option, defaults[option].default) == defaults[option].default for option in GATE_OPTIONS
    )


def _same_but_gate(vanilla: dict[str, Any], imsm: dict[str, Any]) -> bool:
    """Vanilla cells have no gate, so their gate settings do not matter for the pairing."""
    ignore = {"fusion", "cache_frozen", *GATE_OPTIONS}
    return all(vanilla.get(k) == v for k, v in imsm.items() if k not in ignore)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, panels, figsize=(max(6, 1.6 * columns + 2 * panels), 3.8), squeeze=False)
    return figure, list(axes[0])


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=100)
    temporary.replace(path)
    plt.close(figure)


def save_grid_plot(view: GridView, path: Path) -> None:
    """Each column's paper metric per row, the Original value as a black tick."""

    def values_of(row: str, column: Column) -> list[float]:
        metric = primary_metric(column.eval_task)
        return [_scale(metric, v) for v in view.values(row, column, metric).values()]

    def reference_of(column: Column) -> float | None:
        original, metric = _original(view.experiment, column.eval_task), primary_metric(column.eval_task)
        return _scale(metric, original[metric]) if original and metric in original else None

    figure, (axis,) = _figure(1, len(view.columns))
    _draw_bars(axis, view, view.columns, values_of, reference_of, primary_metric)
    axis.set_title(f"{view.name}: mean ± std over seeds (black line: Original)", fontsize=9)
    axis.legend(fontsize=7, ncols=2)
    _save(figure, path)


# What each kind of probe keeps of the base model, read without answer length or yes/no bias, and
# the sign that makes "higher = more kept": the gold answer's NLL (lower is better) for text
# answers, the yes/no AUC for yes/no questions.
RETENTION_SCORES = {
    "text": ("gold_nll", -1.0, "gold NLL, nats/token"),
    "yes_no": ("yes_no_auc", 100.0, "yes/no AUC, points"),
}


def _retention_score(task_name: str) -> tuple[str, float, str] | None:
    from imsm.tasks import get_task

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
        if score[0] in (_original(view.experiment, column.eval_task) or {}):
            panels[score[2]].append(column)
    if not panels:
        return False

    def values_of(row: str, column: Column) -> list[float]:
        name, sign, _ = _retention_score(column.eval_task)
        original = _original(view.experiment, column.eval_task)[name]
        return [sign * (v - original) for v in view.values(row, column, name).values()]

    figure, axes = _figure(len(panels), sum(len(c) for c in panels.values()))
    for axis, (unit, columns) in zip(axes, panels.items(), strict=True):
        _draw_bars(axis, view, columns, values_of, lambda column: 0.0, lambda task, unit=unit: unit)
        axis.set_title("change from the Original (below 0 = forgotten)", fontsize=9)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not on them
    figure.suptitle(f"{view.name}: what the probes keep, mean ± std over seeds", fontsize=9)
    _save(figure, path)
    return True


def provenance(experiment: Experiment, commands: list[str]) -> list[str]:
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
        lines += provenance(experiment, commands)
    if discussion:
        lines += [discussion.strip(), ""]
    total_missing = []
    for name in experiment.grids:
        view = GridView(experiment, name)
        lines += [f"## {name}", ""]
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
            lines += [f"Paired t-tests ({_compared_against(view)}, same seeds; two-sided):", ""] + tests + [""]
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
        total_missing += missing
        if missing:
            lines += [f"Missing ({len(missing)} of {len(view.cells)} cells): " + ", ".join(missing[:12])]
            lines += ["" if len(missing) <= 12 else f"... and {len(missing) - 12} more", ""]
    missing_original = [t for t in experiment.original if _original(experiment, t) is None]
    if missing_original:
        lines += [f"Original row missing for: {', '.join(missing_original)}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _relative(path: Path, base: Path) -> tuple[str, ...]:
    import os

    return tuple(Path(os.path.relpath(path.resolve(), base.resolve())).parts)
