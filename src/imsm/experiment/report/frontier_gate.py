"""How a learned gate weighs the frozen branch, task by task, in a learning-forgetting study.

IMSM's case rests on a query-aware gate: on questions of general knowledge it should lean on the
frozen branch (the base model) more than on the target task. Each task's mean weight says whether
it does; the spread of the weight across one task's questions says whether it tells questions apart
at all. The weight is a mean over features: a gate could still trade one feature for another from
question to question while that mean stays put, so a flat mean rules out leaning on the base model
as a whole, not every kind of routing.
"""

from __future__ import annotations

import math
from statistics import fmean, pstdev

from imsm.config import GATED_FUSIONS
from imsm.experiment.report.frontier_study import Study, length_label
from imsm.experiment.report.tables import GATE_SCORE, markdown_table


def _weights(column) -> list[float]:
    return [float(v) for v in column or () if v is not None and not math.isnan(float(v))]


def _cell(means: list[float], spreads: list[float]) -> str:
    if not means:
        return "–"
    text = f"{fmean(means):.3f}"
    return f"{text} ({fmean(spreads):.3f})" if spreads else text


def gate_cell(points, task: str) -> str:
    """ "mean (spread)": the task's mean weight averaged over seeds, and in brackets the standard
    deviation of the weight across the task's questions, averaged over seeds; "–" without weights."""
    means, spreads = [], []
    for point in points.values():
        metric = (point.metrics.get(task) or {}).get(GATE_SCORE)
        if metric is not None:
            means.append(float(metric))
        per_question = _weights((point.questions.get(task) or {}).get(GATE_SCORE))
        if len(per_question) > 1:
            spreads.append(pstdev(per_question))
    return _cell(means, spreads)


def pooled_gate_cell(points, tasks) -> str:
    """`gate_cell` over the questions of several probes taken as one (each question weighted equally,
    as the pooled scores weigh them); "–" where a probe has no per-question weights."""
    means, spreads = [], []
    for point in points.values():
        columns = [(point.questions.get(task) or {}).get(GATE_SCORE) for task in tasks]
        if not tasks or any(column is None for column in columns):
            continue
        weights = [w for column in columns for w in _weights(column)]
        if weights:
            means.append(fmean(weights))
            if len(weights) > 1:
                spreads.append(pstdev(weights))
    return _cell(means, spreads)


def gate_section(study: Study) -> list[str]:
    """Every arm trained with a learned gate, at every length: its weight on the frozen branch on the
    target and on each probe."""
    tasks = [study.target, *(probe.task for probe in study.probes)]
    rows = []
    for (arm, length), points in study.groups().items():
        # "mean" fixes g at 0.5: there is no learned gate to read
        if not (arm.is_trained and arm.fusion in GATED_FUSIONS):
            continue
        cells = [gate_cell(points, task) for task in tasks]
        if any(cell != "–" for cell in cells):
            rows.append([study.label(arm), length_label(length), str(len(points)), *cells])
    if not rows:
        return []
    headers = ["arm", "steps", "seeds", *(f"{task} (target)" if task == study.target else task for task in tasks)]
    mixed = [
        study.label(a)
        for a in study.arms()
        if (a.mixed or a.fusion) == "mean" and a.scale == 1.0 and a.intruders is None
    ]
    fixed = f" A mean fusion weighs it 0.5 everywhere ({', '.join(mixed)})." if mixed else ""
    return [
        "## The gate",
        "",
        "The learned gate's weight on the frozen branch (g of eq. 4, averaged over the tokens it weighs "
        "and the features), mean over seeds; in brackets its standard deviation across the task's "
        "questions, mean over seeds. A gate that keeps general knowledge would weigh the frozen branch "
        "more on the probes than on the target; one whose mean weight hardly varies across questions "
        "does not lean on the base model for some questions more than for others (it may still weigh "
        f"features differently).{fixed}",
        "",
        *markdown_table(headers, rows),
        "",
    ]
