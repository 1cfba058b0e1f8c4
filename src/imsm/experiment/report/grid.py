"""One grid of an experiment seen as a table: which cells make each row and column, and their values.

A row is a setting without its task and seed (peft method, fusion, gate rank, ...); a column is an
evaluated task, of each row's own training task or of a probe it was trained before. Values are
read from the cells' result.json; display scale (% for proportions) is decided here too, so the
tables and the plots agree.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imsm.experiment.frontier_settings import DEFAULT_LABELS
from imsm.experiment.runner import read_cell_result, read_original_row
from imsm.experiment.spec import GATE_OPTIONS, GRID_KEYS, TARGET, Cell, Experiment
from imsm.tasks import get_task
from imsm.train.config import TrainConfig

METHOD_LABELS = {"lora": "LoRA", "ia3": "(IA)3", "adalora": "AdaLoRA", "dora": "DoRA", "loramoe": "LoRAMoE"}
# Shown as they are; every other score is a proportion shown in %, and MCC x 100 as the paper does.
# The paper's "Avg." over a row's columns, already in display scale.
AVERAGE = "avg."
# Per-token log-likelihood scores in nats (lower is better, except the gold option's log-likelihood).
NATS = {"gold_nll", "gold_log_likelihood", "drift_nll", "drift_kl"}
UNSCALED = {*NATS, "answer_chars", AVERAGE}


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
    return get_task(task_name).metrics[0]


def in_average(metric: str) -> bool:
    """Whether a column scored by `metric` enters the paper's "Avg." (proportions do, nats do not)."""
    return metric not in NATS


def scale(metric: str, value: float) -> float:
    """`value` in display scale: proportions in %, the rest as they are."""
    return value if metric in UNSCALED else 100 * value


def row_label(settings: dict[str, Any], varying: list[str]) -> str:
    method = METHOD_LABELS.get(settings["peft"], settings["peft"])
    label = DEFAULT_LABELS[settings["fusion"]].format(method=method)
    fixed = ("peft", "fusion", "task", "seed", *(GATE_OPTIONS if settings["fusion"] == "none" else ()))
    extras = [f"{axis}={settings[axis]}" for axis in varying if axis not in fixed]
    return label + (f" [{', '.join(extras)}]" if extras else "")


def original_metrics(experiment: Experiment, task: str) -> dict[str, float] | None:
    """The untrained model's metrics on `task` (the tables' "Original" row), if evaluated."""
    row = read_original_row(experiment, task)  # a damaged file is refused with the fix
    return None if row is None else row["metrics"]


class GridView:
    """One grid's cells, grouped into rows (settings without task and seed) and columns."""

    def __init__(self, experiment: Experiment, name: str):
        self.experiment, self.name = experiment, name
        grid = experiment.grids[name]
        self.cells: list[Cell] = [c for c in experiment.cells if name in c.grids]
        # `evaluate` and `variants` are lists but no axis: they make no cells of their own.
        self.varying = [axis for axis, values in grid.items() if axis not in GRID_KEYS and isinstance(values, list)]
        # An axis of one value splits no rows, so it goes in the grid's header, not in every row's label.
        self.labelled = [axis for axis in self.varying if len(grid[axis]) > 1]
        self.shared = {
            axis: values[0] if isinstance(values, list) else values
            for axis, values in grid.items()
            if axis not in GRID_KEYS and axis not in ("seed", "task") and axis not in self.labelled
        }
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
        the seeds that have every column. Columns scored in nats (drift) are left out: a mean of
        percentages and nats would mean nothing."""
        per_column = []
        for column in self.columns:
            metric = primary_metric(column.eval_task)
            if not in_average(metric):
                continue
            per_column.append({seed: scale(metric, v) for seed, v in self.values(row, column, metric).items()})
        seeds = set.intersection(*(set(values) for values in per_column)) if per_column else set()
        return {seed: sum(values[seed] for values in per_column) / len(per_column) for seed in sorted(seeds)}

    def label(self, row: str) -> str:
        return row_label(self.rows[row][0].config, self.labelled)

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


def _is_default_imsm(settings: dict[str, Any]) -> bool:
    defaults = TrainConfig.__dataclass_fields__
    return settings["fusion"] == "imsm" and all(
        settings.get(option, defaults[option].default) == defaults[option].default for option in GATE_OPTIONS
    )


def _same_but_gate(vanilla: dict[str, Any], imsm: dict[str, Any]) -> bool:
    """Vanilla cells have no gate, so their gate settings do not matter for the pairing."""
    ignore = {"fusion", "cache_frozen", *GATE_OPTIONS}
    return all(vanilla.get(k) == v for k, v in imsm.items() if k not in ignore)
