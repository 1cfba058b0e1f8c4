"""The experiment file: shared settings plus named grids, expanded into cells and checked whole.

    name: paper-tables
    results: docs/results/experiments/paper   # per-cell JSON (small; meant to be committed)
    work: runs/experiments/paper              # adapters and checkpoints (large; git-ignored)
    model: smollm2-135m
    data_dir: ../shared/data                  # optional (else $IMSM_DATA_DIR)
    train: {limit: 256, epochs: 3}            # any `imsm train` option, shared by every cell
    method_options: {lora: {learning_rate: 1e-3}}   # per peft method, over `train`
    task_options: {ropes: {limit: 64}}              # per training task, over both
    eval: {limit: 200, batch_size: 16, limits: {freebaseqa: 300}}  # unset: as `imsm eval`
                                              # also: generate: false, no_generate: [gsm8k]
    original: [mrpc, cola, ropes]             # the base model's row: these tasks, untrained
    grids:
      table1:                                 # every combination of the listed values
        task: [mrpc, cola, ropes]
        peft: [lora, ia3]
        fusion: [none, imsm]
        seed: [0, 1, 2]
        evaluate: [target]                    # "target" = the cell's own training task
      posthoc:
        task: [mrpc]
        fusion: [none]
        evaluate: [target, arc_easy]
        variants: [{}, {step: 60}, {adapter_scale: 0.5}, {fusion: mean}]   # see experiment/variants.py
    frontier: {baselines: [{adapter_scale: 0.5}]}   # optional: how `imsm frontier` names and compares arms

A grid axis is any `imsm train` option (task, peft, fusion, seed, gate_rank, learning_rate, ...).
A cell is one resolved training config; cells that several grids share (say, gate rank 8 in a
rank sweep and in the main table) are trained once and evaluated on the union of what the grids
ask. Every problem in the file is reported at once, before anything runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imsm.cli.options import (
    DEFAULT_MODEL,
    check_options,
    eval_batch_size_option,
    eval_limit_option,
    generate_option,
    likelihood_option,
    max_new_tokens_option,
    option,
)
from imsm.config import GATED_FUSIONS
from imsm.errors import IMSMError
from imsm.experiment.frontier_settings import FrontierSettings, metric_evaluation_problem, read_frontier
from imsm.experiment.variants import Variant, parse_variants
from imsm.peft_methods.builders import PEFT_METHODS
from imsm.tasks import get_task
from imsm.train.config import TrainConfig
from imsm.yaml_file import read_yaml_mapping

TOP_LEVEL = {
    "name",
    "results",
    "work",
    "model",
    "data_dir",
    "train",
    "method_options",
    "task_options",
    "eval",
    "original",
    "grids",
    "frontier",
}
# Options a grid may not set: the runner owns them.
RUNNER_OWNED = {"output", "resume", "overwrite", "model", "data_dir", "frozen_cache_dir"}
# Fields that do not change what a cell computes, so they are left out of its identity.
NOT_IDENTITY = {
    "output", "resume", "overwrite", "checkpoint_every", "data_dir", "snapshot_steps", "frozen_cache_dir",
    "gradient_checkpointing",  # the same gradients, recomputed: memory, not numbers
}  # fmt: skip
GRID_KEYS = {"evaluate", "variants"}  # what a grid may hold besides `imsm train` options
# The peft methods whose change `adapter_scale` scales exactly (imsm.model.adapter_scale).
SCALABLE_METHODS = ("lora", "adalora", "ia3", "loramoe")
TARGET = "target"
GATE_OPTIONS = ("gate_rank", "gate_dropout", "gate_learning_rate")


@dataclass
class EvalSettings:
    """The `eval:` section: how the cells and the original row are evaluated. The options it shares
    with `imsm eval` are the same fields, defaults included."""

    limit: int | None = eval_limit_option()
    limits: dict[str, int] = option(default_factory=dict, help="per-task limit, over limit")
    batch_size: int = eval_batch_size_option()
    max_new_tokens: int | None = max_new_tokens_option()
    likelihood: bool = likelihood_option()
    generate: bool = generate_option()
    no_generate: list[str] = option(
        default_factory=list, help="generated-answer tasks evaluated without generation, over generate"
    )

    def __post_init__(self) -> None:
        check_options(self)
        if not isinstance(self.limits, dict):
            raise IMSMError(f"limits must map a task to its limit, e.g. {{ropes: 60}}, got {self.limits!r}")
        for task, limit in self.limits.items():
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise IMSMError(f"limits.{task} must be a positive integer, got {limit!r}")
        if not isinstance(self.no_generate, list) or not all(isinstance(t, str) for t in self.no_generate):
            raise IMSMError(f"no_generate must list task names, e.g. [gsm8k], got {self.no_generate!r}")
        if not self.likelihood and (not self.generate or self.no_generate):
            raise IMSMError(
                "a task evaluated without generation has only the likelihood pass, which likelihood: false turns "
                "off; drop one of them"
            )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def limit_for(self, task: str) -> int | None:
        return self.limits.get(task, self.limit)

    def generates(self, task: str) -> bool:
        """Whether a generated-answer task's answers are generated (multiple choice and drift never are)."""
        return self.generate and task not in self.no_generate


