"""Each multiple-choice probe against Base, for every arm at every length: a target can transfer to
a probe as well as erase it, and a pooled score can hide one probe's loss behind another's gain.
Held-out probes (slices, NAME@START) are read here on questions no choice was made on."""

from __future__ import annotations

from imsm.experiment.report.frontier_cells import STRONG_T, difference_cells
from imsm.experiment.report.frontier_compare import columns_by_seed, compare_questions
from imsm.experiment.report.frontier_study import POOLED, Probe, Study, length_label
from imsm.experiment.report.tables import markdown_table


def pooled_cell(probe: Probe) -> str:
    """Whether a probe enters the pool, and why not."""
    if probe.held_out:
        return "held out"
    if probe.kind != "multiple_choice":
        return "no: not multiple choice"
    return "yes" if probe.pooled else f"no: {probe.exclusion}"


def probe_tests_section(study: Study) -> list[str]:
    """Arm − Base on each multiple-choice probe's accuracy and gold-option probability, question by
    question, gains included."""
    rows = []
    for probe in study.probes if study.base is not None else []:
        base = study.base.questions.get(probe.task)
        if probe.kind != "multiple_choice" or not base:
            continue
        for (arm, length), points in study.groups().items():
            columns = columns_by_seed(study, points, probe.task)
            if not columns:
                continue
            tests = [compare_questions(columns, {seed: base for seed in columns}, name) for name in POOLED]
            row = [probe.task, pooled_cell(probe), study.label(arm), length_label(length)]
            row.append(f"{tests[0].test.n} × {tests[0].seeds}")
            for test, name in zip(tests, POOLED, strict=True):
                row += difference_cells(test, name)
            rows.append(row)
    if not rows:
        return []
    headers = ["probe", "pooled", "arm", "steps", "questions × seeds", "Δ accuracy ± SE", "t"]
    headers += ["Δ gold prob. ± SE", "t"]
    held_out = (
        " A held-out probe (a slice NAME@START) has questions of a probe other than those any choice was made on."
        if study.held_out
        else ""
    )
    return [
        "## Each probe against Base",
        "",
        "Arm − Base in points on each multiple-choice probe, pooled or not (positive: the arm gained), each "
        "question averaged over seeds first; SE = standard error of the mean difference over questions; "
        f"**bold** t: |t| ≥ {STRONG_T:g}.{held_out}",
        "",
        *markdown_table(headers, rows),
        "",
    ]
