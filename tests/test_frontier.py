"""`imsm frontier`: learning against forgetting, on hand-made results whose every number is known.

Each arm of the synthetic experiment answers the target's first `target × 20` questions right and
loses `lost` of the base model's right answers in the pooled probes (80 questions: arc_easy, then
sciq), so its pooled forgetting is lost / 80; piqa sits at chance, and loses 5 answers that must
never reach the pool.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from imsm.checked_files import DamagedFile
from imsm.cli import main
from imsm.experiment import runner
from imsm.experiment.report.frontier import render_frontier
from imsm.experiment.report.frontier_line import (
    BELOW,
    BEYOND,
    ON,
    SeedPair,
    compare_with_line,
    matched_score,
    nondecreasing,
)
from imsm.experiment.report.frontier_study import (
    FORGETTING,
    POOL,
    FrontierPoint,
    chance_accuracy,
    collect_study,
    flips,
    frontier_at,
    frontier_rows,
    line_tests,
    point_scores,
)
from imsm.experiment.spec import load_experiment

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
    ("imsm", ""): (0.70, 4),  # the λ = 0.5 gain, forgetting 5 points instead of 10
    ("imsm", "step=10"): (0.60, 2),
    ("mean", ""): (0.75, 11),  # halfway between λ = 0.5 (10 points) and 0.75 (17.5): on the line
    ("mean", "step=10"): (0.95, 6),  # past LoRA's gain: beyond the line
    ("imsm", "fusion=none"): (0.75, 30),  # the tuned branch alone: compensates for the mix, forgets more
    ("mean", "fusion=none"): (0.80, 28),
}
STEPS = 40


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
    return {t: metrics[t] for t in tasks}, {t: questions[t] for t in tasks}


def write_results(path: str, skip=lambda cell, key: False) -> None:
    """The original rows and every cell's result.json; `skip(cell, key)` leaves an evaluation out."""
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
            target, lost = PLAN[(fusion, key)]
            lost += seed - 1 if (fusion, key) == ("none", "step=10") else 0
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
    imsm = next(p for p in study.points if p.arm.label == "IMSM-LoRA" and p.final and p.seed == 0)
    assert point_scores(study, imsm)[(FORGETTING, "accuracy")] == pytest.approx(4 / 80)


def test_forgetting_is_base_minus_the_point(study_path):
    study = collect_study(load_experiment(study_path))
    lora = next(p for p in study.points if p.arm.label == "LoRA" and p.final and p.seed == 0)
    scores = point_scores(study, lora)
    assert scores[(POOL, "accuracy")] == pytest.approx((56 - 24) / 80)
    assert scores[(FORGETTING, "accuracy")] == pytest.approx(24 / 80)  # lost answers: positive
    assert scores[(FORGETTING, "gold_probability")] == pytest.approx(0.5 * 24 / 80)
    assert (FORGETTING, "accuracy") not in point_scores(study, study.base)


def line(*points: tuple[float, float]) -> list[tuple[float, FrontierPoint]]:
    return [(i / 4, FrontierPoint(f"λ={i / 4}", None, 3, t, 0.0, f, 0.0)) for i, (t, f) in enumerate(points)]


def test_frontier_interpolates_between_lambda_points():
    frontier = line((50, 0), (60, 5), (70, 10), (80, 20), (90, 30))
    assert frontier_at(frontier, 75) == pytest.approx((15, ON))  # a point there forgetting 15: difference 0
    assert frontier_at(frontier, 70) == pytest.approx((10, ON))  # on a λ point
    assert frontier_at(frontier, 95) == pytest.approx((30, BEYOND))  # past the best gain: set against λ = 1
    assert frontier_at(frontier, 45) == (0, BELOW)  # under Base's gain: set against Base
    # A gain that falls again past some λ (noise): the gains are made non-decreasing (80 and 70 pool to
    # 75) and the smallest λ that reaches the target counts, not the best of several crossings.
    bent = line((50, 0), (80, 10), (70, 30))
    assert frontier_at(bent, 75) == pytest.approx((10, ON))
    assert frontier_at(bent, 72) == pytest.approx((8.8, ON))  # 22 / 25 of the way to λ = 0.25
    assert frontier_at(bent, 78) == (10, BEYOND)  # past the pooled best gain: its first point


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


def test_the_report_shows_every_section(study_path, tmp_path):
    report = render_frontier(collect_study(load_experiment(study_path)), tmp_path / "plots")
    for heading in ("## Curves", "## Post hoc", "## Against Base", "## Between arms", "## Against the λ frontier"):
        assert heading in report
    assert "| piqa | multiple_choice | 40 | 50.0 | 50.0 (usual options) | 15.8 | no: base at chance |" in report
    assert "| LoRA | 10 | 3 | 70.0 ± 0.0 | 55.0 ± 1.2 |" in report  # (56 - 12 ± 1) / 80 pooled answers right
    # IMSM-LoRA against Base: 4 of 80 pooled answers lost, in every seed.
    assert "| IMSM-LoRA | 40 | 3 | 20 / 80 | +20.00 ± 9.18 | 2.2 | -5.00 ± 2.45 | -2.0 |" in report
    assert "| LoRA | 40 | 3 | 20 / 80 | +40.00 ± 11.24 | **3.6** | -30.00 ± 5.16 | **-5.8** |" in report
    assert "| -5.00 ± 2.45 | -2.0 | -2.50 ± 1.23 | -2.0 | 4.0 | 0.0 |" in report  # 4 answers lost, none gained
    assert "| IMSM-LoRA − LoRA λ=0.5 | 40 | pooled accuracy | 80 × 3 | +5.00 ± 2.45 | 2.0 |" in report
    assert "IMSM-mean − LoRA" in report and "IMSM-LoRA − untrained mix" in report
    assert "| IMSM-LoRA | 40 | 3 | 70.0 ± 0.0 | 5.0 ± 0.0 | 10.0 | -5.0 |" in report
    assert "| IMSM-mean | 10 | 3 | 95.0 ± 0.0 | 7.5 ± 0.0 | 30.0 (beyond) | -22.5 |" in report
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
    assert "| IMSM-LoRA | 40 | 2 |" in report  # two seeds, said so
    assert "LoRA λ=0.75" not in report
    rows = {(p.label, p.length): (p.forgetting, at) for p, at in frontier_rows(study, "accuracy")}
    # The line runs from λ = 0.5 to 1 now.
    assert rows[("IMSM-mean", STEPS)] == (pytest.approx(13.75), (pytest.approx(15), ON))


