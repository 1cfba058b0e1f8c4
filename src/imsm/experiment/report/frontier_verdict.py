"""`imsm frontier`'s verdict at the final length: each gated arm against its vanilla adapter and the free
baselines of its method (on the pool, and on each held-out probe slice), against its method's λ line
beside the vanilla adapter's own Δ, and its gate's weight on the frozen branch. Every number is gathered
from the computation of the section that shows it in full (Between arms, the λ line's tests, The gate),
so that the two always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from imsm.config import GATED_FUSIONS
from imsm.experiment.report.frontier_cells import difference_cells, learning_label, seed_test_cells
from imsm.experiment.report.frontier_compare import compare_arms, comparisons
from imsm.experiment.report.frontier_curve import curve_tests, curve_vanilla
from imsm.experiment.report.frontier_gate import gate_cell, pooled_gate_cell
from imsm.experiment.report.frontier_lambda import LineTest, line_tests
from imsm.experiment.report.frontier_line_section import with_error
from imsm.experiment.report.frontier_study import POOLED, Arm, Study, length_label
from imsm.experiment.report.tables import markdown_table

HEADING = "## Verdict, at the final length"
NO_LINE = "no λ line"
NO_CURVE = "no snapshots of vanilla"
# Each pooled score as the verdict's tables name it, gold probability first: the headline score.
SCORE_NAMES = {"gold_probability": "pooled gold prob.", "accuracy": "pooled accuracy"}


def gated_arms(study: Study) -> list[tuple[Arm, int | None]]:
    """(arm, final length) of every arm trained with a fusion other than none, in `Arm.order`."""
    return [(a, study.final_length(a)) for a in study.arms() if a.is_trained and a.fusion != "none" and study.final(a)]


def _comparison_rows(study: Study, gated: list[tuple[Arm, int | None]]) -> tuple[list[list[str]], list[str]]:
    """Each gated arm at its final length against its vanilla adapter and each declared free baseline of
    its method (`comparisons`, tested by `compare_arms`, as Between arms tests them); and a line for
    each gated arm that has nothing to be set against."""
    groups, rows, notes = study.groups(), [], []
    for arm, length in gated:
        pairs = [
            other
            for first, other, at in comparisons(study)
            if (first, at) == (arm, length) and other.fusion == "none"  # not another gated arm, nor its own branch
        ]
        if not pairs:
            notes.append(f"{study.label(arm)}: no vanilla adapter or free baseline at {length_label(length)} steps.")
        for other in pairs:
            treated, control = groups[(arm, length)], groups[(other, length)]
            target, _ = compare_arms(study, treated, control, study.target, study.metric)
            pooled = {name: compare_arms(study, treated, control, None, name) for name in POOLED}
            gold, by_seed = pooled["gold_probability"]
            held_out = [
                compare_arms(study, treated, control, probe.task, "gold_probability")[0] for probe in study.held_out
            ]
            rows.append(
                [
                    f"{study.label(arm)} − {study.label(other)}",
                    length_label(length),
                    str(by_seed.n),
                    difference_cells(target, study.metric)[0],
                    difference_cells(gold, "gold_probability")[0],
                    difference_cells(pooled["accuracy"][0], "accuracy")[0],
                    *(difference_cells(test, "gold_probability")[0] for test in held_out),
                    seed_test_cells(by_seed)[1],
                ]
            )
    return rows, notes


def _line_rows(study: Study, gated: list[tuple[Arm, int | None]]) -> list[list[str]]:
    """Each gated arm's Δ from its method's λ line (`line_tests`, as the λ section tests it), beside the
    vanilla adapter's own Δ (the control) and Δ − control; "no λ line" for a method without one."""
    has_line = [study.has_lambda_line(arm) for arm, _ in gated]
    tests = (
        {(t.arm, t.length, t.name): t for name in SCORE_NAMES for t in line_tests(study, name)} if any(has_line) else {}
    )
    return _test_rows(study, gated, tests, study.has_lambda_line, NO_LINE, "no vanilla adapter to scale")


def _curve_rows(study: Study, gated: list[tuple[Arm, int | None]]) -> list[list[str]]:
    """Each gated arm's Δ from its vanilla adapter's training curve (`curve_tests`, as its section tests
    it), beside the vanilla adapter's own Δ and Δ − control; "no curve" where the vanilla adapter was read
    at no snapshot."""
    tests = {(t.arm, t.length, t.name): t for name in SCORE_NAMES for t in curve_tests(study, name)}
    return _test_rows(study, gated, tests, lambda arm: curve_vanilla(study, arm) is not None, NO_CURVE, "")


