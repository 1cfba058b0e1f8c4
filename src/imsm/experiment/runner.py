"""`imsm experiment`: train and evaluate every cell of an experiment, resumably.

Layout (results: small JSON meant for git; work: adapters and checkpoints):

    RESULTS/experiment.json              the shared settings every number depends on
    RESULTS/original/<task>.json         the base model on each task of `original`
    RESULTS/cells/<cell>/result.json     settings, training summary, metrics per evaluated task,
                                         and every question's scores (`questions`, by column);
                                         each other variant's the same under `variants.<key>`
    WORK/<cell>/                         the training run directory (adapter, checkpoints), and
                                         eval.TASK.jsonl: every example's prompt, answer and scores
    WORK/.claims/<cell>.lock             held by the worker running the cell
    WORK/frozen-states/<model>/<task>.safetensors
                                         the frozen branch's states for scoring, shared by every
                                         cell and variant on that base model

A cell's result is written the moment it finishes, and a finished cell is skipped. A cell whose
training died resumes from its last checkpoint; a cell whose training finished but whose
evaluation did not, only re-evaluates the missing tasks. Several workers (`imsm experiment` started
more than once on one config, e.g. one per GPU) share the grid: each takes the next cell no
other worker holds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from imsm.atomic_write import write_atomically
from imsm.checked_files import read_json
from imsm.cli.model_options import ModelOptions
from imsm.config import IMSMConfig
from imsm.data import load_examples, resolve_data_dir
from imsm.errors import IMSMError
from imsm.evaluation import run as evaluate  # called through the module, so tests can stand in for `evaluate_task`
from imsm.evaluation.frozen_states import FrozenStateStore
from imsm.evaluation.journal import directory_digest
from imsm.experiment.cell_result import evaluated_part, journal_stem, keep_provenance, reuse_evaluation, unreduced_twin
from imsm.experiment.claim import claimed
from imsm.experiment.questions import question_columns
from imsm.experiment.spec import Cell, Experiment
from imsm.experiment.variants import Variant
from imsm.model.load import load_model_and_tokenizer
from imsm.model.siamese import IMSMModel
from imsm.model.variant import load_evaluated_model
from imsm.prompting import PromptFormatter
from imsm.provenance import describe_machine, now, provenance_header
from imsm.tasks import get_task
from imsm.train import run as training  # called through the module, so tests can stand in for `train`
from imsm.train.checkpoint import latest_checkpoint
from imsm.train.config import TrainConfig
from imsm.train.loop import snapshot_directory
from imsm.train.run_directory import SUMMARY, finished_summary

SETTINGS = "experiment.json"
RESULT = "result.json"


def check_results_directory(experiment: Experiment) -> None:
    """Refuse to mix results obtained under other shared settings; record them otherwise."""
    settings = json.loads(json.dumps(experiment.shared_settings(), default=str))
    marker = experiment.results / SETTINGS
    if marker.exists():
        fix = "restore it (e.g. from git), or delete it if every result there was made with the current settings"
        changed = _differences(settings, read_json(marker, fix=fix, keys=("settings",))["settings"])
        if changed:
            raise IMSMError(
                f"results directory {str(experiment.results)!r} holds results made with other settings "
                f"({', '.join(changed)} differ); use another `results:` directory or restore the settings"
            )
        return
    experiment.results.mkdir(parents=True, exist_ok=True)
    write_atomically(marker, json.dumps({"experiment": experiment.name, "settings": settings}, indent=2) + "\n")


def _differences(new: Any, old: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two nested mappings."""
    if isinstance(new, dict) and isinstance(old, dict):
        return [
            d
            for key in sorted(set(new) | set(old))
            for d in _differences(new.get(key), old.get(key), f"{prefix}{key}.")
        ]
    return [] if new == old else [prefix.rstrip(".")]


def original_path(experiment: Experiment, task: str) -> Path:
    # A spec path names its file by the spec's stem; a registry name is its own stem.
    return experiment.results / "original" / f"{Path(task).stem}.json"


def claim_path(experiment: Experiment, name: str) -> Path:
    return experiment.work / ".claims" / f"{name}.lock"


def cell_result_path(experiment: Experiment, cell: Cell) -> Path:
    return experiment.results / "cells" / cell.name / RESULT


def _read_result(path: Path) -> dict[str, Any] | None:
    # A damaged result is refused, not silently recomputed: that would hide what damaged it.
    return read_json(path, fix=f"delete {path} to recompute it") if path.exists() else None


