"""What evaluating one task gives, whatever its kind (generation, multiple choice, drift)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imsm.tasks.base import Task


@dataclass
class TaskResult:
    """One task's outcome: corpus metrics and the per-example rows behind them."""

    task: Task
    split: str
    metrics: dict[str, float]
    examples: list[dict[str, Any]]
    seconds: float
    resumed_examples: int = 0  # answered by an earlier, interrupted run (from its journal)
    chat_template: bool | None = None  # whether the task's prompts went through the chat template

    def summary(self) -> dict[str, Any]:
        summary = {
            "version": self.task.version,
            "split": self.split,
            "source": self.task.source,
            "n": len(self.examples),
            "metrics": self.metrics,
            "seconds": round(self.seconds, 2),
            "examples_per_s": round(len(self.examples) / self.seconds, 3) if self.seconds else None,
        }
        if self.chat_template is not None:
            summary["chat_template"] = self.chat_template
        if self.resumed_examples:
            # `seconds` covers this run only, so a throughput over all examples would mislead.
            summary.update(resumed_examples=self.resumed_examples, examples_per_s=None)
        return summary
