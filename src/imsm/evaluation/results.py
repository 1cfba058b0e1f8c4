"""What evaluating one task gives, whatever its kind (generation, multiple choice, drift), and the
files and table it is written to."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imsm.atomic_write import write_together
from imsm.metrics import METRICS
from imsm.tasks.base import Task

COUNTS = ("tokens", "truncated_documents", "skipped_documents")  # metrics that are counts, not rates


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
    generated: bool | None = None  # whether answers were generated (None: a kind that never generates)

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
        if self.generated is False:  # the teacher-forced pass alone: said, as no answer was scored
            summary["generated"] = False
        if self.resumed_examples:
            # `seconds` covers this run only, so a throughput over all examples would mislead.
            summary.update(resumed_examples=self.resumed_examples, examples_per_s=None)
        return summary


def rounded(value: float | None) -> float | None:
    """A score as the per-example files keep it: five decimals, None kept."""
    return None if value is None else round(value, 5)


def predictions_path(output: Path, task: Task) -> Path:
    """Per-example file beside the metrics file: `results.json` -> `results.mrpc.jsonl` (a slice:
    `results.piqa@300.jsonl`)."""
    safe_name = "".join(ch if ch.isalnum() or ch in "-_@" else "_" for ch in task.name)
    return output.with_name(f"{output.stem}.{safe_name}.jsonl")


def journal_path(output: Path, task: Task) -> Path:
    """Resume journal beside the metrics file: `results.json` -> `results.mrpc.partial.jsonl`."""
    return predictions_path(output, task).with_suffix(".partial.jsonl")


def write_results(output: Path, header: dict[str, Any], results: list[TaskResult]) -> None:
    """The per-example files and the metrics file, all new or (on a full disk) all as they were."""
    files: dict[Path, str] = {
        predictions_path(output, r.task): "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in r.examples)
        for r in results
    }
    payload = {**header, "tasks": {r.task.name: r.summary() for r in results}}
    files[output] = json.dumps(payload, indent=2) + "\n"  # last: its presence says the evaluation finished
    write_together(files)


def format_table(results: list[TaskResult]) -> str:
    """A plain table, proportions in percent, one task per line."""
    lines = []
    for result in results:
        cells = []
        for name, value in result.metrics.items():
            measured = name.removesuffix("_stderr")  # a standard error is shown as its metric is
            percent = (
                measured in METRICS
                and METRICS.get(measured).percent
                or measured in ("yes_rate", "predicted_yes_rate", "gold_yes_rate")
            )
            if name in COUNTS:
                cells.append(f"{name} {int(value)}")
            else:
                cells.append(f"{name} {100 * value:.1f}" if percent else f"{name} {value:.3f}")
        lines.append(f"{result.task.name:<11} n={len(result.examples):<5} " + "  ".join(cells))
    return "\n".join(lines)