def read_cell_result(experiment: Experiment, cell: Cell) -> dict[str, Any] | None:
    return _read_result(cell_result_path(experiment, cell))


def read_original_row(experiment: Experiment, task: str) -> dict[str, Any] | None:
    """The base model's result on `task`, None while it is missing."""
    return _read_result(original_path(experiment, task))


def evaluations_left(experiment: Experiment, cell: Cell) -> list[tuple[Variant, str]]:
    """The (variant, task) evaluations of `cell` whose metrics its result does not hold yet."""
    result = read_cell_result(experiment, cell) or {}
    return [(v, task) for v, task in cell.evaluations() if task not in evaluated_part(result, v).get("metrics", {})]


def is_done(experiment: Experiment, cell: Cell) -> bool:
    return cell_result_path(experiment, cell).exists() and not evaluations_left(experiment, cell)


def cell_state(experiment: Experiment, cell: Cell) -> str:
    """ "done", "running" (a worker holds its claim) or "to run"."""
    if is_done(experiment, cell):
        return "done"
    lock = claim_path(experiment, cell.name)
    if not lock.exists():
        return "to run"
    with claimed(lock) as free:
        return "to run" if free else "running"


def result_text(result: dict[str, Any]) -> str:
    """Indented JSON, except the per-question columns: one line per task instead of one per number."""
    rest = {k: v for k, v in result.items() if k != "questions"}
    text = json.dumps(rest, indent=2, default=str)
    questions = result.get("questions")
    if questions is None:
        return text + "\n"
    tasks = ",\n".join(f"    {json.dumps(t)}: {json.dumps(c, separators=(',', ':'))}" for t, c in questions.items())
    block = f'"questions": {{\n{tasks}\n  }}' if questions else '"questions": {}'
    head = text[:-1].rstrip()  # the object without its closing brace
    return head + ("," if rest else "") + f"\n  {block}\n}}\n"


def _evaluate(
    experiment: Experiment, model, tokenizer, name: str, data_dir, journal: Path, settings, frozen_states=None
) -> dict[str, Any]:
    """One task's summary, with its per-question scores under "questions". Finished batches are
    journaled in `journal` (WORK/.../eval.TASK.partial.jsonl, which the caller removes once the
    summary is kept); the full per-example rows (prompt, prediction, golds, scores) go beside it as
    eval.TASK.jsonl. `frozen_states`: the study's store of the frozen branch's states (one object
    per loaded model, so the base weights are fingerprinted once)."""
    task = get_task(name)
    records = load_examples(task, None, data_dir, experiment.eval_limit(name))
    result = evaluate.evaluate_task(
        model,
        PromptFormatter.for_tokenizer(tokenizer, task.chat_template_setting("auto")),
        task,
        records,
        task.eval_split,
        experiment.eval_options.batch_size,
        experiment.eval_options.max_new_tokens,
        likelihood=experiment.eval_options.likelihood,
        journal_path=journal,
        run_settings=settings,
        frozen_states=frozen_states,
        generate=experiment.eval_options.generates(name),
    )
    rows = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.examples)
    journal.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(journal.with_name(journal.name.replace(".partial.jsonl", ".jsonl")), rows)
    return {**result.summary(), "questions": question_columns(result.examples)}


def run_original(experiment: Experiment, data_dir, log) -> None:
    """The base model's row: each task of `original`, once."""
    missing = [t for t in experiment.original if read_original_row(experiment, t) is None]
    if not missing:
        return
    log(f"original: evaluating the untrained model on {', '.join(missing)}")
    model = tokenizer = None
    for task in missing:
        path = original_path(experiment, task)
        with claimed(claim_path(experiment, f"original-{Path(task).stem}")) as mine:
            if not mine or path.exists():
                log(f"original: {task} is another worker's")
                continue
            if model is None:
                base, tokenizer = load_model_and_tokenizer(experiment.model, experiment.train.get("dtype", "auto"))
                model = IMSMModel(base, IMSMConfig(fusion="none")).eval()
            journal = experiment.work / f"original.{Path(task).stem}.partial.jsonl"
            summary = _evaluate(experiment, model, tokenizer, task, data_dir, journal, {"model": experiment.model})
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, result_text(provenance_header(task=task, model=experiment.model, **summary)))
            journal.unlink(missing_ok=True)


FROZEN_MEMORIES = "frozen-memories"
# Every cell and variant evaluated on the same base model reads one set of the frozen branch's
# states for scoring (imsm.evaluation.frozen_states): a gated cell after the first costs a vanilla one.
FROZEN_STATES = "frozen-states"


