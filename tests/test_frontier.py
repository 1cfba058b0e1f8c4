"""`imsm frontier`: learning against forgetting, on hand-made results whose every number is known.

Each arm of the synthetic experiment answers the target's first `target × 20` questions right and
loses `lost` of the base model's right answers in the pooled probes (80 questions: arc_easy, then
sciq), so its pooled forgetting is lost / 80; piqa sits at chance, and loses 5 answers that must
never reach the pool.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from imsm.checked_files import DamagedFile
from imsm.cli import main
from imsm.errors import IMSMError
from imsm.experiment import runner
from imsm.experiment.report.frontier import render_frontier
from imsm.experiment.report.frontier_chance import chance_accuracy
from imsm.experiment.report.frontier_compare import flips
from imsm.experiment.report.frontier_lambda import FrontierPoint, frontier_at, frontier_rows, line_tests
from imsm.experiment.report.frontier_line import (
    BELOW,
    BEYOND,
    ON,
    REPLICATES,
    SeedPair,
    compare_with_line,
    matched_score,
)
from imsm.experiment.report.frontier_study import FORGETTING, POOL, collect_study, point_scores
from imsm.experiment.spec import load_experiment
from imsm.tasks import get_task

TARGET_QUESTIONS, PROBE_QUESTIONS, DRIFT_QUESTIONS = 20, 40, 10
BASE_RIGHT = {"arc_easy": 24, "sciq": 32, "piqa": 20}  # piqa: 50%, two options: chance
PROBES = ["arc_easy", "sciq", "piqa", "sciq_support", "webq"]
# (trained fusion, variant key) -> (target accuracy, pooled right answers lost)
PLAN = {
    ("none", ""): (0.90, 24),  # λ = 1
    ("none", "step=10"): (0.70, 12),  # + (seed - 1): a spread over seeds
    ("none", "adapter_scale=0.25"): (0.60, 4),
    ("none", "adapter_scale=0.5"): (0.70, 8),
    ("none", "adapter_scale=0.75"): (0.80, 14),
    ("none", "fusion=mean"): (0.55, 4),
    ("none", "intruders=0.5"): (0.80, 10),  # peft's mitigation: below the λ line (forgets 12.5 there)
    ("imsm", ""): (0.70, 4),  # the λ = 0.5 gain, forgetting 5 points instead of 10
    ("imsm", "step=10"): (0.60, 2),
    ("mean", ""): (0.75, 11),  # halfway between λ = 0.5 (10 points) and 0.75 (17.5): on the line
    ("mean", "step=10"): (0.95, 6),  # past LoRA's gain: beyond the line
    ("imsm", "fusion=none"): (0.75, 30),  # the tuned branch alone: compensates for the mix, forgets more
    ("mean", "fusion=none"): (0.80, 28),
}
STEPS = 40
# The synthetic study's facts, as configs/forgetting.yaml declares its own.
FRONTIER = {
    "labels": {"none": "{method}", "imsm": "IMSM-{method}", "mean": "IMSM-mean"},
    "baselines": [{"adapter_scale": 0.5}, {"fusion": "mean", "label": "untrained mix"}],
}


def write_experiment(tmp_path, **changes) -> str:
    config = {
        "name": "forgetting",
        "results": str(tmp_path / "results"),
        "work": str(tmp_path / "work"),
        "original": ["mrpc", *PROBES],
        "grids": {
            "curves": {
                "task": ["mrpc"],
                "peft": ["lora"],
                "fusion": ["none", "imsm", "mean"],
                "seed": [0, 1, 2],
                "evaluate": ["target", *PROBES],
                "variants": [{}, {"step": 10}],
            },
            "posthoc": {
                "task": ["mrpc"],
                "fusion": ["none"],
                "seed": [0, 1, 2],
                "evaluate": ["target", *PROBES],
                "variants": [{"adapter_scale": s} for s in (0.25, 0.5, 0.75)] + [{"fusion": "mean"}],
            },
        },
        "frontier": FRONTIER,
        **changes,
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return str(path)


def choice_columns(right: int, lost: int) -> dict[str, list]:
    accuracy = [1.0 if lost <= i < right else 0.0 for i in range(PROBE_QUESTIONS)]
    return {
        "index": list(range(PROBE_QUESTIONS)),
        "accuracy": accuracy,
        "gold_probability": [0.3 + 0.5 * a for a in accuracy],
        "gold_log_likelihood": [-2.0 + a for a in accuracy],
    }


def evaluations(target: float, lost: int, tasks) -> tuple[dict, dict]:
    """(metrics, questions) per task of `tasks`, as runner.run_cell writes them."""
    arc = min(lost, BASE_RIGHT["arc_easy"])
    questions = {
        "mrpc": {
            "index": list(range(TARGET_QUESTIONS)),
            "accuracy": [1.0 if i < round(target * TARGET_QUESTIONS) else 0.0 for i in range(TARGET_QUESTIONS)],
        },
        "arc_easy": choice_columns(BASE_RIGHT["arc_easy"], arc),
        "sciq": choice_columns(BASE_RIGHT["sciq"], lost - arc),
        "piqa": choice_columns(BASE_RIGHT["piqa"], 5 if lost else 0),
        "sciq_support": {
            "index": list(range(DRIFT_QUESTIONS)),
            "drift_kl": [0.01 * lost] * DRIFT_QUESTIONS,
            "drift_nll": [2.0 + 0.01 * lost] * DRIFT_QUESTIONS,
        },
        "webq": {"index": [0, 1], "hit@5": [1.0, 0.0 if lost else 1.0], "gold_nll": [1.0 + 0.1 * lost] * 2},
    }
    metrics = {
        task: {name: sum(values) / len(values) for name, values in columns.items() if name != "index"}
        for task, columns in questions.items()
    }
    metrics["mrpc"]["f1"] = 0.5
    # A slice (arc_easy@40) answers as its probe does: other questions, the same counts.
    whole = {t: t.partition("@")[0] for t in tasks}
    return {t: metrics[whole[t]] for t in tasks}, {t: questions[whole[t]] for t in tasks}


def write_results(path: str, skip=lambda cell, key: False, plan_of=lambda cell: PLAN, seed_spread=True) -> None:
    """The original rows and every cell's result.json; `skip(cell, key)` leaves an evaluation out,
    `plan_of(cell)` gives the cell's plan (PLAN's keys), and `seed_spread` makes the vanilla
    snapshot's forgetting differ by seed."""
    experiment = load_experiment(path)
    metrics, questions = evaluations(0.5, 0, experiment.original)
    for task in experiment.original:
        file = runner.original_path(experiment, task)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(runner.result_text({"task": task, "metrics": metrics[task], "questions": questions[task]}))
    for cell in experiment.cells:
        fusion, seed = cell.config["fusion"], cell.config["seed"]
        result = {"cell": cell.name, "settings": cell.config, "training": {"steps": STEPS}, "variants": {}}
        for key, tasks in [("", cell.evaluate), *cell.variants.items()]:
            if skip(cell, key):
                continue
            target, lost = plan_of(cell)[(fusion, key)]
            lost += seed - 1 if seed_spread and (fusion, key) == ("none", "step=10") else 0
            part_metrics, part_questions = evaluations(target, lost, tasks)
            part = {"metrics": part_metrics, "evaluation": {}, "questions": part_questions}
            result.update(part) if not key else result["variants"].__setitem__(key, part)
        file = runner.cell_result_path(experiment, cell)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(runner.result_text(result))


