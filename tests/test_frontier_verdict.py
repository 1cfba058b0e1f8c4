"""`imsm frontier`'s verdict at the final length: a summary whose every number is a row or cell of the
section that computes it in full (Between arms, the λ line's tests, The gate), on the synthetic studies
of test_frontier.py (one method, with IMSM-LoRA's gate weights) and test_frontier_methods.py (LoRA and
DoRA, DoRA with no λ line)."""

from __future__ import annotations

import json

import pytest

from imsm.experiment import runner
from imsm.experiment.report.frontier import render_frontier
from imsm.experiment.report.frontier_study import collect_study
from imsm.experiment.spec import load_experiment
from test_frontier import (
    HELD_OUT,
    STEPS,
    numbers,
    row,
    section,
    tables,
    write_experiment,
    write_held_out_study,
    write_mechanism_study,
    write_results,
)
from test_frontier_methods import methods_study
from test_frontier_nll import nll_study

STEP = str(STEPS)
GOLD, ACCURACY = "pooled gold prob.", "pooled accuracy"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return render_frontier(collect_study(load_experiment(write_mechanism_study(tmp_path_factory.mktemp("v")))), None)


@pytest.fixture(scope="module")
def methods_report(tmp_path_factory):
    return render_frontier(methods_study(tmp_path_factory.mktemp("verdict-methods")), None)


@pytest.fixture(scope="module")
def nll_report(tmp_path_factory):
    """The target scored by its gold NLL (lower is better): its rows compare gains."""
    return render_frontier(collect_study(load_experiment(nll_study(tmp_path_factory.mktemp("verdict-nll")))), None)


def test_the_verdict_follows_the_probes_and_comes_before_the_curves(report):
    assert report.index("| probe |") < report.index("## Verdict, at the final length") < report.index("## Curves")
    verdict = section(report, "Verdict")
    comparisons = [r["comparison"] for r in tables(verdict)[0]]
    # The vanilla adapter first, then each declared free baseline; neither the other gated arm, nor the
    # tuned branch alone (which Between arms also compares), nor a shorter length.
    assert comparisons == [
        "IMSM-LoRA − LoRA",
        "IMSM-LoRA − LoRA λ=0.5",
        "IMSM-LoRA − untrained mix",
        "IMSM-mean − LoRA",
        "IMSM-mean − LoRA λ=0.5",
        "IMSM-mean − untrained mix",
    ]
    assert {r["steps"] for r in tables(verdict)[0]} == {STEP}


@pytest.mark.parametrize("which", ["report", "methods_report", "nll_report"])
def test_each_comparison_is_the_between_arms_rows_it_summarises(which, request):
    report = request.getfixturevalue(which)
    verdict, between = section(report, "Verdict"), section(report, "Between arms")
    target_header = next(h for h in tables(verdict)[0][0] if h.startswith("Δ mrpc"))
    for summary in tables(verdict)[0]:
        match = {"comparison": summary["comparison"], "steps": STEP}
        target = row(between, score=target_header.removeprefix("Δ ").removesuffix(" ± SE") + " (target)", **match)
        gold, accuracy = row(between, score=GOLD, **match), row(between, score=ACCURACY, **match)
        assert summary[target_header] == target["Δ ± SE"]
        assert summary["Δ pooled gold prob. ± SE"] == gold["Δ ± SE"]
        assert summary["Δ pooled accuracy ± SE"] == accuracy["Δ ± SE"]
        assert summary["seeds"] == gold["seeds"] and summary["p (gold prob., by seed)"] == gold["p"]


def test_the_lambda_cells_are_the_lambda_sections_tests(report):
    verdict, frontier = section(report, "Verdict"), section(report, "Against the λ frontier")
    lines = tables(verdict)[1]
    assert [(r["arm"], r["score"]) for r in lines] == [
        (a, s) for a in ("IMSM-LoRA", "IMSM-mean") for s in (GOLD, ACCURACY)
    ]
    for summary in lines:
        forgetting = "forgetting (gold prob.)" if summary["score"] == GOLD else "forgetting (accuracy)"
        tested = row(frontier, table=2, arm=summary["arm"], steps=STEP, score=forgetting)
        assert summary["Δ from the λ line ± SE [95%]"] == f"{tested['Δ ± SE']} {tested['95% interval']}"
        assert summary["control: vanilla's own Δ"] == tested["control: vanilla adapter's own Δ ± SE [95%]"]
        assert summary["Δ − control ± SE [95%]"] == f"{tested['Δ − control ± SE']} {tested['95% interval 2']}"
        assert summary["seeds"] == tested["seeds"]
    # IMSM-LoRA forgets 2.5 points of gold probability fewer than the line at its gain: not a zero row.
    assert row(verdict, table=1, arm="IMSM-LoRA", score=GOLD)["Δ from the λ line ± SE [95%]"].startswith("-2.50")


