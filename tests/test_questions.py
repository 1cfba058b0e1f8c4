"""Per-question scores: stored compactly, compared question by question over the seeds both arms have."""

from __future__ import annotations

import math

import pytest

from imsm.experiment.questions import paired_over_questions, question_columns


def test_columns_keep_every_metric_and_drop_fields_no_row_has():
    rows = [
        {"index": 3, "prediction": "Paris", "scores": {"contains": 1.0}, "gold_nll": 0.1234567, "yes_no_margin": None},
        {"index": 7, "prediction": "", "scores": {"contains": 0.0}, "gold_nll": 2.0, "yes_no_margin": None},
    ]
    columns = question_columns(rows)
    assert columns == {"index": [3, 7], "contains": [1.0, 0.0], "gold_nll": [0.12346, 2.0], "answer_chars": [5, 0]}


def test_questions_are_averaged_over_shared_seeds_then_paired():
    treated = {0: {"index": [0, 1, 2], "nll": [1.0, 2.0, 3.0]}, 1: {"index": [0, 1, 2], "nll": [3.0, 2.0, 1.0]}}
    control = {0: {"index": [0, 1, 2], "nll": [2.0, 2.0, 2.0]}, 2: {"index": [0, 1, 2], "nll": [9.0, 9.0, 9.0]}}
    test, seeds = paired_over_questions(treated, control, "nll")
    assert seeds == 1  # only seed 0 is in both
    assert test.n == 3 and test.mean_difference == pytest.approx(0.0)

    control[1] = {"index": [0, 1, 2], "nll": [3.0, 3.0, 3.0]}
    test, seeds = paired_over_questions(treated, control, "nll")
    # Per question, treated averages to 2.0 and control to 2.5 over seeds 0 and 1.
    assert seeds == 2 and test.mean_difference == pytest.approx(-0.5) and test.t == -math.inf


def test_a_question_missing_from_a_seed_or_unscored_is_left_out():
    treated = {0: {"index": [0, 1, 2], "m": [1.0, None, 1.0]}}
    control = {0: {"index": [0, 2], "m": [0.0, 0.5]}}
    test, seeds = paired_over_questions(treated, control, "m")
    assert seeds == 1 and test.n == 2 and test.mean_difference == pytest.approx(0.75)
    test, seeds = paired_over_questions(treated, control, "absent")
    assert seeds == 0 and test.n == 0 and math.isnan(test.p)


def test_result_files_keep_each_tasks_questions_on_one_line():
    import json

    from imsm.experiment.runner import result_text

    result = {"metrics": {"webq": {"contains": 0.5}}, "questions": {"webq": {"index": list(range(50))}, "mrpc": {}}}
    text = result_text(result)
    assert json.loads(text) == result
    assert sum('"index":[0,1,2' in line for line in text.splitlines()) == 1  # not one line per number
    assert json.loads(result_text({"metrics": {}})) == {"metrics": {}}


def test_corpus_level_metrics_are_not_kept_per_question():
    rows = [{"index": 0, "prediction": "yes", "scores": {"mcc": (1, 0), "accuracy": 0.0}}]
    assert question_columns(rows) == {"index": [0], "accuracy": [0.0], "answer_chars": [3]}