@pytest.fixture(scope="module")
def study_path(tmp_path_factory):
    path = write_experiment(tmp_path_factory.mktemp("frontier"))
    write_results(path)
    return path


def test_a_probe_at_chance_stays_out_of_the_pool(study_path):
    study = collect_study(load_experiment(study_path))
    assert study.target == "mrpc" and study.metric == "accuracy"
    assert study.pooled_tasks == ["arc_easy", "sciq"]
    piqa = next(p for p in study.probes if p.task == "piqa")
    assert piqa.chance == 0.5 and piqa.exclusion == "base at chance"
    # piqa's 5 lost answers would make IMSM-LoRA's forgetting 9 / 120; pooled over 80 it is 4 / 80.
    imsm = next(p for p in study.points if study.label(p.arm) == "IMSM-LoRA" and p.final and p.seed == 0)
    assert point_scores(study, imsm)[(FORGETTING, "accuracy")] == pytest.approx(4 / 80)


HELD_OUT = "arc_easy@40"


def write_held_out_study(tmp_path):
    """The synthetic study with `HELD_OUT`, a slice of ARC-Easy, read by Base and every arm."""
    path = write_experiment(tmp_path)
    config = json.loads(open(path).read())
    config["original"].append(HELD_OUT)
    for grid in config["grids"].values():
        grid["evaluate"].append(HELD_OUT)
    open(path, "w").write(json.dumps(config))
    write_results(path)
    return path


def test_a_slice_of_a_probe_is_held_out_of_the_pool_and_measured_against_base(study_path, tmp_path):
    study = collect_study(load_experiment(write_held_out_study(tmp_path)))
    # Base answers 24 of its 40 questions (chance 25%): it would be pooled, were it not a slice.
    assert study.pooled_tasks == ["arc_easy", "sciq"]
    held = next(p for p in study.probes if p.task == HELD_OUT)
    assert held.held_out and held.exclusion == "held out" and (held.questions, held.base_accuracy) == (40, 0.6)
    imsm = next(p for p in study.points if study.label(p.arm) == "IMSM-LoRA" and p.final and p.seed == 0)
    assert point_scores(study, imsm)[(FORGETTING, "accuracy")] == pytest.approx(4 / 80)  # not 8 / 120
    report = render_frontier(study, None)
    assert row(report, probe=HELD_OUT)["pooled"] == "held out" and row(report, probe="arc_easy")["pooled"] == "yes"
    assert f"{HELD_OUT} accuracy" in tables(section(report, "Curves"))[0][0]
    # Every arm at every length against Base on each probe, the held-out one included: IMSM-LoRA
    # loses 4 of its 40 questions, LoRA 24.
    probes = section(report, "Each probe against Base")
    gated = row(probes, probe=HELD_OUT, arm="IMSM-LoRA", steps="40")
    assert gated["pooled"] == "held out" and gated["questions × seeds"] == "40 × 3"
    assert numbers(gated["Δ accuracy ± SE"])[0] == -10.0
    assert numbers(row(probes, probe=HELD_OUT, arm="LoRA", steps="40")["Δ accuracy ± SE"])[0] == -60.0
    assert "held-out probe" in probes
    # Between arms, the held-out questions follow the pooled scores: IMSM-LoRA keeps 50 points more of them.
    between = section(report, "Between arms, at the same length")
    versus = row(between, comparison="IMSM-LoRA − LoRA", steps="40", score=f"{HELD_OUT} accuracy")
    assert numbers(versus["Δ ± SE"])[0] == 50.0 and versus["seeds"] == "3"
    assert row(between, comparison="IMSM-LoRA − LoRA", steps="40", score=f"{HELD_OUT} gold_probability")
    assert "held-out probe" not in render_frontier(collect_study(load_experiment(study_path)), None)


def test_a_held_out_slice_an_arm_is_not_read_on_is_left_out_of_its_comparisons(tmp_path):
    """A gated adapter's tuned branch read alone on the pooled probes only (as the GSM8K grid reads
    it): its comparisons have no held-out rows, rather than rows of dashes."""
    path = write_held_out_study(tmp_path)
    config = json.loads(open(path).read())
    config["grids"]["alone"] = {**config["grids"]["curves"], "fusion": ["imsm"], "variants": [{"fusion": "none"}]}
    config["grids"]["alone"]["evaluate"] = ["target", "arc_easy", "sciq", "piqa"]
    open(path, "w").write(json.dumps(config))
    write_results(path)
    between = tables(section(render_frontier(collect_study(load_experiment(path)), None), "Between arms"))[0]
    alone = [r for r in between if "tuned branch alone" in r["comparison"]]
    assert {r["score"] for r in alone} >= {"pooled accuracy", "pooled gold prob."}
    assert not any(HELD_OUT in r["score"] for r in alone)
    assert any(HELD_OUT in r["score"] for r in between if r["comparison"] == "IMSM-LoRA − LoRA")


def test_each_probe_is_tested_against_base_pooled_or_not(study_path):
    report = render_frontier(collect_study(load_experiment(study_path)), None)
    probes = section(report, "Each probe against Base")
    # Final LoRA loses all 24 of Base's right ARC-Easy answers, none of SciQ's and 5 of PIQA's 40,
    # which is at chance and so outside the pool, yet still reported.
    arc = row(probes, probe="arc_easy", arm="LoRA", steps="40")
    assert arc["pooled"] == "yes" and arc["questions × seeds"] == "40 × 3"
    assert numbers(arc["Δ accuracy ± SE"])[0] == -60.0 and numbers(arc["Δ gold prob. ± SE"])[0] == -30.0
    assert numbers(row(probes, probe="sciq", arm="LoRA", steps="40")["Δ accuracy ± SE"])[0] == 0.0
    piqa = row(probes, probe="piqa", arm="LoRA", steps="40")
    assert piqa["pooled"] == "no: base at chance" and numbers(piqa["Δ accuracy ± SE"])[0] == -12.5
    assert not any(r["probe"] == "sciq_support" for r in tables(probes)[0])  # drift is not multiple choice