@dataclass
class Cell:
    """One training run and the tasks it is evaluated on."""

    config: dict[str, Any]  # TrainConfig fields, without output
    evaluate: list[str] = field(default_factory=list)  # tasks for the adapter as trained
    grids: list[str] = field(default_factory=list)
    variants: dict[str, list[str]] = field(default_factory=dict)  # other variants' keys -> their tasks

    @property
    def snapshot_steps(self) -> list[int]:
        """The optimizer steps at which training must keep the adapter, for the `step` variants."""
        steps = {Variant.from_key(key).step for key in self.variants}
        return sorted(step for step in steps if step is not None)

    def evaluations(self) -> list[tuple[Variant, str]]:
        """Every (variant, task) this cell is evaluated on, the adapter as trained first."""
        pairs = [(Variant(), task) for task in self.evaluate]
        return pairs + [(Variant.from_key(key), task) for key, tasks in self.variants.items() for task in tasks]

    @property
    def key(self) -> str:
        identity = {k: v for k, v in sorted(self.config.items()) if k not in NOT_IDENTITY}
        return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        c = self.config
        parts = [Path(str(c["task"])).stem, c["peft"], c["fusion"], f"r{c['gate_rank']}", f"s{c['seed']}"]
        return "-".join(str(p) for p in parts) + f"-{self.key}"


@dataclass
class Experiment:
    name: str
    path: Path
    results: Path
    work: Path
    model: str
    data_dir: str | None
    train: dict[str, Any]
    method_options: dict[str, dict[str, Any]]
    task_options: dict[str, dict[str, Any]]
    eval: dict[str, Any]  # as written: what RESULTS/experiment.json records and the report shows
    original: list[str]
    grids: dict[str, dict[str, Any]]
    cells: list[Cell]
    eval_options: EvalSettings = field(default_factory=EvalSettings)  # `eval`, checked, defaults filled in
    frontier: FrontierSettings = field(default_factory=FrontierSettings)  # how `imsm frontier` reads the grids

    def shared_settings(self) -> dict[str, Any]:
        """What every cell's numbers depend on; a results directory keeps to one set of them.
        Options that change no number (how often to checkpoint, say) are left out, so they can be
        changed between sessions of a long grid."""

        def numbers_only(options: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in options.items() if k not in NOT_IDENTITY}

        return {
            "model": self.model,
            "train": numbers_only(self.train),
            "method_options": {k: numbers_only(v) for k, v in self.method_options.items()},
            "task_options": {k: numbers_only(v) for k, v in self.task_options.items()},
            "eval": self.eval,
        }

    def eval_limit(self, task: str) -> int | None:
        return self.eval_options.limit_for(task)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _option_table(raw, field_name, kind, problems, train_fields, lookup) -> dict[str, dict[str, Any]]:
    """`method_options` / `task_options`: name -> `imsm train` options, each name and option checked."""
    table = raw.get(field_name) or {}
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        problems.append(f"{field_name}: must map a {kind} to a mapping of `imsm train` options")
        return {}
    for name, options in table.items():
        try:
            lookup(str(name))
        except IMSMError as error:
            problems.append(f"{field_name}: {error}")
        for key in sorted(set(options) - train_fields):
            problems.append(f"{field_name}.{name}: unknown option {key!r}")
    return table


