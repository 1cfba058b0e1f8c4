"""Paired comparisons of a study's points: their scores seed by seed, and arm against arm (or against
Base) question by question, each question averaged over the seeds both have first."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imsm.experiment.questions import paired_over_questions
from imsm.experiment.report.frontier_study import Point, Score, Study, pooled_columns
from imsm.experiment.report.grid import scale
from imsm.experiment.stats import PairedTest, mean_std


def seed_values(study: Study, points: Mapping[Any, Point], score: Score) -> dict[Any, float]:
    """seed -> value of `score`, over the points that have it."""
    out = {}
    for seed, point in points.items():
        value = study.scores(point).get(score)
        if value is not None and not math.isnan(value):
            out[seed] = value
    return out


def seed_mean(
    study: Study, points: Mapping[Any, Point], score: Score, seeds: set[Any] | None = None
) -> tuple[float, float, int] | None:
    """(mean, std, seeds) of `score` in display scale over `seeds` (default: all), or None where no seed
    has it."""
    values = [v for seed, v in seed_values(study, points, score).items() if seeds is None or seed in seeds]
    if not values:
        return None
    mu, sd = mean_std([scale(score[1], v) for v in values])
    return mu, sd, len(values)


@dataclass(frozen=True)
class QuestionTest:
    """treated − control over questions, each question averaged over the seeds both have first."""

    test: PairedTest
    seeds: int

    @property
    def standard_error(self) -> float:
        return self.test.standard_error


def compare_questions(
    treated: Mapping[Any, Mapping[str, list[Any]]], control: Mapping[Any, Mapping[str, list[Any]]], name: str
) -> QuestionTest:
    """`questions.paired_over_questions`: each question averaged over the seeds both arms have."""
    test, seeds = paired_over_questions(treated, control, name)
    return QuestionTest(test, seeds)


def flips(point: Mapping[str, list[Any]], base: Mapping[str, list[Any]]) -> tuple[int, int]:
    """(right → wrong, wrong → right): questions the point answers differently from the base model,
    over the questions both have an accuracy for."""
    mine = {q: v for q, v in zip(point["index"], point["accuracy"], strict=True) if v is not None}
    theirs = {q: v for q, v in zip(base["index"], base["accuracy"], strict=True) if v is not None}
    shared = set(mine) & set(theirs)
    lost = sum(theirs[q] > 0.5 and mine[q] <= 0.5 for q in shared)
    gained = sum(theirs[q] <= 0.5 and mine[q] > 0.5 for q in shared)
    return lost, gained


def columns_by_seed(study: Study, points: Mapping[Any, Point], task: str | None) -> dict[Any, dict[str, list]]:
    """seed -> the target's question columns (`task`) or, for None, the pooled probes'."""
    out = {}
    for seed, point in points.items():
        columns = pooled_columns(point, study.pooled_tasks) if task is None else point.questions.get(task)
        if columns:
            out[seed] = columns
    return out
