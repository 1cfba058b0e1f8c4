"""The task registry: the paper's seven benchmarks and the knowledge probes by name, custom tasks by spec path."""

from __future__ import annotations

from imsm.registry import Registry
from imsm.tasks import arc, cola, freebaseqa, gsm8k, mrpc, multirc, piqa, ropes, sciq, sciq_support, webq, winogrande
from imsm.tasks.base import Task
from imsm.tasks.custom import is_spec_path, load_spec

TASKS: Registry[Task] = Registry("task")
for _module in (mrpc, cola, ropes, gsm8k, webq, freebaseqa, multirc, sciq_support):
    TASKS.register(_module.TASK.name, _module.TASK)
# Multiple-choice knowledge probes, scored by log-likelihood as lm-evaluation-harness scores them.
for _task in (*arc.TASKS, piqa.TASK, sciq.TASK, winogrande.TASK):
    TASKS.register(_task.name, _task)


def get_task(name_or_spec: str) -> Task:
    """A registered task by name, or a custom task from a `.yaml`/`.yml`/`.json` spec path."""
    if is_spec_path(name_or_spec):
        return load_spec(name_or_spec)
    return TASKS.get(name_or_spec)


def parse_task_list(value: str) -> list[Task]:
    """`--task mrpc,webq,probe.yaml` -> tasks, all resolved before anything runs."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    return [get_task(name) for name in names]


__all__ = ["TASKS", "Task", "get_task", "parse_task_list"]
