"""What a trained IMSM gate does: how decided it is, how far it moved, and what it costs or saves.

The evaluation reports the gate's mean weight on the frozen branch, averaged over features and
tokens. That mean hides the gate's shape: g is one value per feature, and a gate that sends half
of the features wholly to each branch has the same 50% mean as one that mixes every feature
50/50. This module opens the gate up, on the gold answers of any tasks (teacher-forced, the
tokens the evaluation's gold NLL is taken over):

- `decisiveness`, mean |2g - 1|: 0 when every feature is mixed 50/50, 1 when every feature
  takes one branch only;
- `moved`, mean |g - g_initial|: how far training moved the gate from the run's own initial
  gate, rebuilt from the seed in the run's `train_config.json` (None without one);
- `specificity`, mean |m_task - m_all| over features, where m is the per-feature mean gate over
  a task's answer tokens: how much the gate treats this task differently from the others (the
  "query-aware" part). The initial gate's value is the baseline, since the hidden states differ
  between tasks even when the gate has learned nothing;
- the gold answers' NLL with the trained gate and with its stand-ins: the initial gate, a fixed
  50/50 mix, the tuned branch alone (g = 0: the adapter without IMSM's fusion) and the frozen
  branch alone (g = 1: the base model).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean as mean
from typing import Any

import torch

from imsm.checked_files import read_json
from imsm.config import IMSMConfig
from imsm.errors import IMSMError
from imsm.model.build import get_imsm_model
from imsm.model.gate import FusionGate
from imsm.model.siamese import IMSMModel
from imsm.peft_methods.loramoe import loramoe_config_for
from imsm.prompting import PromptFormatter
from imsm.tasks.base import Record, Task
from imsm.train.loop import seed_everything

# The gates every answer is scored under, besides the trained one.
STAND_INS = ("initial", "half", "tuned_only", "frozen_only")


@dataclass(frozen=True)
class TaskGateReport:
    task: str
    examples: int
    tokens: int
    frozen_weight: float  # mean g, as the evaluation reports it
    decisiveness: float
    initial_decisiveness: float | None  # the same for the initial gate: what training changed
    moved: float | None
    specificity: float | None  # set once every task is measured
    initial_specificity: float | None
    gold_nll: dict[str, float]  # "gate" and each of STAND_INS (those available)


def initial_gate(adapter: str | Path, base_model: torch.nn.Module) -> FusionGate | None:
    """The gate an `imsm train` run started from, rebuilt from its seed; None if unknown.

    `imsm train` seeds, then builds the adapter and the gate (`train.run.train`), so the same
    seed and configs on a copy of the base model reproduce the initial weights exactly.
    `base_model` is modified (an adapter is injected): pass a copy.
    """
    from peft import PeftConfig

    path = Path(adapter)
    run_config = path / "train_config.json"
    if not run_config.is_file():
        return None
    fix = "restore it from the training run, or pass --no-initial to leave the initial gate out"
    config = read_json(run_config, fix=fix, keys=("config",))["config"]
    peft_config = loramoe_config_for(path) or PeftConfig.from_pretrained(str(path))
    if getattr(peft_config, "rank_pattern", None) and getattr(peft_config, "init_r", None):
        peft_config.rank_pattern = None  # AdaLoRA's pruned ranks came later; training started from init_r
    imsm_config = IMSMConfig(
        gate_rank=config["gate_rank"], fusion=config["fusion"], gate_dropout=config["gate_dropout"]
    )
    seed_everything(config["seed"])
    gate = get_imsm_model(base_model, peft_config, imsm_config).gate
    return None if gate is None else gate.eval()


def inspect_adapter(
    base_model: torch.nn.Module,
    adapter: str | Path,
    formatter: PromptFormatter,
    data: Mapping[str, tuple[Task, Sequence[Record]]],
    with_initial: bool = True,
) -> list[TaskGateReport]:
    """`inspect_gate` for an adapter directory on `base_model` (which it takes over), measured
    against the run's initial gate when `with_initial` and the run recorded its seed."""
    initial = initial_gate(adapter, copy.deepcopy(base_model)) if with_initial else None
    model = IMSMModel.from_pretrained(base_model, adapter).eval()
    return inspect_gate(model, formatter, data, initial)


# The stand-ins for the trained gate that take a constant g (the initial gate is a `FusionGate`).
_CONSTANT_GATES = {"half": 0.5, "tuned_only": 0.0, "frozen_only": 1.0}


