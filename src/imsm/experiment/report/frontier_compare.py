"""Paired comparisons of a study's points: their scores seed by seed, and arm against arm (or against
Base) question by question, each question averaged over the seeds both have first."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imsm.experiment.questions import paired_over_questions
from imsm.experiment.report.frontier_study import LEARNING, POOL, Arm, Point, Score, Study, pooled_columns
from imsm.experiment.report.grid import scale
from imsm.experiment.stats import PairedTest, mean_std, paired_t_test


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


def comparisons(study: Study) -> list[tuple[Arm, Arm, int | None]]:
    """(arm, arm it is tested against, length), both read at that length: at every length each gated
    arm against the vanilla adapter of its method and setting, and the gated arms against each other;
    at the final length also against the free baselines the experiment file declares (variants of
    that vanilla adapter), and against its own tuned branch read alone, which is set against the
    vanilla adapter in turn."""
    groups = study.groups()
    gated = [(a, n) for a, n in groups if a.is_trained and a.fusion != "none"]
    pairs = []
    for arm, length in gated:
        vanilla = Arm(arm.method, "none", arm.setting)
        if (vanilla, length) in groups:
            pairs.append((arm, vanilla, length))
        for other, other_length in gated:
            same_kind = (other.method, other.setting) == (arm.method, arm.setting)
            if same_kind and other_length == length and other.order > arm.order:
                pairs.append((arm, other, length))
        if length == study.final_length(arm):
            for declared in study.experiment.frontier.baselines:
                variant = (declared.fusion, declared.adapter_scale, declared.intruders)
                baseline = Arm(arm.method, "none", arm.setting, *variant)
                if (baseline, length) in groups:
                    pairs.append((arm, baseline, length))
            # What the gate does for its own adapter, and how far that adapter moved from a vanilla one.
            alone = Arm(arm.method, arm.fusion, arm.setting, "none")
            if (alone, length) in groups:
                pairs.append((arm, alone, length))
                if (vanilla, length) in groups:
                    pairs.append((alone, vanilla, length))
    return pairs


def score_of(study: Study, task: str | None, name: str) -> Score:
    """The score two arms are compared on: the target along the axis of learning, a probe's own score,
    or (task None) the pooled score `name`."""
    return (LEARNING, name) if task == study.target else (task, name) if task else (POOL, name)


def compare_arms(
    study: Study, treated: Mapping[Any, Point], control: Mapping[Any, Point], task: str | None, name: str
) -> tuple[QuestionTest, PairedTest]:
    """treated − control on `task`'s `name` (task None: the pooled score), question by question and
    seed by seed (the pairs of seeds both have). On a lower-is-better target the difference of the gains,
    control − treated, so that positive says the treated arm learned more."""
    columns = [columns_by_seed(study, treated, task), columns_by_seed(study, control, task)]
    if task == study.target and study.lower_is_better:
        columns.reverse()
    score = score_of(study, task, name)
    mine, theirs = seed_values(study, treated, score), seed_values(study, control, score)
    seeds = sorted(set(mine) & set(theirs))
    return compare_questions(*columns, name), paired_t_test([mine[s] for s in seeds], [theirs[s] for s in seeds])