def test_the_gate_cells_are_the_gate_sections(report):
    verdict, gate = section(report, "Verdict"), section(report, "The gate")
    learned = row(verdict, table=3, arm="IMSM-LoRA")
    assert learned["gate on target"] == row(gate, arm="IMSM-LoRA", steps=STEP)["mrpc (target)"] == "0.200 (0.000)"
    # arc_easy and sciq (the pooled probes with weights) each 0.6 ± 0.1, so the pool too.
    assert learned["gate on pooled probes"] == "0.600 (0.100)"
    assert row(verdict, table=3, arm="IMSM-mean")["gate on target"] == "0.5 fixed"


def test_the_pooled_gate_weighs_every_pooled_question_once(tmp_path):
    path = write_mechanism_study(tmp_path)
    experiment = load_experiment(path)
    for cell in (c for c in experiment.cells if c.config["fusion"] == "imsm"):
        file = runner.cell_result_path(experiment, cell)
        result = json.loads(file.read_text())
        if "sciq" in result["questions"]:
            result["questions"]["sciq"]["gate_frozen_weight"] = [0.9] * len(result["questions"]["sciq"]["index"])
        file.write_text(runner.result_text(result))
    verdict = section(render_frontier(collect_study(load_experiment(path)), None), "Verdict")
    pooled = row(verdict, table=3, arm="IMSM-LoRA")["gate on pooled probes"]
    assert pooled != "0.600 (0.100)" and pooled.startswith("0.7")  # arc_easy 0.6 and sciq 0.9, 40 questions each


def test_a_method_without_a_lambda_line_says_so(methods_report):
    verdict = section(methods_report, "Verdict")
    dora = [r for r in tables(verdict)[1] if r["arm"] == "IMSM-DoRA"]
    assert len(dora) == 1 and dora[0]["Δ from the λ line ± SE [95%]"] == "no λ line"
    assert {r["arm"] for r in tables(verdict)[1]} == {"IMSM-DoRA", "IMSM-LoRA"}
    assert row(verdict, comparison="IMSM-DoRA − DoRA, untrained mix")  # its free baseline is still compared


def test_a_study_without_a_gated_arm_says_so_in_one_line(tmp_path):
    grids = json.loads(open(write_experiment(tmp_path)).read())["grids"]
    for grid in grids.values():
        grid["fusion"] = [f for f in grid.get("fusion", ["none"]) if f == "none"] or ["none"]
    path = write_experiment(tmp_path, grids=grids)
    write_results(path)
    report = render_frontier(collect_study(load_experiment(path)), None)
    verdict = section(report, "Verdict").strip().splitlines()
    assert verdict[1:] == ["", "No gated arm to judge (no arm trained with a fusion other than none)."]
    assert "## Curves" in report and "## Against the λ frontier" in report


def test_a_held_out_probe_s_comparison_is_in_the_verdict(report, tmp_path):
    """The slice on which vanilla's losses are tested (GSM8K's `arc_easy@300`) is what the study asks
    about, so the verdict shows each comparison on it, as Between arms computes it."""
    held_out = render_frontier(collect_study(load_experiment(write_held_out_study(tmp_path))), None)
    verdict, between = section(held_out, "Verdict"), section(held_out, "Between arms")
    header = f"Δ {HELD_OUT} gold prob. ± SE (held out)"
    summaries = tables(verdict)[0]
    assert len(summaries) == 6 and "held-out probe" in verdict
    for summary in summaries:
        match = {"comparison": summary["comparison"], "steps": STEP}
        assert summary[header] == row(between, score=f"{HELD_OUT} gold_probability", **match)["Δ ± SE"]
    # IMSM-LoRA keeps the slice's questions that LoRA loses (see test_frontier.py's held-out test).
    assert numbers(row(verdict, comparison="IMSM-LoRA − LoRA")[header])[0] > 0
    assert not any(h.endswith("(held out)") for h in tables(section(report, "Verdict"))[0][0])