def _test_rows(
    study: Study,
    gated: list[tuple[Arm, int | None]],
    tests: Mapping[tuple[Arm, int | None, str], LineTest],
    has_line: Callable[[Arm], bool],
    none: str,
    untested: str,
) -> list[list[str]]:
    """Each gated arm's row per pooled score from its test against a line: Δ, the control's, Δ − control;
    `none` for an arm whose method has no such line, with why where it has one but no seed matched."""
    rows = []
    for arm, length in gated:
        head = [study.label(arm), length_label(length)]
        if not has_line(arm):
            rows.append([*head, "–", "–", none, "–", "–"])
            continue
        for name, shown in SCORE_NAMES.items():
            test = tests.get((arm, length, name))
            if test is None or test.comparison is None:
                why = untested if test is None else "no seed matched"
                rows.append([*head, shown, "–", f"{none} ({why})" if why else none, "–", "–"])
                continue
            comparison = test.comparison
            cells = [" ".join(with_error(name, e)) for e in (comparison.arm, comparison.control, comparison.difference)]
            rows.append([*head, shown, str(len(comparison.deltas)), *cells])
    return rows


def _gate_rows(study: Study, gated: list[tuple[Arm, int | None]]) -> list[list[str]]:
    """Each gated arm's weight on the frozen branch on the target and on the pooled probes (`gate_cell`,
    as The gate reads it); a mean fusion's fixed 0.5; "–" where there are no weights."""
    return [[study.label(a), length_label(n), str(len(study.final(a))), *gate_cells(study, a)] for a, n in gated]


def gate_cells(study: Study, arm: Arm) -> list[str]:
    """A gated arm's weight on the frozen branch at its final length, on the target and over the pooled
    probes (`gate_cell`, as The gate reads it); a mean fusion's fixed 0.5; "–" where there are no weights."""
    points = study.final(arm)
    if arm.fusion in GATED_FUSIONS:
        return [gate_cell(points, study.target), pooled_gate_cell(points, study.pooled_tasks)]
    return ["0.5 fixed" if arm.fusion == "mean" else "–"] * 2


def verdict_section(study: Study) -> list[str]:
    """Each gated arm at its final length: its comparisons, its place against the λ line, its gate."""
    gated = gated_arms(study)
    if not gated:
        return [HEADING, "", "No gated arm to judge (no arm trained with a fusion other than none).", ""]
    lines = [
        HEADING,
        "",
        "Each gated arm at the end of training, in numbers taken from the sections below: Δ = the gated arm "
        "− the other, so a positive Δ on the target says it learned more and a positive Δ pooled that it "
        "kept more."
        + (
            " A held-out probe (NAME@START) is the slice on which vanilla's losses are tested, on questions "
            "no choice was made on: a positive Δ there says the gated arm kept more of what vanilla loses."
            if study.held_out
            else ""
        ),
        "",
    ]
    rows, notes = _comparison_rows(study, gated)
    if not study.pooled_tasks:
        notes.append("No pooled probes: nothing to set the gated arms' forgetting against.")
    if rows:
        headers = ["comparison", "steps", "seeds", f"Δ {learning_label(study)} ± SE"]
        headers += ["Δ pooled gold prob. ± SE", "Δ pooled accuracy ± SE"]
        headers += [f"Δ {probe.task} gold prob. ± SE (held out)" for probe in study.held_out]
        headers += ["p (gold prob., by seed)"]
        lines += [*markdown_table(headers, rows), ""]
    lines += [*notes, ""] if notes else []

    def line_headers(delta: str) -> list[str]:
        return ["arm", "steps", "score", "seeds", delta, "control: vanilla's own Δ", "Δ − control ± SE [95%]"]

    lines += [
        "Against the λ line: forgetting − the line's at the same gain (negative = forgets less than scaling "
        "the vanilla adapter), beside the vanilla adapter's own Δ (the control):",
        "",
        *markdown_table(line_headers("Δ from the λ line ± SE [95%]"), _line_rows(study, gated)),
        "",
        "Against vanilla's training curve: forgetting − the curve's at the same gain (negative = forgets less "
        "than plain training stopped where it had learned as much), beside the vanilla adapter's own Δ:",
        "",
        *markdown_table(line_headers("Δ from vanilla's curve ± SE [95%]"), _curve_rows(study, gated)),
        "",
        "The gate's weight on the frozen branch, mean over seeds (in brackets its spread across questions):",
        "",
        *markdown_table(["arm", "steps", "seeds", "gate on target", "gate on pooled probes"], _gate_rows(study, gated)),
        "",
    ]
    return lines
