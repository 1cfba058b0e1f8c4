"""The task registry: the paper's seven benchmarks and the knowledge probes by name, slices of them
(`piqa@300`), custom tasks by spec path."""

from __future__ import annotations

import dataclasses

from imsm.errors import IMSMError
from imsm.registry import Registry
from imsm.tasks import arc, cola, freebaseqa, gsm8k, mrpc, multirc, piqa, ropes, sciq, sciq_support, webq, winogrande
from imsm.tasks.base import SLICE, Task
from imsm.tasks.custom import is_spec_path, load_spec

TASKS: Registry[Task] = Registry("task")
for _module in (mrpc, cola, ropes, gsm8k, webq, freebaseqa, multirc, sciq_support):
    TASKS.register(_module.TASK.name, _module.TASK)
# Multiple-choice knowledge probes, scored by log-likelihood as lm-evaluation-harness scores them.
for _task in (*arc.TASKS, piqa.TASK, sciq.TASK, winogrande.TASK):
    TASKS.register(_task.name, _task)


def get_task(name_or_spec: str) -> Task:
    """A registered task by name, a slice of one (`NAME@START`, `task_slice`), or a custom task from a
    `.yaml`/`.yml`/`.json` spec path."""
    if is_spec_path(name_or_spec):
        return load_spec(name_or_spec)
    name, at, start = name_or_spec.partition(SLICE)
    if at:
        return task_slice(name, start)
    return TASKS.get(name_or_spec)


def task_slice(name: str, start: str) -> Task:
    """`NAME@START`: the registered task NAME read from its questions START onward (0-based, in the
    file order `load_examples` reads; any limit counts from there). Prompt, golds, metrics and version
    are NAME's; the name, which every result, journal and file name carries, is `NAME@START`. It
    exists so that questions chosen on one part of a probe can be measured on another.

    Raises:
        IMSMError: a START that is not a plain whole number, an unknown NAME (with the nearest
            name), or a custom spec path (whose results are named by the file, so a slice would
            share its files).
    """
    written = f"{name}{SLICE}{start}"
    fix = f"write NAME{SLICE}START with START the 0-based index of the first question, e.g. piqa{SLICE}300"
    if is_spec_path(name):
        raise IMSMError(
            f"task {written!r}: a custom task spec cannot be sliced (its results are named by its file); slice a "
            f"registered task, e.g. piqa{SLICE}300, or give the spec a data file holding the questions you want"
        )
    if not start:
        raise IMSMError(f"task {written!r}: START is missing; {fix}")
    if start.startswith("-") and start[1:].isdigit():
        raise IMSMError(f"task {written!r}: START is negative ({start}); {fix}")
    if not (start.isascii() and start.isdigit()):
        raise IMSMError(f"task {written!r}: START {start!r} is not a whole number; {fix}")
    if start != str(int(start)):
        raise IMSMError(f"task {written!r}: write START as {int(start)}, without leading zeros (one name per slice)")
    base = TASKS.get(name)  # an unknown name: the registry's error, with the nearest name
    return dataclasses.replace(base, name=f"{base.name}{SLICE}{int(start)}", first=int(start))


def parse_task_list(value: str) -> list[Task]:
    """`--task mrpc,webq,probe.yaml` -> tasks, all resolved before anything runs."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    return [get_task(name) for name in names]


__all__ = ["SLICE", "TASKS", "Task", "get_task", "parse_task_list", "task_slice"]