def is_dora(config: dict[str, Any]) -> bool:
    """Whether a cell trains DoRA, as a method of its own or as LoRA with use_dora."""
    return config["peft"] == "dora" or bool((config.get("peft_options") or {}).get("use_dora"))


def can_scale(config: dict[str, Any]) -> bool:
    """Whether `adapter_scale` can scale the change of the adapter a cell trains."""
    return not is_dora(config) and config["peft"] in SCALABLE_METHODS


def _variant_problem(variants: list[Variant], config: dict[str, Any]) -> str | None:
    """Why a cell trained with `config` cannot give one of `variants`, or None."""
    for variant in variants:
        if variant.fusion in GATED_FUSIONS and variant.fusion != config["fusion"]:
            trained = config["fusion"]
            return f"variant fusion {variant.fusion!r} needs a gate trained that way; the cell trains {trained!r}"
        dora = is_dora(config)
        if variant.adapter_scale != 1.0 and not can_scale(config):
            method = "dora" if dora else config["peft"]
            return f"adapter_scale cannot scale a {method} adapter (it scales {', '.join(SCALABLE_METHODS)})"
        if variant.intruders is not None and (dora or config["peft"] != "lora"):
            method = "dora" if dora else config["peft"]
            return f"intruders (peft's reduce_intruder_dimension) reduces vanilla lora adapters only, not {method}"
        if variant.intruders is not None and variant.adapter_scale != 1.0:
            return "intruders and adapter_scale are two mitigations; give a variant one of them"
    return None


def read_experiment_file(path: Path) -> dict[str, Any]:
    """The experiment file's YAML as a mapping, or an IMSMError that says what is wrong with the file."""
    return read_yaml_mapping(path, "experiment file", "(name, results, grids, ...)")


@dataclass
class CheckedSettings:
    """What `check_settings` makes of the sections other than the grids."""

    train: dict[str, Any]
    eval: dict[str, Any]
    eval_options: EvalSettings
    method_options: dict[str, dict[str, Any]]
    task_options: dict[str, dict[str, Any]]
    original: list[str]
    frontier: FrontierSettings


def _task_problem(name: Any, where: str, generated: bool = False) -> str | None:
    """Why `name` is no task (or, with `generated`, no task that generates answers), or None."""
    try:
        kind = get_task(str(name)).answer_type
    except IMSMError as error:
        return f"{where}: {error}"
    if generated and kind in ("multiple_choice", "drift"):
        return f"{where}: {name} is a {kind} task, which never generates; list generated-answer tasks only"
    return None


