"""`imsm frontier`'s test of each arm against the λ line seed by seed (`frontier_lambda.line_tests`),
with the vanilla adapter's own Δ from the same bootstrap replicates beside it as the control."""

from __future__ import annotations

from imsm.experiment.report.frontier_cells import score_header, seed_test_cells, signed, standard_error
from imsm.experiment.report.frontier_lambda import LineTest, line_tests
from imsm.experiment.report.frontier_line import BELOW, BEYOND, REPLICATES, Estimate
from imsm.experiment.report.frontier_study import FORGETTING, POOLED, Study, length_label
from imsm.experiment.report.tables import markdown_table
from imsm.experiment.stats import student_t_critical

# How the rule reads the line, said once for the descriptive table and the tests (`frontier_line`).
MATCHING = (
    "The line's points are joined in order of their target score (not of λ), so every point of the line, "
    "the vanilla adapter as trained included, lies on it with Δ = 0 however noise orders the gains near "
    "the top; points whose target scores tie count as their mean, except for an arm exactly at the tie, "
    "set against the tied point nearest its own forgetting. (beyond): past the line's best gain, set "
    "against the point(s) with that gain; (below): under its lowest gain (Base's), set against that point."
)


def _freedom(seeds: list[int]) -> str:
    """What a t-test over each of these seed counts can show: its degrees of freedom and the |t| that
    p < 0.05 needs."""
    parts = [
        f"{n - 1} degree{'s' if n > 2 else ''} of freedom with {n} seeds, so p < 0.05 needs |t| > "
        f"{student_t_critical(n - 1):.2f}"
        for n in sorted(set(seeds))
        if n > 1
    ]
    return "; ".join(parts) or "not possible with one seed"


def with_error(name: str, estimate: Estimate) -> list[str]:
    """'Δ ± SE' and '[low, high]' of a bootstrapped mean, in display scale."""
    low, high = estimate.interval
    shown = f"{signed(name, estimate.mean)} ± {standard_error(name, estimate.standard_error)}"
    return [shown, f"[{signed(name, low)}, {signed(name, high)}]"]


def line_tests_section(study: Study) -> list[str]:
    """`line_tests`: each seed's arm against its own seed's λ line, with the question bootstrap and by
    seed, and the control (the vanilla adapter's own Δ) with the arm's Δ − the control's."""
    tests = [test for name in POOLED for test in line_tests(study, name)]
    intro = (
        "Tested seed by seed: each seed's arm against the λ line of that seed's own vanilla adapter at the "
        "arm's target score, matched as above. Δ = the arm's forgetting − the line's, in points, averaged "
        "over seeds: negative forgets less than scaling the vanilla adapter to the same gain."
    )
    return tests_table(study, tests, intro)


def tests_table(study: Study, tests: list[LineTest], intro: str) -> list[str]:
    """`intro` (what the line is and what Δ means) and how the tests read, then one row per test of an
    arm against a line (`frontier_lambda.LineTest`); nothing where there is no test."""
    rows, tested = [], []
    for test in tests:
        name, comparison, by_seed = test.name, test.comparison, test.by_seed
        left_out = f"{test.unmatched} left out (no per-question target score or line)" if test.unmatched else ""
        head = [study.label(test.arm), length_label(test.length), score_header(study, (FORGETTING, name))]
        if comparison is None:
            rows.append([*head, "0", "–", "–", "–", "–", "–", "–", "–", "–", "–", left_out])
            continue
        tested.append(by_seed.n)
        places = [f"{comparison.count(p)} {p}" for p in (BEYOND, BELOW) if comparison.count(p)]
        rows.append(
            [
                *head,
                str(len(comparison.deltas)),
                "{} / {}".format(*comparison.questions),
                *with_error(name, comparison.arm),
                "; ".join(signed(name, d) for d in comparison.deltas),
                *seed_test_cells(by_seed),
                " ".join(with_error(name, comparison.control)),
                *with_error(name, comparison.difference),
                "; ".join(filter(None, [", ".join(places), left_out])),
            ]
        )
    if not rows:
        return []
    headers = ["arm", "steps", "score", "seeds", "questions (target / pooled)", "Δ ± SE", "95% interval"]
    headers += [
        "Δ per seed",
        "t",
        "p",
        "control: vanilla adapter's own Δ ± SE [95%]",
        "Δ − control ± SE",
        "95% interval",
        "seeds past the line",
    ]
    how = (
        f"Its SE and 95% interval come from a bootstrap ({REPLICATES} replicates) that resamples the target "
        "questions and the pooled probe questions together and matches every seed again, so they carry the "
        "noise of the target score the match rests on; they hold for these adapters, not for other training "
        f"seeds. Then the seeds' Δ against 0 (two-sided t-test; {_freedom(tested)}). Control: the vanilla "
        "adapter's own Δ against its own line on the same replicates (0 when the rule favours neither side), "
        "and Δ − control, replicate by replicate. Seeds past the line: beyond its best gain (set against the "
        "line's point at that gain: Δ < 0 there means the arm learns more than the line anywhere and forgets "
        "less than that point) or below Base's gain. Questions: those every point of every seed has, which "
        "the bootstrap resamples."
    )
    return [f"{intro} {how}", "", *markdown_table(headers, rows), ""]