def _answer_states(model: IMSMModel, prompt_ids: list[int], answer_ids: list[int]):
    """Both branches over prompt + answer (the prompt as query), the positions predicting the
    answer, and the gold ids there."""
    ids = torch.tensor([prompt_ids + answer_ids], device=model.device)
    query = torch.zeros_like(ids, dtype=torch.bool)
    query[0, : len(prompt_ids)] = True
    states = model.branch_states(ids, torch.ones_like(ids), query)
    cols = torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1, device=ids.device)
    return states, (torch.zeros_like(cols), cols), ids[0, cols + 1]


@torch.no_grad()
def inspect_gate(
    model: IMSMModel,
    formatter: PromptFormatter,
    data: Mapping[str, tuple[Task, Sequence[Record]]],
    initial: FusionGate | None = None,
) -> list[TaskGateReport]:
    """One report per task, over the gold answers of `data[name] = (task, records)`."""
    if model.gate is None:
        raise IMSMError(
            f"this adapter has no gate to inspect (fusion {model.fusion!r}); "
            "pass an adapter trained with --fusion imsm or no-query"
        )
    model.eval()
    partial, feature_means, initial_means = [], {}, {}
    for name, (task, records) in data.items():
        nll: dict[str, list[float]] = {key: [] for key in ("gate", *STAND_INS) if key != "initial" or initial}
        decisiveness, initial_decisiveness, moved, tokens = [], [], [], 0
        gate_sum = initial_sum = 0.0
        for record in records:
            answer_ids = formatter.answer_ids(task.target(record))
            if not answer_ids:
                continue
            states, positions, gold = _answer_states(model, formatter.prompt_ids(task.prompt(record)), answer_ids)
            stand_ins = {"gate": None, **_CONSTANT_GATES}
            if initial is not None:
                stand_ins["initial"] = initial
            fused = {key: model.fused_logits(states, positions, gate=gate) for key, gate in stand_ins.items()}
            g = fused["gate"].gate  # [n, d]
            if initial is not None:
                moved.append(float((g - fused["initial"].gate).abs().mean()))
                initial_decisiveness.append(float((2 * fused["initial"].gate - 1).abs().mean()))
                initial_sum = initial_sum + fused["initial"].gate.sum(dim=0)
            for key, result in fused.items():
                log_probs = torch.log_softmax(result.logits.float(), dim=-1)
                nll[key].append(float(-log_probs.gather(1, gold[:, None]).mean()))
            decisiveness.append(float((2 * g - 1).abs().mean()))
            gate_sum = gate_sum + g.sum(dim=0)
            tokens += len(gold)
        if not tokens:
            raise IMSMError(f"task {name} has no example with a non-empty answer to inspect; pass other records")
        feature_means[name] = gate_sum / tokens
        if initial is not None:
            initial_means[name] = initial_sum / tokens
        partial.append(
            dict(
                task=name,
                examples=len(decisiveness),
                tokens=tokens,
                frozen_weight=float(feature_means[name].mean()),
                decisiveness=mean(decisiveness),
                initial_decisiveness=mean(initial_decisiveness) if initial_decisiveness else None,
                moved=mean(moved) if moved else None,
                gold_nll={key: mean(values) for key, values in nll.items()},
            )
        )
    specificity = _specificity(feature_means)
    initial_specificity = _specificity(initial_means) if initial_means else {}
    return [
        TaskGateReport(
            **row, specificity=specificity.get(row["task"]), initial_specificity=initial_specificity.get(row["task"])
        )
        for row in partial
    ]


def _specificity(means: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per task, mean over features of |its per-feature mean gate - the tasks' average|."""
    if len(means) < 2:
        return {}
    overall = torch.stack(list(means.values())).mean(dim=0)
    return {name: float((m - overall).abs().mean()) for name, m in means.items()}


def format_report(reports: Sequence[TaskGateReport]) -> str:
    """A markdown table: the gate's shape, then the gold NLL under the trained gate and each stand-in."""
    keys = [key for key in ("gate", *STAND_INS) if key in reports[0].gold_nll]
    header = ["task", "examples", "mean g", "decisiveness (initial)", "moved", "specificity (initial)"]
    header += [f"NLL {key.replace('_', ' ')}" for key in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def number(value, digits=3):
        return "–" if value is None else f"{value:.{digits}f}"

    for report in reports:
        cells = [report.task, str(report.examples), number(report.frozen_weight)]
        cells.append(f"{number(report.decisiveness)} ({number(report.initial_decisiveness)})")
        cells += [number(report.moved), f"{number(report.specificity)} ({number(report.initial_specificity)})"]
        cells += [number(report.gold_nll[key]) for key in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reports_to_json(reports: Sequence[TaskGateReport], header: Mapping[str, Any]) -> str:
    return json.dumps({**header, "tasks": [asdict(report) for report in reports]}, indent=2) + "\n"
