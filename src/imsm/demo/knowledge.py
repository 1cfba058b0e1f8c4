"""The demo's knowledge probe: a few dozen ARC-Easy and SciQ questions scored by log-likelihood.

Each option's log-likelihood is read, as lm-evaluation-harness reads it, and nothing is generated, so
the answer format a fine-tune teaches cannot move these scores (it moves the capitals probe's).
"""

from __future__ import annotations

from pathlib import Path

from imsm.data import load_examples
from imsm.evaluation.results import TaskResult
from imsm.evaluation.run import evaluate_task
from imsm.prompting import PromptFormatter
from imsm.tasks import get_task
from imsm.tasks.base import Record, Task

TASKS = ("arc_easy", "sciq")
Probe = dict[str, tuple[Task, list[Record]]]


def checkout_data_dir() -> Path | None:
    """`../shared/data` beside the source checkout, where the project's machines and CI keep the data sets.

    Returns None when this package does not run from a checkout with that directory beside it.
    """
    candidate = Path(__file__).resolve().parents[3].parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def _missing_files(data_dir: Path) -> list[str]:
    tasks = [get_task(name) for name in TASKS]
    files = [Path(task.directory) / name for task in tasks for name in task.splits[task.eval_split]]
    return [str(path) for path in files if not (data_dir / path).is_file()]


def load_probe(data_dir: Path | None, size: int) -> tuple[Probe | None, str]:
    """The first `size` test questions of each task (file order, so every run scores the same ones).

    Returns:
        The probe, or None with the one line to print saying why it is skipped and how to enable it.
    """
    enable = "pass --knowledge-data-dir DIR (a directory holding arc_easy/test.jsonl and sciq/test.jsonl)"
    if data_dir is None:
        return None, f"imsm demo: knowledge column skipped: no data directory found; {enable}"
    missing = _missing_files(data_dir)
    if missing:
        return None, f"imsm demo: knowledge column skipped: {data_dir} has no {', '.join(missing)}; {enable}"
    probe = {}
    for name in TASKS:
        task = get_task(name)
        probe[name] = (task, load_examples(task, None, data_dir, size))
    questions = " + ".join(f"{len(records)} {name}" for name, (_, records) in probe.items())
    return probe, f"imsm demo: knowledge probe: {questions} questions from {data_dir}, scored by log-likelihood"


def score_probe(model, formatter: PromptFormatter, probe: Probe, batch_size: int) -> dict[str, TaskResult]:
    """Every task of the probe scored as `imsm eval` scores multiple choice, by task name."""
    return {
        name: evaluate_task(model, formatter, task, records, "test", batch_size, progress=False)
        for name, (task, records) in probe.items()
    }


def knowledge_headline(results: dict[str, TaskResult]) -> dict[str, float]:
    """Each task's mean normalised gold-option probability and accuracy, and both over all questions.

    The normalised probability is the gold option's share of the probability the model puts on the
    options; it moves with knowledge even where the argmax (accuracy) does not.
    """
    headline: dict[str, float] = {}
    counts = {name: len(result.examples) for name, result in results.items()}
    total = sum(counts.values())
    for key in ("gold_probability", "accuracy"):
        for name, result in results.items():
            headline[f"{name}_{key}"] = result.metrics[key]
        headline[f"knowledge_{key}"] = sum(result.metrics[key] * counts[n] for n, result in results.items()) / total
    return headline
