"""A multiple-choice probe's chance accuracy, the bar the base model must clear for the probe to enter
a learning-forgetting study's pool: the mean of 1 / options over the questions it answered."""

from __future__ import annotations

from pathlib import Path

from imsm.checked_files import read_json_lines
from imsm.data import load_examples, resolve_data_dir
from imsm.errors import IMSMError
from imsm.experiment.runner import original_path
from imsm.experiment.spec import Experiment
from imsm.tasks import get_task


def chance_accuracy(experiment: Experiment, task: str) -> tuple[float | None, str]:
    """A multiple-choice probe's chance accuracy and where it comes from: the mean of 1 / options over
    the questions the base model answered, from its rows where they are kept, else from those questions
    in the experiment's data directory, else the task's own (`Task.chance`)."""
    rows = experiment.work / f"original.{Path(task).stem}.jsonl"
    if rows.is_file():
        fix = (
            f"delete it (the report then assumes the task's usual options), or delete it and "
            f"{original_path(experiment, task)} and rerun imsm experiment to recompute both"
        )
        counts = [len(row.get("choices") or []) for row in read_json_lines(rows, fix=fix)]
    else:  # the rows stay on the machine that ran the study; the questions themselves are data
        counts = _option_counts(experiment, task)
    counts = [n for n in counts if n]
    if counts:
        return sum(1 / n for n in counts) / len(counts), "options of the questions"
    chance = get_task(task).chance
    return (chance, "usual options") if chance is not None else (None, "unknown")


def _option_counts(experiment: Experiment, task: str) -> list[int]:
    """How many options each question the base model answered has, read from the data directory
    (the first eval-limit questions, as the study read them); none where the data is not at hand."""
    resolved = get_task(task)
    try:
        data_dir = resolve_data_dir(experiment.data_dir)
        if data_dir is None or resolved.choices is None:
            return []
        records = load_examples(resolved, None, data_dir, experiment.eval_limit(task))
    except IMSMError:
        return []
    return [len(resolved.choices(record)) for record in records]