def _train(experiment: Experiment, cell: Cell, data_dir, log) -> Path:
    """Train the cell's adapter, or resume it, or reuse a finished run; return its directory."""
    run = experiment.work / cell.name
    if not (run / SUMMARY).exists():
        resume = latest_checkpoint(run) is not None
        config = TrainConfig(
            **{
                **cell.config,
                "output": str(run),
                "data_dir": str(data_dir) if data_dir else None,
                "snapshot_steps": cell.snapshot_steps or None,
                # Every cell on the same base model and training examples reads one set of frozen memories.
                "frozen_cache_dir": str(experiment.work / FROZEN_MEMORIES),
                "resume": resume,
                "overwrite": not resume,
            }
        )
        log(f"{cell.name}: {'resuming' if resume else 'training'}")
        training.train(config)
    return run


def _adapter_for(run: Path, variant: Variant, summary: dict[str, Any]) -> Path:
    """The adapter directory a variant reads: a snapshot for `step`, else the final adapter."""
    if variant.step is None:
        return run
    if variant.step > summary["steps"]:
        raise IMSMError(
            f"{run.name}: variant step={variant.step} is past the run's last step ({summary['steps']}); "
            "choose a step within the training run"
        )
    snapshot = snapshot_directory(run, variant.step)
    if not snapshot.is_dir():
        raise IMSMError(
            f"{run.name}: no snapshot at step {variant.step} in {snapshot.parent} (the run was trained before the "
            f"variant was added); delete {run} to retrain the cell with its snapshots"
        )
    return snapshot


def run_cell(experiment: Experiment, cell: Cell, data_dir, log, train_only: bool = False) -> dict[str, Any] | None:
    """Train (or resume, or reuse) the cell's adapter, evaluate what is missing, write result.json.
    With `train_only`, stop after training (the evaluations can run later, or on another machine)."""
    run = _train(experiment, cell, data_dir, log)
    if train_only:
        return None
    summary = finished_summary(run)
    result = {
        "cell": cell.name,
        "grids": cell.grids,
        "settings": cell.config,
        "trainable_parameters": summary["resolved"]["trainable_parameters"],
        "training": {
            k: summary.get(k)
            for k in ("steps", "final_loss", "seconds", "frozen_cache_seconds", "frozen_cache_read", "tokens_per_s")
        }
        | {"trained": summary.get("created"), "machine": summary.get("machine")},
        "examples": summary["resolved"]["examples"],
        "metrics": {},
        "evaluation": {},
        "questions": {},
    }
    previous = read_cell_result(experiment, cell) or {}
    keep_provenance(previous, result)
    for key in ("metrics", "evaluation", "questions"):
        result[key].update(previous.get(key, {}))
    if cell.variants or previous.get("variants"):
        result["variants"] = previous.get("variants", {})
    path = cell_result_path(experiment, cell)
    first_written = previous.get("created")

    def write_result() -> None:
        header = provenance_header()  # this write's machine, versions and time
        result.update(header, updated=header["created"])  # "updated": the name earlier result files use
        result["created"] = first_written or header["created"]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, result_text(result))

    missing: dict[Variant, list[str]] = {}
    for variant, task in cell.evaluations():
        if task not in evaluated_part(result, variant).get("metrics", {}):
            missing.setdefault(variant, []).append(task)
    if not missing:
        write_result()
        return result
    adapters = {variant: _adapter_for(run, variant, summary) for variant in missing}  # all checked first
    for variant, tasks in missing.items():
        label = f"{cell.name}{' [' + variant.key + ']' if variant.key else ''}"
        log(f"{label}: evaluating on {', '.join(tasks)}")
        # Loaded afresh per variant: a scaled or reduced adapter is changed in place.
        variant_options = ModelOptions(
            model=cell.config["model"],
            adapter=adapters[variant],
            fusion=variant.fusion,
            adapter_scale=variant.adapter_scale,
            reduce_intruders=variant.intruders,
            dtype=cell.config["dtype"],
        )
        model, tokenizer = load_evaluated_model(variant_options)
        settings = {"cell": cell.name, "adapter": directory_digest(adapters[variant]), "variant": variant.key}
        store = FrozenStateStore(experiment.work / FROZEN_STATES)
        if variant.is_default:
            target = result
        else:
            target = result["variants"].setdefault(variant.key, {"metrics": {}, "evaluation": {}, "questions": {}})
        same_as = unreduced_twin(result, variant, model, adapters[variant])
        for task in tasks:  # each task's result is kept as soon as it is in
            if same_as is not None and task in evaluated_part(result, same_as).get("metrics", {}):
                reuse_evaluation(result, target, same_as, variant, task, run)
                log(f"{label}: {task}: the reduction left the adapter bitwise as trained; its evaluation reused")
                write_result()
                continue
            journal = run / f"{journal_stem(variant, task)}.partial.jsonl"
            task_summary = _evaluate(experiment, model, tokenizer, task, data_dir, journal, settings, store)
            target["metrics"][task] = task_summary.pop("metrics")
            target["questions"][task] = task_summary.pop("questions")
            target["evaluation"][task] = {**task_summary, "machine": describe_machine(), "evaluated": now()}
            write_result()
            journal.unlink(missing_ok=True)
    return result