def test_forgetting_is_base_minus_the_point(study_path):
    study = collect_study(load_experiment(study_path))
    lora = next(p for p in study.points if study.label(p.arm) == "LoRA" and p.final and p.seed == 0)
    scores = point_scores(study, lora)
    assert scores[(POOL, "accuracy")] == pytest.approx((56 - 24) / 80)
    assert scores[(FORGETTING, "accuracy")] == pytest.approx(24 / 80)  # lost answers: positive
    assert scores[(FORGETTING, "gold_probability")] == pytest.approx(0.5 * 24 / 80)
    assert (FORGETTING, "accuracy") not in point_scores(study, study.base)


def line(*points: tuple[float, float]) -> list[tuple[float, FrontierPoint]]:
    return [(i / 4, FrontierPoint(f"λ={i / 4}", None, 3, t, 0.0, f, 0.0)) for i, (t, f) in enumerate(points)]


def test_frontier_interpolates_between_lambda_points():
    frontier = line((50, 0), (60, 5), (70, 10), (80, 20), (90, 30))
    assert frontier_at(frontier, 75, 15) == pytest.approx((15, ON))  # a point there forgetting 15: difference 0
    assert frontier_at(frontier, 70, 12) == pytest.approx((10, ON))  # on a λ point
    assert frontier_at(frontier, 95, 12) == pytest.approx((30, BEYOND))  # past the best gain: set against λ = 1
    assert frontier_at(frontier, 45, 12) == (0, BELOW)  # under Base's gain: set against Base
    # A gain that falls again past some λ (noise): the points are joined in order of gain, so λ = 0.5
    # (gain 70, forgetting 30) lies between Base and λ = 0.25, and every point is on the line.
    bent = line((50, 0), (80, 10), (70, 30))
    assert frontier_at(bent, 75, 0) == pytest.approx((20, ON))  # halfway from λ = 0.5 to 0.25
    assert frontier_at(bent, 60, 0) == pytest.approx((15, ON))  # halfway from Base to λ = 0.5
    for target, forgetting in [(50, 0), (80, 10), (70, 30)]:
        assert frontier_at(bent, target, forgetting) == pytest.approx((forgetting, ON))
    assert frontier_at(bent, 85, 0) == (10, BEYOND)  # past the best gain: the point with it, λ = 0.25


def test_every_point_of_the_line_lies_on_it_in_any_order():
    # Gains in every order, ties included: an arm that is one of the line's points gets Δ = 0.
    rng = np.random.default_rng(1)
    for _ in range(200):
        targets = rng.integers(0, 6, size=5) / 10  # few values: ties are common
        scores = rng.random(5)
        for t, s in zip(targets, scores, strict=True):
            assert matched_score(targets, scores, t, s) == (pytest.approx(s), ON)


def test_tied_gains_count_as_their_mean_except_exactly_at_the_tie():
    # λ = 0.75 and 1 reach the same gain (80) forgetting 10 and 20.
    targets, scores = [50, 70, 80, 80], [0, 6, 10, 20]
    assert matched_score(targets, scores, 80, 20) == (20, ON)  # the vanilla adapter itself: on its line
    assert matched_score(targets, scores, 80, 10) == (10, ON)  # λ = 0.75 itself
    assert matched_score(targets, scores, 80, 14) == (10, ON)  # exactly at the tie: the nearest tied point
    assert matched_score(targets, scores, 75, 0) == (pytest.approx(10.5), ON)  # halfway from 6 to the mean 15
    assert matched_score(targets, scores, 90, 0) == (15, BEYOND)  # past the tied top: their mean
    assert matched_score([50, 50, 80], [0, 4, 20], 40, 0) == (2, BELOW)  # under tied lowest gains: their mean
    # Gains that differ by an ulp (a weighted mean summed in another order) are one gain.
    assert matched_score([0.0, 7 / 80 + 1 / 80, 8 / 80], [1, 2, 3], 0.1, 2.9) == (3, ON)


def test_past_the_top_the_point_with_the_best_gain_counts_whatever_its_lambda():
    # λ = 0.75 out-learns λ = 1 (noise): an arm past both is set against λ = 0.75, the best gain.
    targets, scores = [50, 70, 82, 80], [0, 6, 10, 20]
    assert matched_score(targets, scores, 85, 0) == (10, BEYOND)
    assert matched_score(targets, scores, 81, 0) == (pytest.approx(15), ON)  # between λ = 1 and 0.75


def test_arms_are_placed_against_the_lambda_line(study_path):
    study = collect_study(load_experiment(study_path))
    rows = {(p.label, p.length): (p.forgetting, at) for p, at in frontier_rows(study, "accuracy")}
    assert rows[("LoRA", STEPS)] == (pytest.approx(30), (pytest.approx(30), ON))  # λ = 1 is the line's end
    assert rows[("IMSM-mean", STEPS)] == (pytest.approx(13.75), (pytest.approx(13.75), ON))  # on the line: difference 0
    forgetting, (at, _) = rows[("IMSM-LoRA", STEPS)]
    assert forgetting - at == pytest.approx(-5)  # same gain as λ = 0.5, forgets less: negative
    forgetting, (at, _) = rows[("LoRA", 10)]
    assert (forgetting, forgetting - at) == pytest.approx((15, 5))  # mean of 13.75, 15, 16.25
    # A gain past the line's: set against λ = 1.
    assert rows[("IMSM-mean", 10)] == (pytest.approx(7.5), (pytest.approx(30), BEYOND))
    assert rows[("untrained mix", STEPS)] == (pytest.approx(5), (pytest.approx(2.5), ON))


