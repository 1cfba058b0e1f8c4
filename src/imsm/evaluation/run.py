"""`evaluate_task`: one skeleton for every kind of task (timer, resume journal, progress, metrics,
rows, result), the kind chosen by the task's `answer_type`.

A kind (`Generation`, `MultipleChoice`, `Drift`) supplies only what differs: the items it
evaluates, what its journal's fingerprint covers, how to evaluate a batch of items, and how to
turn the items' results into metrics and per-example rows.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from imsm.evaluation.choice import MultipleChoice
from imsm.evaluation.drift import Drift
from imsm.evaluation.frozen_states import FrozenStateStore
from imsm.evaluation.generation import Generation
from imsm.evaluation.journal import EvalJournal, fingerprint, journal_settings
from imsm.evaluation.kind import TaskKind
from imsm.evaluation.results import TaskResult
from imsm.model.siamese import IMSMModel
from imsm.prompting import PromptFormatter
from imsm.tasks.base import Record, Task


def run_task(
    kind: TaskKind,
    split: str,
    progress: bool = True,
    journal_path: Path | None = None,
    run_settings: dict[str, Any] | None = None,
    started: float | None = None,
) -> TaskResult:
    """Evaluate one task of any kind, resuming from and writing to its journal.

    With `journal_path`, every finished batch is journaled there, and the items a journal from an
    earlier, interrupted run with the same `run_settings` (model, adapter, dtype, ...), task and
    texts already holds are not evaluated again. The caller removes the journal once the results
    are written. `started` is when the work began (`time.perf_counter()`), now if None.
    """
    started = time.perf_counter() if started is None else started
    task = kind.task
    journal = None
    if journal_path is not None:
        details, texts = kind.journal_key()
        settings = journal_settings(run_settings, task, split, kind.journal_format, **details)
        fields = [f.name for f in dataclasses.fields(kind.row_type)]
        journal = EvalJournal(journal_path, fingerprint(settings, texts), fields)
    progress_bar = {"desc": task.name, "unit": kind.unit, "disable": not progress}
    done, resumed = _run_journaled(kind, journal, progress_bar)
    metrics, examples = kind.report(done)
    seconds = time.perf_counter() - started
    return TaskResult(task, split, metrics, examples, seconds, resumed, kind.chat_template, kind.generated)


def _run_journaled(kind: TaskKind, journal: EvalJournal | None, progress: dict[str, Any]) -> tuple[dict[int, Any], int]:
    """Results for the kind's items: those the journal holds, then `kind.run` for the rest, journaled
    as they come. Returns (results by index, how many came from the journal)."""
    indices = kind.items()
    wanted = set(indices)
    done: dict[int, Any] = {}
    if journal is not None:
        for index, row in journal.rows.items():
            if index in wanted and kind.fits(index, row):
                done[index] = kind.row_type(**{name: row[name] for name in journal.fields})
    todo = [i for i in indices if i not in done]
    resumed = len(indices) - len(todo)
    try:
        with tqdm(total=len(indices), initial=resumed, leave=False, **progress) as bar:

            def keep(rows: list[int], results: list[Any]) -> None:
                batch = [todo[r] for r in rows]
                done.update(zip(batch, results, strict=True))
                if journal is not None:
                    journal.add(batch, [dataclasses.asdict(result) for result in results])
                bar.update(len(rows))

            if todo:
                kind.run(todo, keep)
    finally:
        if journal is not None:
            journal.close()
    return done, resumed


# answer_type -> the kind that evaluates it; every other answer type is generated (`Generation`).
KINDS: dict[str, type[TaskKind]] = {"multiple_choice": MultipleChoice, "drift": Drift}


def evaluate_task(
    model: IMSMModel,
    formatter: PromptFormatter,
    task: Task,
    records: list[Record],
    split: str,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    likelihood: bool = True,
    progress: bool = True,
    journal_path: Path | None = None,
    run_settings: dict[str, Any] | None = None,
    frozen_states: FrozenStateStore | None = None,
    generate: bool = True,
) -> TaskResult:
    """Evaluate and aggregate one task, as its `answer_type` says (`KINDS`, else generation).

    `max_new_tokens`, `likelihood` and `generate` concern generated-answer tasks only (multiple
    choice and drift never generate); `generate` False runs their teacher-forced pass alone, which
    needs `likelihood`. The journal works as
    `run_task` says. With `frozen_states`, multiple-choice and drift tasks read the frozen
    branch's states from that store (computing and adding those it lacks) and run the tuned
    branch alone; the results are the same (to float rounding) as without it.
    """
    started = time.perf_counter()
    if task.answer_type in KINDS:
        kind = KINDS[task.answer_type](model, formatter, task, records, batch_size, frozen_states=frozen_states)
    else:
        kind = Generation(
            model,
            formatter,
            task,
            records,
            batch_size,
            max_new_tokens,
            likelihood,
            generate,
            frozen_states=frozen_states,
        )
    return run_task(kind, split, progress, journal_path, run_settings, started)
