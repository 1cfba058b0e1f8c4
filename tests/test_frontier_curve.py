"""`imsm frontier` sets every arm against its vanilla adapter's own training curve at the same gain:
Base, the vanilla adapter's snapshots and the adapter as trained, read by the λ line's rule. The numbers
follow test_frontier.py's synthetic study (an arm answers the target's first `target × 20` questions
right and loses `lost` of Base's 56 right pooled answers of 80): LoRA's curve runs through Base (0.50,
0 lost), its 10-step snapshot (0.70; 11, 12, 13 lost in seeds 0-2) and the adapter as trained (0.90, 24).
"""

from __future__ import annotations

import json

import pytest

from imsm.experiment.report.frontier import render_frontier
from imsm.experiment.report.frontier_curve import HEADING, curve_tests
from imsm.experiment.report.frontier_line import BEYOND, ON
from imsm.experiment.report.frontier_study import collect_study
from imsm.experiment.spec import load_experiment
from test_frontier import STEPS, row, section, tables, write_experiment, write_results
from test_frontier_methods import methods_study

STEP = str(STEPS)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = write_experiment(tmp_path_factory.mktemp("curve"))
    write_results(path)
    return collect_study(load_experiment(path))


def by_arm(study, name: str = "accuracy") -> dict:
    return {(study.label(t.arm), t.length): t.comparison for t in curve_tests(study, name)}


def test_a_gated_arm_is_set_against_vanilla_trained_until_it_learned_as_much(study):
    tests = by_arm(study)
    # IMSM-LoRA as trained reaches the 10-step snapshot's gain (70) and loses 4 answers where the
    # snapshot lost 11, 12, 13: it forgets less than plain training stopped at the same gain.
    final = tests[("IMSM-LoRA", STEPS)]
    assert final.deltas == pytest.approx([-7 / 80, -8 / 80, -9 / 80]) and final.places == [ON] * 3
    # After 10 steps it reaches 60, halfway from Base to the snapshot, where the curve has lost half as much.
    early = tests[("IMSM-LoRA", 10)]
    assert early.deltas == pytest.approx([(4 - 11) / 160, (4 - 12) / 160, (4 - 13) / 160])
    # Past vanilla's best gain (95 against 90): set against the adapter as trained, not left out.
    beyond = tests[("IMSM-mean", 10)]
    assert beyond.places == [BEYOND] * 3 and beyond.deltas == pytest.approx([(6 - 24) / 80] * 3)


def test_the_vanilla_adapter_is_the_curve_not_an_arm_on_it_and_its_own_delta_is_zero(study):
    tests = by_arm(study)
    assert not any(label == "LoRA" for label, _ in tests)
    final = tests[("IMSM-LoRA", STEPS)]
    assert final.control.mean == 0.0 and final.control.interval == (0.0, 0.0)
    assert final.difference.mean == pytest.approx(final.mean)
    # A free baseline off the λ line is set against it too (the untrained mix: 0.55, 4 lost).
    assert tests[("untrained mix", STEPS)].deltas == pytest.approx([(4 - (11 + s) / 4) / 80 for s in range(3)])


def test_a_method_without_a_lambda_line_has_its_own_curve(tmp_path):
    """IMSM-DoRA (0.80, 6 lost) against DoRA's curve: Base, DoRA at 10 steps (0.65, 10) and as trained
    (0.85, 20). 16 of 20 target answers lie 3/4 of the way from 13 to 17, where the curve has lost 17.5."""
    study = methods_study(tmp_path)
    tests = by_arm(study)
    assert tests[("IMSM-DoRA", STEPS)].deltas == pytest.approx([(6 - 17.5) / 80] * 3)
    # LoRA's arms are set against LoRA's curve, not DoRA's: the synthetic plans differ.
    assert tests[("IMSM-LoRA", STEPS)].deltas == pytest.approx([-8 / 80] * 3)
    verdict = section(render_frontier(study, None), "Verdict")
    dora = row(verdict, table=2, arm="IMSM-DoRA", score="pooled accuracy")
    assert dora["Δ from vanilla's curve ± SE [95%]"].startswith("-14.38")  # 11.5 / 80 in points
    assert row(verdict, table=1, arm="IMSM-DoRA")["Δ from the λ line ± SE [95%]"] == "no λ line"


def test_the_verdict_s_curve_cells_are_the_curve_section_s_tests(study):
    report = render_frontier(study, None)
    verdict, curve = section(report, "Verdict"), section(report, HEADING.removeprefix("## "))
    rows = tables(verdict)[2]
    assert [(r["arm"], r["score"]) for r in rows] == [
        (a, s) for a in ("IMSM-LoRA", "IMSM-mean") for s in ("pooled gold prob.", "pooled accuracy")
    ]
    for summary in rows:
        forgetting = "forgetting (gold prob.)" if "gold" in summary["score"] else "forgetting (accuracy)"
        tested = row(curve, arm=summary["arm"], steps=STEP, score=forgetting)
        assert summary["Δ from vanilla's curve ± SE [95%]"] == f"{tested['Δ ± SE']} {tested['95% interval']}"
        assert summary["Δ − control ± SE [95%]"] == f"{tested['Δ − control ± SE']} {tested['95% interval 2']}"
        assert summary["seeds"] == tested["seeds"]


def test_without_snapshots_of_vanilla_there_is_no_curve(tmp_path):
    """A grid that reads its adapters only at the end has no curve: no section, and the verdict says why."""
    grids = json.loads(open(write_experiment(tmp_path)).read())["grids"]
    grids["curves"]["variants"] = [{}]
    path = write_experiment(tmp_path, grids=grids)
    write_results(path)
    report = render_frontier(collect_study(load_experiment(path)), None)
    assert HEADING not in report
    assert row(section(report, "Verdict"), table=2, arm="IMSM-LoRA")["Δ from vanilla's curve ± SE [95%]"] == (
        "no snapshots of vanilla"
    )


def test_the_bootstrap_tests_are_computed_once_per_study_and_read_again(tmp_path):
    """The verdict and the sections ask for the same tests: the second ask returns the first's result, which
    a fresh study computes to the same numbers (the bootstrap is seeded)."""
    from imsm.experiment.report.frontier_lambda import line_tests

    path = write_experiment(tmp_path)
    write_results(path)
    first, again = collect_study(load_experiment(path)), collect_study(load_experiment(path))
    for tests in (curve_tests, line_tests):
        once = tests(first, "accuracy")
        assert tests(first, "accuracy") is once
        assert [t.comparison for t in tests(again, "accuracy")] == [t.comparison for t in once]