def check_settings(raw: dict[str, Any], problems: list[str]) -> CheckedSettings:
    """Every section but the grids, checked; problems are appended, not raised."""
    for key in sorted(set(raw) - TOP_LEVEL):
        problems.append(f"unknown field {key!r} (known: {', '.join(sorted(TOP_LEVEL))})")
    train_fields = set(TrainConfig.field_names())
    train = raw.get("train") or {}
    eval_settings = raw.get("eval") or {}
    if not isinstance(train, dict):
        problems.append("train: must be a mapping of `imsm train` options")
        train = {}
    if not isinstance(eval_settings, dict):
        problems.append(f"eval: must be a mapping ({', '.join(EvalSettings.field_names())})")
        eval_settings = {}
    for key in sorted(set(train) - train_fields):
        problems.append(f"train: unknown option {key!r}")
    for key in sorted(set(train) & RUNNER_OWNED):
        problems.append(f"train: {key!r} is set by the experiment itself, not per run")
    method_options = _option_table(raw, "method_options", "peft method", problems, train_fields, PEFT_METHODS.get)
    task_options = _option_table(raw, "task_options", "training task", problems, train_fields, get_task)
    eval_fields = EvalSettings.field_names()
    for key in sorted(set(eval_settings) - set(eval_fields)):
        problems.append(f"eval: unknown option {key!r} (known: {', '.join(sorted(eval_fields))})")
    eval_options = EvalSettings()
    try:
        known = {k: v for k, v in eval_settings.items() if k in eval_fields and v is not None}
        eval_options = EvalSettings(**known)
    except IMSMError as error:
        problems.append(f"eval: {error}")
    original = [str(t) for t in _as_list(raw.get("original") or [])]
    tasks = [(task, "eval.limits") for task in eval_options.limits] + [(task, "original") for task in original]
    problems += [problem for task, where in tasks if (problem := _task_problem(task, where))]
    problems += [p for task in eval_options.no_generate if (p := _task_problem(task, "eval.no_generate", True))]
    frontier = read_frontier(raw.get("frontier"), problems)
    return CheckedSettings(train, eval_settings, eval_options, method_options, task_options, original, frontier)


def _grid_axes(grid: dict[str, Any], where: str, train: dict[str, Any], problems: list[str]) -> dict[str, list] | None:
    """A grid's axes (option -> values), each option and value checked; None where no cell can be made."""
    train_fields = set(TrainConfig.field_names())
    axes = {k: _as_list(v) for k, v in grid.items() if k not in GRID_KEYS}
    bad_axes = sorted(set(axes) - train_fields)
    problems += [f"{where}: unknown option {axis!r}" for axis in bad_axes]
    problems += [
        f"{where}: {axis!r} is set by the experiment itself, not per grid" for axis in sorted(set(axes) & RUNNER_OWNED)
    ]
    no_task = "task" not in axes and "task" not in train
    if no_task:
        problems.append(f"{where}: no training task; add task: [...]")
    for method in axes.get("peft", []):
        try:
            PEFT_METHODS.get(str(method))
        except IMSMError as error:
            problems.append(f"{where}: {error}")
    evaluated = [(t, where) for t in axes.get("task", [])]
    evaluated += [(t, f"{where}.evaluate") for t in _as_list(grid.get("evaluate", [TARGET])) if t != TARGET]
    problems += [problem for task, here in evaluated if (problem := _task_problem(task, here))]
    return None if bad_axes or no_task else axes


def _add_problem(problems: list[str], problem: str) -> None:
    """One problem that many cells of a grid share, said once."""
    if problem not in problems:
        problems.append(problem)


