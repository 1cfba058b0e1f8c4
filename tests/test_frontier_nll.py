"""`imsm frontier` with a lower-is-better learning axis: the target scored by the gold answer's NLL.

The synthetic study of test_frontier.py, with each target question's gold NLL 3 − 2 × (answered
right): Base (half right) has 2.0 nats, and an arm's gain Base − NLL is 2 × (its accuracy − 0.5).
The gain is an increasing affine map of the accuracy, so the λ line seen in gains is the accuracy
study's line stretched: every arm is matched where the accuracy study matches it, with the same
forgetting and the same Δ. Read the other way round (NLL as if higher were better) the line would
run backwards and the matches would differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imsm.cli import main
from imsm.errors import IMSMError
from imsm.experiment import runner
from imsm.experiment.report.frontier import render_frontier
from imsm.experiment.report.frontier_cells import signed, standard_error
from imsm.experiment.report.frontier_lambda import frontier_rows, lambda_line, line_tests
from imsm.experiment.report.frontier_line import BEYOND
from imsm.experiment.report.frontier_study import LEARNING, collect_study, point_scores
from imsm.experiment.spec import load_experiment
from imsm.metrics import LOWER_IS_BETTER
from test_frontier import FRONTIER, STEPS, numbers, row, section, write_experiment, write_results


def nll_of(accuracy: float) -> float:
    return 3.0 - 2.0 * accuracy


def add_gold_nll(path: str) -> None:
    """Give every mrpc entry of the results (Base, cells, variants) its gold NLL, question by question."""
    experiment = load_experiment(path)

    def add(metrics: dict, columns: dict) -> None:
        columns["gold_nll"] = [nll_of(a) for a in columns["accuracy"]]
        metrics["gold_nll"] = sum(columns["gold_nll"]) / len(columns["gold_nll"])

    base = runner.original_path(experiment, "mrpc")
    result = json.loads(base.read_text())
    add(result["metrics"], result["questions"])  # the base row holds one task, unkeyed
    base.write_text(runner.result_text(result))
    for cell in experiment.cells:
        file = runner.cell_result_path(experiment, cell)
        result = json.loads(file.read_text())
        for part in [result, *(result.get("variants") or {}).values()]:
            add(part["metrics"]["mrpc"], part["questions"]["mrpc"])
        file.write_text(runner.result_text(result))


def nll_study(tmp_path: Path, metric: str | None = "gold_nll") -> str:
    frontier = {**FRONTIER, "metric": metric} if metric else FRONTIER
    path = write_experiment(tmp_path, frontier=frontier)
    write_results(path)
    add_gold_nll(path)
    return path


@pytest.fixture(scope="module")
def study_path(tmp_path_factory):
    return nll_study(tmp_path_factory.mktemp("frontier-nll"))


def test_gold_nll_is_lower_is_better_and_read_as_its_gain_over_base(study_path):
    assert {"gold_nll", "drift_nll", "drift_kl"} <= LOWER_IS_BETTER and "gold_log_likelihood" not in LOWER_IS_BETTER
    study = collect_study(load_experiment(study_path))  # the metric comes from the file's frontier section
    assert study.metric == "gold_nll" and study.lower_is_better
    lora = next(p for p in study.points if study.label(p.arm) == "LoRA" and p.final and p.seed == 0)
    scores = point_scores(study, lora)
    assert scores[("mrpc", "gold_nll")] == pytest.approx(nll_of(0.9))  # the NLL itself, as stored
    assert scores[(LEARNING, "gold_nll")] == pytest.approx(2.0 - nll_of(0.9))  # gain = Base − arm
    assert point_scores(study, study.base)[(LEARNING, "gold_nll")] == 0.0


def test_the_arm_with_the_lower_nll_has_the_larger_gain_and_the_line_rises_with_it(study_path):
    study = collect_study(load_experiment(study_path))
    line = lambda_line(study, "accuracy")
    assert [lam for lam, _ in line] == [0.0, 0.25, 0.5, 0.75, 1.0]
    gains = [point.target for _, point in line]
    assert gains == pytest.approx([2 * (accuracy - 0.5) for accuracy in (0.5, 0.6, 0.7, 0.8, 0.9)])
    assert gains == sorted(gains)  # the more the adapter is scaled in, the lower its NLL


def test_arms_are_matched_at_the_same_gain_as_on_the_accuracy_axis(study_path, tmp_path):
    by_nll = collect_study(load_experiment(study_path))
    by_accuracy = collect_study(load_experiment(study_path), metric="accuracy")  # --metric wins over the file
    assert by_accuracy.metric == "accuracy" and not by_accuracy.lower_is_better

    def placed(study):
        return {(p.label, p.length): (p.target, p.forgetting, at) for p, at in frontier_rows(study, "accuracy")}

    nll, accuracy = placed(by_nll), placed(by_accuracy)
    assert nll.keys() == accuracy.keys()
    for key, (gain, forgetting, at) in nll.items():
        target, same_forgetting, same_at = accuracy[key]
        assert gain == pytest.approx(2 * (target / 100 - 0.5))
        assert (forgetting, at) == (pytest.approx(same_forgetting), (pytest.approx(same_at[0]), same_at[1]))
    # IMSM-LoRA: λ = 0.5's gain, forgetting 5 points instead of 10; IMSM-mean after 10 steps has the
    # lowest NLL of all, past the line's best gain (an NLL read as higher-is-better would put it below).
    gain, forgetting, (at, _) = nll[("IMSM-LoRA", STEPS)]
    assert gain == pytest.approx(0.4) and forgetting - at == pytest.approx(-5)
    assert nll[("IMSM-mean", 10)][2][1] == BEYOND
    tests = {(by_nll.label(t.arm), t.length): t.comparison for t in line_tests(by_nll, "accuracy")}
    same = {(by_accuracy.label(t.arm), t.length): t.comparison for t in line_tests(by_accuracy, "accuracy")}
    for key, comparison in tests.items():
        assert comparison.deltas == pytest.approx(same[key].deltas) and comparison.places == same[key].places


def test_the_report_says_lower_is_better_and_shows_gains(study_path, tmp_path):
    report = render_frontier(collect_study(load_experiment(study_path)), tmp_path / "plots")
    assert "scored by gold NLL of the target (nats, lower is better; gain = Base − arm)" in report
    curve = row(section(report, "Curves"), arm="LoRA", steps="40")
    assert numbers(curve["mrpc gold_nll (target, lower is better)"]) == [1.2, 0.0]  # the NLL itself
    vanilla = row(section(report, "Against Base"), arm="LoRA", steps="40")
    assert numbers(vanilla["gain mrpc (Base − arm) ± SE"])[0] == pytest.approx(0.8)  # positive: learned
    between = row(
        section(report, "Between arms"),
        comparison="IMSM-LoRA − LoRA",
        steps="40",
        score="mrpc gold_nll gain (Base − arm) (target)",
    )
    assert numbers(between["Δ ± SE"])[0] == pytest.approx(-0.4) and numbers(between["Δ seed means"]) == [-0.4]
    # Differences in nats are written to 3 places, as the NLL itself is.
    assert vanilla["gain mrpc (Base − arm) ± SE"].startswith("+0.800 ± ")
    assert between["Δ ± SE"].startswith("-0.400 ± ") and between["Δ seed means"] == "-0.400"
    frontier = section(report, "Against the λ frontier")
    assert row(frontier, λ="1")["mrpc gold_nll gain (Base − arm)"] == "0.800"
    placed = row(frontier, table=1, arm="IMSM-LoRA", steps="40")
    assert placed["mrpc gold_nll gain (Base − arm)"] == "0.400 ± 0.000" and numbers(placed["Δ (acc.)"]) == [-5.0]
    assert (tmp_path / "plots" / "frontier.png").stat().st_size > 1000


def test_the_command_lines_metric_overrides_the_files(study_path, tmp_path, capsys):
    output = tmp_path / "by-accuracy.md"
    assert main(["frontier", study_path, "--output", str(output), "--metric", "accuracy"]) == 0
    text = output.read_text()
    assert "scored by accuracy;" in text and "--metric accuracy" in text and "lower is better" not in text
    assert main(["frontier", study_path, "--output", str(output), "--metric", "gold_nl"]) == 2
    assert "--metric: unknown target metric 'gold_nl': did you mean 'gold_nll'?" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("metric", "changes", "message"),
    [
        ("gold_nl", {}, r"frontier.metric: unknown target metric 'gold_nl': did you mean 'gold_nll'\?"),
        ("drift_kl", {}, r"frontier.metric: unknown target metric 'drift_kl'"),  # a probe's score, not a target's
        (3, {}, r"frontier.metric: must name a score of the target such as accuracy or gold_nll, got 3"),
        (
            "accuracy",
            {"eval": {"no_generate": ["mrpc"]}},
            r"frontier.metric: accuracy scores generated answers, but mrpc is evaluated without generation",
        ),
        ("gold_nll", {"eval": {"likelihood": False}}, r"frontier.metric: gold_nll comes from the likelihood pass"),
    ],
)
def test_a_bad_frontier_metric_is_refused_with_the_field_and_the_fix(tmp_path, metric, changes, message):
    with pytest.raises(IMSMError, match=message):
        load_experiment(write_experiment(tmp_path, frontier={**FRONTIER, "metric": metric}, **changes))


def test_a_file_metric_the_results_lack_is_refused_with_both_ways_to_fix_it(tmp_path):
    study = load_experiment(nll_study(tmp_path, metric="yes_no_auc"))  # a target score, but mrpc's rows lack it
    with pytest.raises(IMSMError, match=r"metric 'yes_no_auc' is not among mrpc's metrics .*frontier.metric"):
        collect_study(study)


def test_a_difference_in_nats_keeps_its_thousandths_and_one_in_points_its_hundredths():
    # GSM8K's gold NLL: IMSM-DoRA − DoRA was −0.03 nats with an SE of 0.004, which 2 places wrote "± 0.00".
    assert signed("gold_nll", -0.0312) == "-0.031" and standard_error("gold_nll", 0.0042) == "0.004"
    assert signed("drift_kl", 0.0) == "+0.000"
    assert signed("accuracy", -0.0312) == "-3.12" and standard_error("accuracy", 0.0042) == "0.42"