def test_flips_count_changed_answers_both_ways():
    base = {"index": [0, 1, 2, 3, 4, 5], "accuracy": [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]}
    point = {"index": [5, 0, 1, 2, 3, 4], "accuracy": [0.0, 0.0, 1.0, 1.0, 0.0, None]}  # other order, one unscored
    assert flips(point, base) == (2, 1)  # right → wrong: 0 and 5; wrong → right: 2


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def section(report: str, heading: str) -> str:
    """The report's text from `## heading` to the next `## `."""
    start = report.index(f"## {heading}")
    end = report.find("\n## ", start + 3)
    return report[start : end if end >= 0 else len(report)]


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in `text`, as rows of header -> cell; a repeated header gets its count
    appended ("t", "t 2", ...)."""
    found, lines = [], text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if not (line.startswith("|") and lines[i + 1].startswith("|---")):
            continue
        headers: list[str] = []
        for header in cells(line):
            seen = sum(h == header or h.startswith(f"{header} ") for h in headers)
            headers.append(f"{header} {seen + 1}" if seen else header)
        rows = []
        for line_of_row in lines[i + 2 :]:
            if not line_of_row.startswith("|"):
                break
            rows.append(dict(zip(headers, cells(line_of_row), strict=True)))
        found.append(rows)
    return found


def row(text: str, table: int = 0, **match: str) -> dict[str, str]:
    """The one row of the `table`-th table in `text` whose cells match (keyword `steps` for the
    "steps" column, and so on)."""
    found = [r for r in tables(text)[table] if all(r.get(key) == value for key, value in match.items())]
    assert len(found) == 1, f"{len(found)} rows match {match}"
    return found[0]


def numbers(cell: str) -> list[float]:
    """The numbers a cell shows, in order: "+20.00 ± 9.18" -> [20.0, 9.18], "**3.6**" -> [3.6]."""
    return [float(n) for n in re.findall(r"[-+]?\d+(?:\.\d+)?", cell.replace("−", "-"))]


def test_the_report_shows_every_section(study_path, tmp_path):
    report = render_frontier(collect_study(load_experiment(study_path)), tmp_path / "plots")
    for heading in ("## Curves", "## Post hoc", "## Against Base", "## Between arms", "## Against the λ frontier"):
        assert heading in report
    piqa = row(report, probe="piqa")
    assert [numbers(piqa[k]) for k in ("questions", "Base accuracy", "chance", "2 SE")] == [[40], [50], [50], [15.8]]
    assert piqa["pooled"] == "no: base at chance"
    curve = row(section(report, "Curves"), arm="LoRA", steps="10")
    # (56 - 12 ± 1) / 80 pooled answers right, over 3 seeds.
    assert curve["seeds"] == "3" and numbers(curve["pooled accuracy"]) == pytest.approx([55.0, 1.2])
    assert numbers(curve["mrpc accuracy (target)"]) == [70.0, 0.0]
    against_base = section(report, "Against Base")
    # IMSM-LoRA against Base: 4 of 80 pooled answers lost, in every seed.
    gated = row(against_base, arm="IMSM-LoRA", steps="40")
    assert gated["seeds"] == "3" and numbers(gated["questions (target / pooled)"]) == [20, 80]
    assert numbers(gated["Δ mrpc ± SE"]) == [20.0, 9.18] and numbers(gated["t"]) == [2.2]
    assert numbers(gated["Δ pooled accuracy ± SE"]) == [-5.0, 2.45] and numbers(gated["t 2"]) == [-2.0]
    assert numbers(gated["Δ pooled gold prob. ± SE"]) == [-2.5, 1.23] and numbers(gated["t 3"]) == [-2.0]
    assert numbers(gated["right → wrong"]) == [4.0] and numbers(gated["wrong → right"]) == [0.0]
    vanilla = row(against_base, arm="LoRA", steps="40")
    assert numbers(vanilla["Δ mrpc ± SE"]) == [40.0, 11.24] and vanilla["t"] == "**3.6**"  # |t| >= 3: bold
    assert numbers(vanilla["Δ pooled accuracy ± SE"]) == [-30.0, 5.16] and vanilla["t 2"] == "**-5.8**"
    between = section(report, "Between arms")
    scaled = row(between, comparison="IMSM-LoRA − LoRA λ=0.5", steps="40", score="pooled accuracy")
    assert scaled["questions × seeds"] == "80 × 3" and numbers(scaled["Δ ± SE"]) == [5.0, 2.45]
    assert numbers(scaled["t"]) == [2.0]
    assert row(between, comparison="IMSM-mean − LoRA", steps="40", score="pooled accuracy")
    assert row(between, comparison="IMSM-LoRA − untrained mix", steps="40", score="pooled accuracy")
    frontier = section(report, "Against the λ frontier")
    placed = row(frontier, table=1, arm="IMSM-LoRA", steps="40")
    assert [numbers(placed[k]) for k in ("mrpc accuracy", "forgetting (acc.)", "λ line at this target")] == [
        [70.0, 0.0],
        [5.0, 0.0],
        [10.0],
    ]
    assert numbers(placed["Δ (acc.)"]) == [-5.0]
    beyond = row(frontier, table=1, arm="IMSM-mean", steps="10")
    assert beyond["λ line at this target"] == "30.0 (beyond)" and numbers(beyond["Δ (acc.)"]) == [-22.5]
    assert "2 degrees of freedom with 3 seeds, so p < 0.05 needs |t| > 4.30" in frontier
    tested = row(frontier, table=2, arm="IMSM-LoRA", steps="40", score="forgetting (accuracy)")
    assert numbers(tested["control: vanilla adapter's own Δ ± SE [95%]"]) == [0.0, 0.0, 0.0, 0.0]
    assert tested["Δ − control ± SE"] == tested["Δ ± SE"] and tested["95% interval 2"] == tested["95% interval"]
    assert "Missing" not in report
    assert (tmp_path / "plots" / "frontier.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "frontier-gold.png").stat().st_size > 1000


def test_partial_results_are_listed_as_missing(tmp_path):
    path = write_experiment(tmp_path)
    empty = render_frontier(collect_study(load_experiment(path)), tmp_path / "empty")
    assert not (tmp_path / "empty").exists()  # nothing to draw
    assert "Missing (" in empty and "Base: mrpc" in empty and "Not computable yet" in empty

    def skip(cell, key: str) -> bool:  # seed 2 of IMSM-LoRA never ran its evaluations, λ = 0.75 is not in
        return (cell.config["fusion"] == "imsm" and cell.config["seed"] == 2) or key == "adapter_scale=0.75"

    write_results(path, skip)
    study = collect_study(load_experiment(path))
    report = render_frontier(study, tmp_path / "plots")
    assert "[adapter_scale=0.75]: mrpc, arc_easy" in report and "![frontier]" in report
    assert row(section(report, "Curves"), arm="IMSM-LoRA", steps="40")["seeds"] == "2"  # two seeds, said so
    assert "LoRA λ=0.75" not in report
    rows = {(p.label, p.length): (p.forgetting, at) for p, at in frontier_rows(study, "accuracy")}
    # The line runs from λ = 0.5 to 1 now.
    assert rows[("IMSM-mean", STEPS)] == (pytest.approx(13.75), (pytest.approx(15), ON))


def test_chance_comes_from_the_base_models_rows_where_kept(study_path, tmp_path, monkeypatch):
    monkeypatch.delenv("IMSM_DATA_DIR", raising=False)  # no data directory: the task's usual options
    experiment = load_experiment(write_experiment(tmp_path))
    assert chance_accuracy(experiment, "arc_easy") == (0.25, "usual options")
    experiment.work.mkdir(parents=True)
    rows = [{"index": 0, "choices": ["a", "b", "c"]}, {"index": 1, "choices": ["a", "b", "c", "d", "e"]}]
    (experiment.work / "original.arc_easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    chance, source = chance_accuracy(experiment, "arc_easy")
    assert chance == pytest.approx((1 / 3 + 1 / 5) / 2) and source == "options of the questions"


def test_without_the_base_models_rows_chance_comes_from_the_questions_in_the_data(tmp_path, monkeypatch):
    """The rows stay on the machine that ran the study; the questions are data: the first eval-limit
    of them (here 2 of 3) are read where the file's data directory has them."""
    monkeypatch.delenv("IMSM_DATA_DIR", raising=False)
    data = tmp_path / "data" / "arc_easy"
    data.mkdir(parents=True)
    questions = [["a", "b", "c"], ["a", "b", "c", "d", "e"], ["a", "b"]]
    lines = [
        {"id": str(i), "question": "q?", "choices": {"text": c, "label": list("ABCDE")[: len(c)]}, "answerKey": "A"}
        for i, c in enumerate(questions)
    ]
    (data / "test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    path = write_experiment(tmp_path, data_dir=str(tmp_path / "data"), eval={"limit": 2})
    chance, source = chance_accuracy(load_experiment(path), "arc_easy")
    assert chance == pytest.approx((1 / 3 + 1 / 5) / 2) and source == "options of the questions"
    # No data directory at all: the task's usual options.
    assert chance_accuracy(load_experiment(write_experiment(tmp_path)), "arc_easy") == (0.25, "usual options")


def test_damaged_base_rows_are_refused_with_the_files_to_delete(tmp_path):
    experiment = load_experiment(write_experiment(tmp_path))
    experiment.work.mkdir(parents=True)
    rows = experiment.work / "original.arc_easy.jsonl"
    rows.write_text('{"index": 0, "choices": ["a", "b"]}\n{"index": 1, "choi')
    with pytest.raises(DamagedFile, match=r"original.arc_easy.jsonl at line 2 is cut short .*; delete it \(the report"):
        chance_accuracy(experiment, "arc_easy")


def test_cli_writes_the_report_and_its_plots(tmp_path, capsys):
    path = write_experiment(tmp_path)
    write_results(path)
    assert main(["frontier", path]) == 0
    output = tmp_path / "results" / "frontier.md"
    assert str(output) in capsys.readouterr().out
    text = output.read_text()
    assert "![frontier](frontier.png)" in text and "![frontier-gold](frontier-gold.png)" in text
    for plot in ("frontier.png", "frontier-gold.png"):
        assert (tmp_path / "results" / plot).stat().st_size > 1000


def test_two_reports_in_one_folder_keep_their_own_plots(tmp_path):
    # The plots are named after the report, so a second experiment's report beside the first
    # (docs/results/forgetting/frontier.md and paper-budget.md) leaves the first one's plots alone.
    path = write_experiment(tmp_path)
    write_results(path)
    folder = tmp_path / "results"
    assert main(["frontier", path]) == 0
    first = (folder / "frontier.png").stat().st_mtime_ns
    assert main(["frontier", path, "--output", str(folder / "other.md")]) == 0
    assert "![other](other.png)" in (folder / "other.md").read_text()
    assert (folder / "other-gold.png").stat().st_size > 1000
    assert (folder / "frontier.png").stat().st_mtime_ns == first  # not rewritten


def test_each_seed_is_tested_against_its_own_lambda_line(study_path):
    study = collect_study(load_experiment(study_path))
    tests = {(study.label(t.arm), t.length): t for t in line_tests(study, "accuracy")}
    # LoRA after 10 steps reaches λ = 0.5's gain (70) in every seed, losing 11, 12, 13 answers where
    # λ = 0.5 loses 8: 3, 4 and 5 of 80 more, so the seeds agree (t = 5 / (1.25 / √3)).
    early = tests[("LoRA", 10)]
    assert early.comparison.deltas == pytest.approx([3 / 80, 4 / 80, 5 / 80])
    assert early.comparison.places == [ON, ON, ON] and early.comparison.mean == pytest.approx(4 / 80)
    assert early.by_seed.t == pytest.approx(0.05 / (0.0125 / 3**0.5))
    # IMSM-LoRA keeps 4 of the answers λ = 0.5 loses at the same gain: 4 questions of 80 at -1. The
    # spread is wider than over probe questions alone: in resamples that miss target questions 12 and
    # 13, λ = 0.25 reaches the same gain (and loses only 4 answers, as IMSM-LoRA does).
    gated = tests[("IMSM-LoRA", STEPS)].comparison
    assert gated.mean == pytest.approx(-4 / 80)
    probes_alone = (((4 * 0.95**2 + 76 * 0.05**2) / 79) / 80) ** 0.5
    assert gated.standard_error > 1.1 * probes_alone
    low, high = gated.interval
    assert low < -4 / 80 < high < 1e-9  # the top: resamples that match at λ = 0.25, where Δ is 0
    # The control, LoRA's own Δ on the same replicates, is 0: the arm's Δ − the control's is its Δ.
    assert gated.control.mean == 0.0 and gated.control.interval == (0.0, 0.0)
    assert gated.difference.mean == pytest.approx(gated.mean) and gated.difference.interval == pytest.approx(
        gated.interval
    )
    # Past LoRA's gain in every seed: set against λ = 1, not left out.
    beyond = tests[("IMSM-mean", 10)].comparison
    assert beyond.places == [BEYOND] * 3 and beyond.deltas == pytest.approx([(6 - 24) / 80] * 3)


def pair(line_targets, line_scores, arm_target, arm_score, control: int = -1) -> SeedPair:
    """A seed's line and arm; the control (the vanilla adapter as trained) is the line's last point."""
    arrays = (np.array(v, dtype=float) for v in (line_targets, line_scores, arm_target, arm_score))
    return SeedPair(*arrays, control % len(line_targets))


def test_the_bootstrap_carries_the_noise_of_the_target_match():
    # An arm on the line exactly: its probe scores are the line's, interpolated halfway, on every
    # question, so a test over probe questions alone would see no spread at all. But its target
    # score rests on other questions than the line's points, and resampling them moves the match.
    base, adapter = [1.0] * 10 + [0.0] * 10, [1.0] * 16 + [0.0] * 4  # target 50 and 80
    arm = [0.0] * 4 + [1.0] * 13 + [0.0] * 3  # 65: halfway
    comparison = compare_with_line([pair([base, adapter], [[1.0] * 40, [0.6] * 40], arm, [0.8] * 40)])
    assert comparison.deltas == pytest.approx([0.0]) and comparison.places == [ON]
    assert comparison.standard_error > 0.05
    assert comparison.interval[0] < 0 < comparison.interval[1]
    again = compare_with_line([pair([base, adapter], [[1.0] * 40, [0.6] * 40], arm, [0.8] * 40)])
    assert again == comparison  # a fixed bootstrap seed: the same report from the same results


def noisy_seed(rng, arm_accuracy: float, arm_forgetting: float) -> SeedPair:
    """One seed of a study with noise, shaped like the MRPC one: 200 target and 800 probe questions,
    λ = 0, 0.25, 0.5, 0.75, 1 with a gain that flattens at the top (73.5, 75.5, 75.7) while forgetting
    keeps rising (1.2, 2.5, 4.5 points). Each point answers a question right below its level on a latent
    draw shared by all points (a scaled adapter keeps most answers), and 2% of answers flip at random,
    so noise reverses or ties λ = 0.75 and 1 in many resamples."""
    levels = [0.46, 0.637, 0.735, 0.755, 0.757, arm_accuracy]
    forgetting = [0.0, 0.003, 0.012, 0.025, 0.045, arm_forgetting]
    u, v = rng.random(200), rng.random(800)
    flip = lambda right: np.where(rng.random(right.size) < 0.02, 1.0 - right, right)  # noqa: E731
    targets = [flip((u < level).astype(float)) for level in levels]
    scores = [flip((v < 0.63 - f).astype(float)) for f in forgetting]
    return SeedPair(np.stack(targets[:-1]), np.stack(scores[:-1]), targets[-1], scores[-1], 4)


def test_the_vanilla_adapters_own_delta_is_zero_on_a_noisy_study():
    rng = np.random.default_rng(7)
    seeds = [noisy_seed(rng, 0.753, 0.05) for _ in range(3)]
    # The test has teeth: in resamples of the target questions, λ = 0.75 reaches λ = 1's gain or more
    # in some seed often (a rule that takes a side at a tie or a reversal would move the control).
    draws = rng.integers(0, 200, size=(500, 200))
    reversed_or_tied = [any(s.line_targets[3, d].mean() >= s.line_targets[4, d].mean() for s in seeds) for d in draws]
    assert np.mean(reversed_or_tied) > 0.5
    comparison = compare_with_line(seeds)
    control = comparison.control
    # Its expectation over question draws is the bootstrap's mean, whose Monte Carlo error is
    # SE / √replicates; 3 of those, plus rounding. Here the rule puts the vanilla adapter on its line
    # in every replicate (SE 0), so that tolerance is exact.
    assert control.mean == 0.0
    assert abs(control.replicate_mean) <= 3 * control.standard_error / REPLICATES**0.5 + 1e-12
    assert control.interval == (0.0, 0.0)
    # The arm's Δ minus the control's, replicate by replicate: here the arm's own Δ.
    assert comparison.difference.mean == pytest.approx(comparison.mean)
    assert comparison.difference.interval == pytest.approx(comparison.interval)


def test_an_arm_that_is_a_point_of_the_line_has_delta_zero_in_every_replicate():
    rng = np.random.default_rng(3)
    seeds = [noisy_seed(rng, 0.7, 0.0) for _ in range(3)]
    # The arm is each seed's λ = 0.75: Δ = 0 in every seed and every replicate, however the gains fall.
    as_line_point = [SeedPair(s.line_targets, s.line_scores, s.line_targets[3], s.line_scores[3], 4) for s in seeds]
    comparison = compare_with_line(as_line_point)
    assert comparison.deltas == [0.0] * 3 and comparison.places == [ON] * 3
    # (to rounding: a mean of the arm's column and the same column of the line sum in another order)
    assert comparison.standard_error == pytest.approx(0.0, abs=1e-12)
    assert comparison.interval == pytest.approx((0.0, 0.0), abs=1e-12)


def test_arms_are_compared_at_every_length(study_path):
    report = render_frontier(collect_study(load_experiment(study_path)), None)
    # After 10 steps IMSM-LoRA has lost 2 answers where LoRA has lost 11, 12 and 13.
    between = section(report, "Between arms")
    early = row(between, comparison="IMSM-LoRA − LoRA", steps="10", score="pooled accuracy")
    assert early["questions × seeds"] == "80 × 3" and numbers(early["Δ ± SE"]) == [12.5, 3.63]
    assert early["t"] == "**3.4**" and early["seeds"] == "3" and numbers(early["Δ seed means"]) == [12.5]
    assert row(between, comparison="IMSM-LoRA − IMSM-mean", steps="40", score="pooled accuracy")
    compared = {(r["comparison"], r["steps"]) for r in tables(between)[0]}
    assert ("IMSM-LoRA − LoRA λ=0.5", "10") not in compared  # post-hoc variants exist at the final length only


def study_with_vanilla_seed_0_changed(tmp_path, change):
    """The synthetic study after `change(result)` edits vanilla LoRA seed 0's result.json."""
    path = write_experiment(tmp_path)
    write_results(path)
    experiment = load_experiment(path)
    cell = next(c for c in experiment.cells if c.config["fusion"] == "none" and c.config["seed"] == 0)
    file = runner.cell_result_path(experiment, cell)
    result = json.loads(file.read_text())
    change(result)
    file.write_text(runner.result_text(result))
    return collect_study(load_experiment(path))


def test_a_point_rests_on_the_seeds_that_have_both_its_scores(tmp_path):
    def drop_target(result: dict) -> None:  # seed 0's target score not in yet
        del result["variants"]["step=10"]["metrics"]["mrpc"]

    study = study_with_vanilla_seed_0_changed(tmp_path, drop_target)
    rows = {(p.label, p.length): p for p, _ in frontier_rows(study, "accuracy")}
    early = rows[("LoRA", 10)]
    assert early.seeds == 2 and early.forgetting == pytest.approx(100 * (12 + 13) / 2 / 80)  # not seed 0's 11


def test_a_row_against_base_says_the_seeds_of_each_test_where_they_differ(tmp_path):
    def drop_sciq(result: dict) -> None:  # seed 0's target is in, one of its pooled probes not yet
        del result["variants"]["step=10"]["questions"]["sciq"]

    report = render_frontier(study_with_vanilla_seed_0_changed(tmp_path, drop_sciq), None)
    against_base = section(report, "Against Base")
    assert row(against_base, arm="LoRA", steps="10")["seeds"] == "3 / 2"
    assert row(against_base, arm="LoRA", steps="40")["seeds"] == "3"


def test_an_arm_no_seed_of_which_can_be_matched_is_shown_not_dropped(tmp_path):
    path = write_experiment(tmp_path)
    write_results(path)
    experiment = load_experiment(path)
    for cell in (c for c in experiment.cells if c.config["fusion"] == "mean"):
        file = runner.cell_result_path(experiment, cell)
        result = json.loads(file.read_text())
        del result["questions"]["mrpc"]  # a corpus-level target: no per-question score to resample
        file.write_text(runner.result_text(result))
    study = collect_study(load_experiment(path))
    [test] = [t for t in line_tests(study, "accuracy") if (study.label(t.arm), t.length) == ("IMSM-mean", STEPS)]
    assert test.comparison is None and test.unmatched == 3
    report = render_frontier(study, None)
    frontier = section(report, "Against the λ frontier")
    shown = row(frontier, table=2, arm="IMSM-mean", steps="40", score="forgetting (accuracy)")
    assert shown["seeds"] == "0" and shown["Δ ± SE"] == "–"
    assert shown["seeds past the line"].startswith("3 left out")


def test_the_bootstrap_needs_the_seeds_to_share_their_questions():
    one = pair([[1.0, 0.0]], [[1.0, 1.0, 0.0]], [1.0, 0.0], [1.0, 0.0, 0.0])
    other = pair([[1.0, 0.0, 1.0]], [[1.0, 1.0, 0.0]], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="share their questions"):
        compare_with_line([one, other])


def test_forgetting_counts_the_questions_base_answered_alike(tmp_path):
    def cut_arc_easy(result: dict) -> None:
        result["questions"]["arc_easy"] = {k: v[:20] for k, v in result["questions"]["arc_easy"].items()}

    study = study_with_vanilla_seed_0_changed(tmp_path, cut_arc_easy)
    lora = next(p for p in study.points if study.label(p.arm) == "LoRA" and p.final and p.seed == 0)
    # On the 60 questions it answered, Base got 20 + 32 right and LoRA 0 + 32.
    assert point_scores(study, lora)[(FORGETTING, "accuracy")] == pytest.approx(20 / 60)


def write_mechanism_study(tmp_path) -> str:
    """The synthetic study plus each gated adapter's tuned branch read alone, and IMSM-LoRA's gate
    weighing the frozen branch 0.2 on the target and 0.6 ± 0.1 across the probes' questions."""
    grids = json.loads(open(write_experiment(tmp_path)).read())["grids"]
    mechanism = {"task": ["mrpc"], "fusion": ["imsm", "mean"], "seed": [0, 1, 2], "variants": [{"fusion": "none"}]}
    mechanism["evaluate"] = ["target", "arc_easy", "sciq"]
    path = write_experiment(tmp_path, grids={**grids, "mechanism": mechanism})
    write_results(path)
    experiment = load_experiment(path)
    for cell in (c for c in experiment.cells if c.config["fusion"] == "imsm"):
        file = runner.cell_result_path(experiment, cell)
        result = json.loads(file.read_text())
        for task, columns in result["questions"].items():
            weights = [0.2] * len(columns["index"]) if task == "mrpc" else [0.5, 0.7] * (len(columns["index"]) // 2)
            columns["gate_frozen_weight"] = weights
            result["metrics"][task]["gate_frozen_weight"] = sum(weights) / len(weights)
        file.write_text(runner.result_text(result))
    return path


def test_the_tuned_branch_alone_is_placed_and_compared(tmp_path):
    study = collect_study(load_experiment(write_mechanism_study(tmp_path)))
    rows = {(p.label, p.length): (p, place) for p, place in frontier_rows(study, "accuracy")}
    alone, place = rows[("IMSM-LoRA, tuned branch alone", STEPS)]
    # 75% on the target is halfway between λ = 0.5 (10 points) and 0.75 (17.5); it forgets 30/80.
    assert alone.forgetting == pytest.approx(37.5) and place == (pytest.approx(13.75), ON)
    report = render_frontier(study, None)
    between = section(report, "Between arms")
    gate = row(between, comparison="IMSM-LoRA − IMSM-LoRA, tuned branch alone", steps="40", score="pooled accuracy")
    alone = row(between, comparison="IMSM-LoRA, tuned branch alone − LoRA", steps="40", score="pooled accuracy")
    assert numbers(gate["Δ ± SE"]) == [32.5, 5.27] and numbers(alone["Δ ± SE"]) == [-7.5, 2.96]
    assert "IMSM-mean, tuned branch alone" in report


def test_the_gate_section_reads_the_learned_gates_weights(tmp_path):
    report = render_frontier(collect_study(load_experiment(write_mechanism_study(tmp_path))), None)
    gate = tables(section(report, "The gate"))[0]
    [learned] = [r for r in gate if (r["arm"], r["steps"]) == ("IMSM-LoRA", "40")]
    assert learned["seeds"] == "3" and numbers(learned["mrpc (target)"]) == [0.2, 0.0]
    assert numbers(learned["arc_easy"]) == numbers(learned["sciq"]) == [0.6, 0.1]
    assert ("IMSM-LoRA", "10") not in {(r["arm"], r["steps"]) for r in gate}  # results without the gate's weights
    assert "IMSM-mean" not in {r["arm"] for r in gate}  # a fixed mix has no weights to read
    assert "A mean fusion weighs it 0.5 everywhere (IMSM-mean, untrained mix)." in report


def test_chance_comes_from_the_task_definition(tmp_path):
    assert [get_task(name).chance for name in ("arc_easy", "sciq", "piqa", "winogrande")] == [0.25, 0.25, 0.5, 0.5]
    assert get_task("mrpc").chance is None  # not multiple choice: nothing to pool
    spec = {"name": "quiz", "answer_type": "multiple_choice", "data": "quiz.jsonl", "prompt": "{q}"}
    spec.update(choices="options", answer="gold")
    (tmp_path / "quiz.yaml").write_text(json.dumps({**spec, "chance": 0.2}))
    assert get_task(str(tmp_path / "quiz.yaml")).chance == 0.2  # a custom task declares its own
    (tmp_path / "plain.yaml").write_text(json.dumps(spec))
    assert get_task(str(tmp_path / "plain.yaml")).chance is None
    (tmp_path / "bad.yaml").write_text(json.dumps({**spec, "chance": 25}))
    with pytest.raises(IMSMError, match="chance must be a number between 0 and 1"):
        get_task(str(tmp_path / "bad.yaml"))


def write_study(tmp_path, seeds: list[int], **changes) -> str:
    """The synthetic study with other seeds and other `changes` to its experiment file, with results."""
    grids = json.loads(open(write_experiment(tmp_path)).read())["grids"]
    grids = {name: {**grid, "seed": seeds} for name, grid in grids.items()}
    path = write_experiment(tmp_path, grids=grids, **changes)
    write_results(path)
    return path


@pytest.mark.parametrize("seeds", [[0, 1], [0, 1, 2, 3]])
def test_labels_baselines_and_degrees_of_freedom_come_from_the_experiment(tmp_path, seeds):
    frontier = {
        "labels": {"none": "Plain-{method}", "imsm": "Gated {method}", "mean": "Even mix"},
        "baselines": [{"adapter_scale": 0.25, "label": "quarter"}],
    }
    study = collect_study(load_experiment(write_study(tmp_path, seeds, frontier=frontier)))
    report = render_frontier(study, None)
    compared = {r["comparison"] for r in tables(section(report, "Between arms"))[0]}
    assert {"Gated LoRA − Plain-LoRA", "Gated LoRA − quarter", "Even mix − quarter"} <= compared
    assert not any("λ=0.5" in c or "mean fusion" in c for c in compared)  # not declared: not compared
    placed = {p.label for p, _ in frontier_rows(study, "accuracy")}
    assert placed == {"Plain-LoRA", "Gated LoRA", "Even mix"}  # the undeclared mix is not placed
    assert "quarter" in {r["arm"] for r in tables(section(report, "Post hoc"))[0]}
    assert {t.by_seed.n for t in line_tests(study, "accuracy") if t.by_seed} == {len(seeds)}
    freedom = {2: "1 degree of freedom with 2 seeds, so p < 0.05 needs |t| > 12.71"}
    freedom[4] = "3 degrees of freedom with 4 seeds, so p < 0.05 needs |t| > 3.18"
    assert freedom[len(seeds)] in report and "three seeds" not in report


def intruder_study(tmp_path, baselines: list[dict]) -> str:
    """The synthetic study whose vanilla adapters are also read with peft's intruders reduced."""
    grids = json.loads(open(write_experiment(tmp_path)).read())["grids"]
    grids["posthoc"]["variants"].append({"intruders": 0.5})
    path = write_experiment(tmp_path, grids=grids, frontier={**FRONTIER, "baselines": baselines})
    write_results(path)
    return path


def test_peft_s_intruder_reduction_is_a_free_baseline_off_the_line(tmp_path):
    declared = [*FRONTIER["baselines"], {"intruders": 0.5, "label": "LoRA, intruders reduced"}]
    study = collect_study(load_experiment(intruder_study(tmp_path, declared)))
    report = render_frontier(study, None)
    compared = {r["comparison"] for r in tables(section(report, "Between arms"))[0]}
    assert {"IMSM-LoRA − LoRA, intruders reduced", "IMSM-mean − LoRA, intruders reduced"} <= compared
    assert "LoRA, intruders reduced" in {r["arm"] for r in tables(section(report, "Post hoc"))[0]}
    rows = {p.label: place for p, place in frontier_rows(study, "accuracy")}
    # 80% on the target is λ = 0.75's gain, which forgets 17.5 points; the reduction forgets 12.5.
    assert rows["LoRA, intruders reduced"] == (pytest.approx(17.5), ON)


def test_an_undeclared_intruder_reduction_is_named_but_neither_placed_nor_compared(tmp_path):
    study = collect_study(load_experiment(intruder_study(tmp_path, FRONTIER["baselines"])))
    assert "LoRA, intruders reduced λ=0.5" in {study.label(arm) for arm in study.arms()}
    assert "LoRA, intruders reduced λ=0.5" not in {p.label for p, _ in frontier_rows(study, "accuracy")}


def test_without_a_frontier_section_arms_get_general_names_and_no_baselines(tmp_path):
    study = collect_study(load_experiment(write_study(tmp_path, [0, 1, 2], frontier=None)))
    labels = {study.label(arm) for arm in study.arms()}
    assert {"LoRA", "IMSM-LoRA", "IMSM-LoRA (mean)", "LoRA λ=0.5", "LoRA + mean fusion"} <= labels
    compared = {r["comparison"] for r in tables(section(render_frontier(study, None), "Between arms"))[0]}
    assert compared == {"IMSM-LoRA − LoRA", "IMSM-LoRA (mean) − LoRA", "IMSM-LoRA − IMSM-LoRA (mean)"}


@pytest.mark.parametrize(
    ("frontier", "message"),
    [
        ("arms", r"frontier: must be a mapping with metric, labels and/or baselines"),
        ({"colours": {}}, r"frontier: unknown field 'colours' \(known: metric, labels, baselines\)"),
        ({"labels": {"gated": "G"}}, r"frontier.labels: unknown fusion 'gated' \(known: imsm, no-query, mean, none\)"),
        ({"labels": {"imsm": ""}}, r"frontier.labels.imsm: must be a non-empty string"),
        ({"labels": {"imsm": "IMSM-{peft}"}}, r"frontier.labels.imsm: 'IMSM-\{peft\}' names a placeholder other"),
        ({"baselines": {"adapter_scale": 0.5}}, r"frontier.baselines: must be a list of variants"),
        ({"baselines": [{"step": 10}]}, r"frontier.baselines\[0\]: unknown field 'step' .*read at the final length"),
        ({"baselines": [{"fusion": "imsm"}]}, r"frontier.baselines\[0\]: fusion 'imsm' needs a trained gate"),
        ({"baselines": [{"adapter_scale": -1}]}, r"frontier.baselines\[0\]: adapter_scale must be a number >= 0"),
        ({"baselines": [{"label": "x"}]}, r"frontier.baselines\[0\]: is the vanilla adapter as trained"),
        ({"baselines": [{"intruders": 2}]}, r"frontier.baselines\[0\]: intruders: .* a number in \[0, 1\]"),
        ({"baselines": [{"intruders": 0.5, "adapter_scale": 0.5}]}, r"baselines\[0\]: .* two mitigations"),
        (
            {"baselines": [{"intruders": 0.5}]},
            r"frontier.baselines\[0\]: no grid reads a vanilla adapter \(fusion none\) as \{intruders: 0.5\}",
        ),
        (
            {"baselines": [{"adapter_scale": 0.3}]},
            r"frontier.baselines\[0\]: no grid reads a vanilla adapter \(fusion none\) as \{adapter_scale: 0.3\}",
        ),
    ],
)
def test_a_bad_frontier_section_is_refused_with_the_field_and_the_fix(tmp_path, frontier, message):
    with pytest.raises(IMSMError, match=message):
        load_experiment(write_experiment(tmp_path, frontier=frontier))