def expand_grids(grids: dict[str, Any], settings: CheckedSettings, model: str, problems: list[str]) -> list[Cell]:
    """Every grid's cells, resolved into `imsm train` configs; cells that several grids share are
    merged, evaluated on the union of what the grids ask. Problems are appended, not raised."""
    defaults = TrainConfig(task="-", output="-").to_dict()
    train = settings.train
    cells: dict[str, Cell] = {}
    for grid_name, grid in grids.items():
        where = f"grids.{grid_name}"
        if not isinstance(grid, dict):
            problems.append(f"{where}: must be a mapping of option -> value or list of values")
            continue
        evaluate = [str(t) for t in _as_list(grid.get("evaluate", [TARGET]))]
        variants = parse_variants(grid.get("variants"), where, problems)
        axes = _grid_axes(grid, where, train, problems)
        if axes is None:
            continue
        for values in itertools.product(*axes.values()):
            chosen = dict(zip(axes, values, strict=True))
            # Per-method options sit between the shared ones and what the grid sets explicitly.
            per_method = settings.method_options.get(str(chosen.get("peft", train.get("peft", "lora"))), {})
            per_task = settings.task_options.get(str(chosen.get("task", train.get("task"))), {})
            try:
                resolved = TrainConfig(output="-", **{**train, **per_method, **per_task, **chosen, "model": model})
            except (IMSMError, TypeError) as error:
                _add_problem(problems, f"{where}: {error}")
                continue
            resolved = resolved.to_dict()
            resolved.pop("output")
            if resolved["fusion"] == "none":  # no gate: its options must not split identical runs
                resolved.update({k: defaults[k] for k in GATE_OPTIONS})
            variant_problem = _variant_problem(variants, resolved)
            if variant_problem:
                _add_problem(problems, f"{where}: {variant_problem}")
                continue
            cell = Cell(resolved)
            targets = [str(resolved["task"]) if t == TARGET else t for t in evaluate]
            existing = cells.setdefault(cell.key, cell)
            for variant in variants:
                listed = existing.evaluate if variant.is_default else existing.variants.setdefault(variant.key, [])
                listed += [t for t in targets if t not in listed]
            existing.grids += [grid_name] if grid_name not in existing.grids else []
    return list(cells.values())


def _baseline_problems(frontier: FrontierSettings, cells: list[Cell]) -> list[str]:
    """Each declared baseline that no vanilla cell is evaluated as: its results could never come."""
    read = {key for cell in cells if cell.config["fusion"] == "none" for key in cell.variants}
    return [
        f"frontier.baselines[{i}]: no grid reads a vanilla adapter (fusion none) as "
        f"{{{baseline.variant_key.replace('=', ': ').replace(',', ', ')}}}; add it to a grid's variants"
        for i, baseline in enumerate(frontier.baselines)
        if baseline.variant_key not in read
    ]


def _metric_problems(settings: CheckedSettings, cells: list[Cell]) -> list[str]:
    """The file's `frontier.metric` where the evaluation never gives a training task that score."""
    metric, options = settings.frontier.metric, settings.eval_options
    tasks = dict.fromkeys(str(cell.config["task"]) for cell in cells) if metric else {}
    found = [metric_evaluation_problem(metric, t, options.generates(t), options.likelihood) for t in tasks]
    return [f"frontier.metric: {problem}" for problem in dict.fromkeys(found) if problem]


def load_experiment(path: str | Path) -> Experiment:
    """Read, check and expand an experiment file; raise one IMSMError listing every problem."""
    path = Path(path)
    raw = read_experiment_file(path)
    problems: list[str] = []
    settings = check_settings(raw, problems)
    grids = raw.get("grids")
    if not isinstance(grids, dict) or not grids:
        problems.append("grids: give at least one named grid, e.g. grids: {main: {task: [mrpc], peft: [lora]}}")
        grids = {}
    model = str(raw.get("model", DEFAULT_MODEL))
    cells = expand_grids(grids, settings, model, problems)
    if cells:
        problems += _baseline_problems(settings.frontier, cells) + _metric_problems(settings, cells)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise IMSMError(f"experiment file {str(path)!r} has {len(problems)} problem(s):\n{listing}")
    name = str(raw.get("name", path.stem))
    return Experiment(
        name=name,
        path=path,
        results=Path(raw.get("results", f"runs/experiments/{name}/results")),
        work=Path(raw.get("work", f"runs/experiments/{name}/work")),
        model=model,
        data_dir=raw.get("data_dir"),
        train=settings.train,
        method_options=settings.method_options,
        task_options=settings.task_options,
        eval=settings.eval,
        original=settings.original,
        grids=grids,
        cells=cells,
        eval_options=settings.eval_options,
        frontier=settings.frontier,
    )
