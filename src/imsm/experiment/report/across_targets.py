"""`imsm verdicts`: several studies' verdicts in one table, one row per gated arm (an arm trained with a
fusion other than none) at its final length, against the vanilla adapter of its peft method and
setting. What it learned more; what it kept more of the pooled probes' gold-option probability at the
same length, at the same gain as the vanilla adapter scaled by λ, at the same gain as the vanilla
adapter stopped earlier on its training curve, and against the untrained 50/50 mix of the vanilla
adapter's own branches; and its gate.

Every number is computed as each study's `imsm frontier` report computes it (its verdict and the
sections behind it), with one sign throughout: + favours the gated arm. So the matched-gain columns are
the reports' Δ − control with its sign and interval flipped (there, + says the arm forgets more).
"""

from __future__ import annotations

from collections.abc import Mapping

from imsm.config import GATED_FUSIONS
from imsm.experiment.report.frontier_cells import difference_cells, learning_label, seed_test_cells
from imsm.experiment.report.frontier_compare import compare_arms
from imsm.experiment.report.frontier_curve import curve_tests, curve_vanilla
from imsm.experiment.report.frontier_lambda import LineTest, line_tests
from imsm.experiment.report.frontier_line import Estimate
from imsm.experiment.report.frontier_line_section import with_error
from imsm.experiment.report.frontier_study import Arm, Study, length_label
from imsm.experiment.report.frontier_verdict import gate_cells, gated_arms
from imsm.experiment.report.tables import markdown_table

GOLD = "gold_probability"  # the pooled score every column of kept knowledge reads
HEADERS = [
    "target, steps",
    "gated arm − vanilla",
    "seeds",
    "Δ target (+ = learned more)",
    "kept, same length (p by seed)",
    "kept, held-out slices",
    "kept, at the gain of vanilla scaled by λ [95%]",
    "kept, at the gain of vanilla stopped earlier [95%]",
    "kept, vs the untrained 50/50 mix",
    "gate on the frozen branch: target / probes (spread)",
]


def _flipped(estimate: Estimate) -> Estimate:
    """The same bootstrap read with the other sign: "forgets more than the line" as "kept less"."""
    low, high = estimate.interval
    return Estimate(-estimate.mean, estimate.standard_error, (-high, -low), -estimate.replicate_mean)


def _line_cell(tests: Mapping[tuple[Arm, int | None], LineTest], arm: Arm, length: int | None, none: str) -> str:
    """The arm's Δ − control from a line's test, as kept (+ = kept more than the line), or why not."""
    test = tests.get((arm, length))
    if test is None:
        return none
    if test.comparison is None:
        return "no seed matched"
    return " ".join(with_error(GOLD, _flipped(test.comparison.difference)))


def _gate(study: Study, arm: Arm) -> str:
    """The verdict's two gate cells in one: "target / probes", or a mean fusion's "0.5 fixed" once."""
    target, probes = gate_cells(study, arm)
    return f"{target} / {probes}" if arm.fusion in GATED_FUSIONS else target


def study_rows(study: Study) -> list[list[str]]:
    """One row per gated arm of the study at its final length (`frontier_verdict.gated_arms`)."""
    groups, rows = study.groups(), []
    lines = {(t.arm, t.length): t for t in line_tests(study, GOLD)} if study.pooled_tasks else {}
    curves = {(t.arm, t.length): t for t in curve_tests(study, GOLD)} if study.pooled_tasks else {}
    for arm, length in gated_arms(study):
        vanilla = Arm(arm.method, "none", arm.setting)
        head = [f"{study.target}, {length_label(length)}", f"{study.label(arm)} − {study.label(vanilla)}"]
        if (vanilla, length) not in groups:
            rows.append([*head, "–", f"no {study.label(vanilla)} at {length_label(length)} steps", *["–"] * 6])
            continue
        treated, control = groups[(arm, length)], groups[(vanilla, length)]
        target, _ = compare_arms(study, treated, control, study.target, study.metric)
        kept, by_seed = compare_arms(study, treated, control, None, GOLD)
        held_out = [
            f"{probe.task} {difference_cells(compare_arms(study, treated, control, probe.task, GOLD)[0], GOLD)[0]}"
            for probe in study.held_out
        ]
        mix = Arm(arm.method, "none", arm.setting, "mean")
        mixed = compare_arms(study, treated, groups[(mix, length)], None, GOLD)[0] if (mix, length) in groups else None
        has_line = study.has_lambda_line(arm)
        rows.append(
            [
                *head,
                str(by_seed.n),
                f"{difference_cells(target, study.metric)[0]} {learning_label(study)}",
                f"{difference_cells(kept, GOLD)[0]} (p {seed_test_cells(by_seed)[1]})",
                "; ".join(held_out) or "–",
                _line_cell(lines, arm, length, "no vanilla adapter to scale") if has_line else "no λ line",
                _line_cell(curves, arm, length, "–") if curve_vanilla(study, arm) else "no snapshots of vanilla",
                difference_cells(mixed, GOLD)[0] if mixed is not None else "–",
                _gate(study, arm),
            ]
        )
    return rows


def render_verdicts(studies: list[Study], commands: list[str]) -> str:
    """The table of every study's gated arms, the commands that made it, and what each study still lacks."""
    rows = [row for study in studies for row in study_rows(study)]
    lines = [
        "# Every study's verdict, one gated arm per row",
        "",
        "Made with:",
        "",
        "```bash",
        *commands,
        "```",
        "",
        "Each gated arm at the end of its training against the vanilla adapter of its peft method, from the "
        "same computations as each study's `imsm frontier` report. Kept = the gated arm's pooled gold-option "
        "probability − the other's, in points, question by question over the seeds both have (± SE), **signed "
        "so that + favours the gated arm**; p: the seed-level paired t-test. The matched-gain columns are the "
        "reports' Δ − control with the sign flipped, with their bootstrap SE and 95% interval: + says the "
        "gated arm kept more than the vanilla adapter scaled by λ (or stopped earlier in its training) to the "
        "same target score.",
        "",
        *(markdown_table(HEADERS, rows) if rows else ["No gated arm with results yet."]),
        "",
    ]
    for study in studies:
        if study.missing:
            lines.append(f"- {study.experiment.name}: {_owed(study.missing)}.")
    return "\n".join(lines).rstrip() + "\n"


def _owed(missing: list[str]) -> str:
    """What a study still owes, from `Study.missing`: a cell never run is one entry ("…: not run"), a
    partly read cell one entry per unread reading (as trained or a variant), so the two are counted apart."""
    not_run = sum(entry.endswith(": not run") for entry in missing)
    readings = len(missing) - not_run
    parts = [f"{not_run} {'cell' if not_run == 1 else 'cells'} not run"] if not_run else []
    if readings:
        parts.append(f"{readings} {'reading' if readings == 1 else 'readings'} owed by cells under way")
    return ", ".join(parts)