def test_chance_comes_from_the_base_models_rows_where_kept(study_path, tmp_path):
    experiment = load_experiment(write_experiment(tmp_path))
    assert chance_accuracy(experiment, "arc_easy") == (0.25, "usual options")
    experiment.work.mkdir(parents=True)
    rows = [{"index": 0, "choices": ["a", "b", "c"]}, {"index": 1, "choices": ["a", "b", "c", "d", "e"]}]
    (experiment.work / "original.arc_easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    chance, source = chance_accuracy(experiment, "arc_easy")
    assert chance == pytest.approx((1 / 3 + 1 / 5) / 2) and source == "options of the questions"


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
    tests = {(t.arm.label, t.length): t for t in line_tests(study, "accuracy")}
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
    # Past LoRA's gain in every seed: set against λ = 1, not left out.
    beyond = tests[("IMSM-mean", 10)].comparison
    assert beyond.places == [BEYOND] * 3 and beyond.deltas == pytest.approx([(6 - 24) / 80] * 3)


def pair(line_targets, line_scores, arm_target, arm_score) -> SeedPair:
    return SeedPair(*(np.array(v, dtype=float) for v in (line_targets, line_scores, arm_target, arm_score)))


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


def test_past_the_best_gain_the_first_point_at_it_counts_whatever_the_rounding():
    # 7/80 and 1/80 pool to a mean one ulp under 4/80: the pooled block is still the first at the top.
    targets, scores = [0, 7 / 80, 1 / 80, 4 / 80], [100, 90, 80, 10]
    assert matched_score(targets, scores, 0.05) == (90, ON)
    assert matched_score(targets, scores, 0.10) == (90, BEYOND)


def test_nondecreasing_pools_adjacent_violators():
    assert nondecreasing([1, 3, 2, 4]) == pytest.approx([1, 2.5, 2.5, 4])
    assert nondecreasing([5, 1, 1, 9]) == pytest.approx([7 / 3] * 3 + [9])
    assert nondecreasing([1, 2, 3]) == [1, 2, 3]


def test_arms_are_compared_at_every_length(study_path):
    report = render_frontier(collect_study(load_experiment(study_path)), None)
    # After 10 steps IMSM-LoRA has lost 2 answers where LoRA has lost 11, 12 and 13.
    assert "| IMSM-LoRA − LoRA | 10 | pooled accuracy | 80 × 3 | +12.50 ± 3.63 | **3.4** | 3 | +12.50 |" in report
    assert "| IMSM-LoRA − IMSM-mean | 40 | pooled accuracy |" in report
    assert "| IMSM-LoRA − LoRA λ=0.5 | 10 |" not in report  # post-hoc variants exist at the final length only


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
    assert "| LoRA | 10 | 3 / 2 | 20 / 80 |" in report
    assert "| LoRA | 40 | 3 | 20 / 80 |" in report


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
    [test] = [t for t in line_tests(study, "accuracy") if (t.arm.label, t.length) == ("IMSM-mean", STEPS)]
    assert test.comparison is None and test.unmatched == 3
    report = render_frontier(study, None)
    assert "| IMSM-mean | 40 | forgetting (accuracy) | 0 | – | – | – | – | – | – | 3 left out (no per-" in report


def test_the_bootstrap_needs_the_seeds_to_share_their_questions():
    one = pair([[1.0, 0.0]], [[1.0, 1.0, 0.0]], [1.0, 0.0], [1.0, 0.0, 0.0])
    other = pair([[1.0, 0.0, 1.0]], [[1.0, 1.0, 0.0]], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="share their questions"):
        compare_with_line([one, other])


def test_forgetting_counts_the_questions_base_answered_alike(tmp_path):
    def cut_arc_easy(result: dict) -> None:
        result["questions"]["arc_easy"] = {k: v[:20] for k, v in result["questions"]["arc_easy"].items()}

    study = study_with_vanilla_seed_0_changed(tmp_path, cut_arc_easy)
    lora = next(p for p in study.points if p.arm.label == "LoRA" and p.final and p.seed == 0)
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
    assert "| IMSM-LoRA − IMSM-LoRA, tuned branch alone | 40 | pooled accuracy | 80 × 3 | +32.50 ± 5.27 |" in report
    assert "| IMSM-LoRA, tuned branch alone − LoRA | 40 | pooled accuracy | 80 × 3 | -7.50 ± 2.96 |" in report
    assert "IMSM-mean, tuned branch alone" in report


def test_the_gate_section_reads_the_learned_gates_weights(tmp_path):
    report = render_frontier(collect_study(load_experiment(write_mechanism_study(tmp_path))), None)
    gate = report[report.index("## The gate") :]
    assert "| IMSM-LoRA | 40 | 3 | 0.200 (0.000) | 0.600 (0.100) | 0.600 (0.100) |" in gate
    assert "| IMSM-LoRA | 10 |" not in gate  # results without the gate's weights (written before it kept them)
    assert "IMSM-mean |" not in gate  # a fixed mix has no weights to read