def _time_left(experiment: Experiment, todo: list[Cell], current: Cell, durations: list[float]) -> str:
    """Time left for the cells from `current` on that are not done, shared among this worker and the
    others that now hold a cell of `todo`: a rough guide, from this worker's own cells so far."""
    ahead = todo[todo.index(current) :]
    remaining = [c for c in ahead if not is_done(experiment, c)]
    workers = 1 + sum(c is not current and cell_state(experiment, c) == "running" for c in todo)
    left = sum(durations) / len(durations) * len(remaining) / workers
    return f"about {left / 3600:.1f} h left" + (f" with {workers} workers" if workers > 1 else "")


def _claim_is_free(experiment: Experiment, cell: Cell) -> bool:
    with claimed(claim_path(experiment, cell.name)) as free:
        return free


def _run_pass(
    experiment: Experiment, todo: list[Cell], finished, durations: list[float], data_dir, log, train_only: bool
) -> list[Cell]:
    """One pass over `todo` in order: each cell no other worker holds is run. Returns the cells that
    another worker held when reached."""
    elsewhere = []
    for index, cell in enumerate(todo, start=1):
        with claimed(claim_path(experiment, cell.name)) as mine:
            # Checked again under the claim: another worker may have finished it meanwhile.
            if not mine or finished(cell):
                if not mine:
                    elsewhere.append(cell)
                log(f"[{index}/{len(todo)}] {cell.name}: {'another worker has it' if not mine else 'done meanwhile'}")
                continue
            started = time.perf_counter()
            eta = f", {_time_left(experiment, todo, cell, durations)}" if durations else ""
            log(f"[{index}/{len(todo)}{eta}] {cell.name}")
            trained_before = (experiment.work / cell.name / SUMMARY).exists()
            run_cell(experiment, cell, data_dir, log, train_only=train_only)
            if not trained_before:  # a cell that only finished its evaluation says little of the rest
                durations.append(time.perf_counter() - started)
    return elsewhere


def run_experiment(experiment: Experiment, log=print, only: str | None = None, train_only: bool = False) -> None:
    """Every cell not yet done, in file order, with progress and an estimate of what is left.
    With `train_only`, only the training runs (and no original row): e.g. on a GPU machine, leaving
    the evaluations to CPU workers."""
    data_dir = resolve_data_dir(experiment.data_dir)
    check_results_directory(experiment)
    if not train_only:
        run_original(experiment, data_dir, log)
    cells = [c for c in experiment.cells if only is None or only in c.grids]
    if train_only:
        todo = [c for c in cells if not (experiment.work / c.name / SUMMARY).exists()]
    else:
        todo = [c for c in cells if not is_done(experiment, c)]
    log(f"experiment {experiment.name}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run")

    def finished(cell: Cell) -> bool:
        return (experiment.work / cell.name / SUMMARY).exists() if train_only else is_done(experiment, cell)

    durations: list[float] = []
    elsewhere = _run_pass(experiment, todo, finished, durations, data_dir, log, train_only)
    # A cell another worker held when this one reached it may have been left unfinished since (that
    # worker was stopped): take it up, rather than leave it to the next run of the command.
    while left_behind := [c for c in elsewhere if not finished(c) and _claim_is_free(experiment, c)]:
        log(f"experiment {experiment.name}: {len(left_behind)} cells another worker held are free again")
        elsewhere = _run_pass(experiment, left_behind, finished, durations, data_dir, log, train_only)
    if not train_only:  # a task of the base model's row another worker held may be free again, too
        run_original(experiment, data_dir, log)
    if elsewhere:
        log(f"experiment {experiment.name}: {len(elsewhere)} cells were running in other workers when reached")
    else:
        done = "trained; evaluate them with the same command without --train-only" if train_only else "done"
        log(f"experiment {experiment.name}: all {len(cells)} cells {done}; results in {experiment.results}")
