"""The λ line of a study, the free baseline its arms are set against: Base (λ = 0), the vanilla
adapter's change scaled by λ, and the adapter as trained (λ = 1). Each arm is placed on the line of
seed means at its own target score, and tested seed by seed against its own seed's line
(`frontier_line` does the matching and the bootstrap). The target score is read along the axis of
learning (`Study.learning`): for a lower-is-better score (the gold answer's NLL) its gain Base − arm,
so that the line rises with learning and "the same gain" means the same drop in NLL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imsm.experiment.questions import values_by_question
from imsm.experiment.report.frontier_compare import seed_mean, seed_values
from imsm.experiment.report.frontier_line import LineComparison, SeedPair, compare_with_line, matched_score
from imsm.experiment.report.frontier_study import FORGETTING, LEARNING, POOL, Arm, Point, Study, pooled_columns
from imsm.experiment.report.grid import scale
from imsm.experiment.stats import PairedTest, paired_t_test

TRAINED, BASELINE, ALONE = "trained", "baseline", "tuned alone"  # `FrontierPoint.kind`


@dataclass(frozen=True)
class FrontierPoint:
    """A seed mean of one (arm, length) in display scale: target score (along the axis of learning,
    `Study.learning`) and forgetting, with spreads."""

    label: str
    length: int | None
    seeds: int
    target: float
    target_std: float
    forgetting: float
    forgetting_std: float
    kind: str = TRAINED  # TRAINED, BASELINE or ALONE: how the plot marks it


def _kind(study: Study, arm: Arm) -> str:
    return ALONE if arm.is_tuned_alone else BASELINE if study.is_baseline(arm) else TRAINED


def _frontier_point(
    study: Study, arm: Arm, length: int | None, points: Mapping[Any, Point], name: str
) -> FrontierPoint | None:
    # Target and forgetting from the same seeds: a seed still being evaluated must not lend the point
    # one coordinate and not the other.
    target_score, forgetting_score = (LEARNING, study.metric), (FORGETTING, name)
    seeds = set(seed_values(study, points, target_score)) & set(seed_values(study, points, forgetting_score))
    target = seed_mean(study, points, target_score, seeds)
    forgetting = seed_mean(study, points, forgetting_score, seeds)
    if target is None or forgetting is None:
        return None
    return FrontierPoint(study.label(arm), length, len(seeds), *target[:2], *forgetting[:2], _kind(study, arm))


def line_vanillas(study: Study) -> list[Arm]:
    """Every vanilla adapter a λ line scales: each vanilla arm read as trained at the end whose
    adapter `adapter_scale` can scale (not DoRA's), in `Arm.order`."""
    return [
        a for a in study.arms() if a.is_trained and a.fusion == "none" and study.final(a) and study.has_lambda_line(a)
    ]


def vanilla_arm(study: Study, like: Arm | None = None) -> Arm | None:
    """The vanilla adapter the λ line scales, of the same peft method and setting as `like` where given
    (else the first); None where there is none, or where that method has no λ line."""
    mine = (a for a in line_vanillas(study) if like is None or (a.method, a.setting) == (like.method, like.setting))
    return next(mine, None)


def unscaled_methods(study: Study) -> list[str]:
    """The methods (with their settings) whose arms have no λ line, as the report names them."""
    arms = [a for a in study.arms() if not a.is_base and not study.has_lambda_line(a)]
    return list(dict.fromkeys(a.method + (f" [{a.setting}]" if a.setting else "") for a in arms))


def _scaled_arms(study: Study, vanilla: Arm) -> list[Arm]:
    """The vanilla adapter's λ variants (λ ≠ 1), by λ."""
    scaled = [a for a in study.arms() if a == Arm(vanilla.method, vanilla.fusion, vanilla.setting, None, a.scale)]
    return sorted((a for a in scaled if a.scale != 1.0), key=lambda a: a.scale)


def lambda_line(study: Study, name: str, vanilla: Arm | None = None) -> list[tuple[float, FrontierPoint]]:
    """(λ, seed mean) of Base (λ = 0), the scaled vanilla adapter and the vanilla adapter as trained
    (λ = 1), by λ; `name` is the pooled score forgetting is measured on, `vanilla` the adapter scaled
    (default: the first vanilla arm). Entries without both the target score and the forgetting are
    left out."""
    vanilla = vanilla or vanilla_arm(study)
    line: list[tuple[float, FrontierPoint | None]] = []
    if (LEARNING, study.metric) in study.base_scores and (POOL, name) in study.base_scores:
        base_target = scale(study.metric, study.base_scores[(LEARNING, study.metric)])
        line.append((0.0, FrontierPoint("Base", 0, 1, base_target, 0.0, 0.0, 0.0)))
    if vanilla is not None:
        for arm in _scaled_arms(study, vanilla):
            line.append((arm.scale, _frontier_point(study, arm, None, study.final(arm), name)))
        final = study.final_length(vanilla)
        line.append((1.0, _frontier_point(study, vanilla, final, study.final(vanilla), name)))
    return sorted(((lam, p) for lam, p in line if p is not None), key=lambda entry: entry[0])


def frontier_at(
    line: Sequence[tuple[float, FrontierPoint]], target: float, forgetting: float
) -> tuple[float, str] | None:
    """The λ line's forgetting at `target` and where the target fell (`frontier_line.matched_score`:
    the points joined in order of gain; `forgetting`, the arm's, chooses among points that tie at
    exactly `target`), or None for an empty line."""
    if not line:
        return None
    return matched_score([p.target for _, p in line], [p.forgetting for _, p in line], target, forgetting)


def lambda_gaps(study: Study, name: str) -> list[str]:
    """The λ variants that the lines leave out for want of results (labels)."""
    return [
        study.label(arm)
        for vanilla in line_vanillas(study)
        for arm in _scaled_arms(study, vanilla)
        if _frontier_point(study, arm, None, study.final(arm), name) is None
    ]


def drawn_arms(study: Study, lined: bool | None) -> dict[tuple[Arm, int | None], dict[int, Point]]:
    """The groups a learning-forgetting plot draws: every trained arm at every length, the declared
    baselines off the λ line (read with another fusion or with intruders reduced), and a gated adapter's
    tuned branch read alone (an adapter like any other, which a user could deploy); of the methods
    that have a λ line (`lined`), of those that have none (DoRA's), or of every method (None)."""

    def drawn(arm: Arm) -> bool:
        # A declared baseline that is no point of the line: another fusion, or intruders reduced.
        off_the_line = study.is_baseline(arm) and (arm.mixed is not None or arm.intruders is not None)
        alone = arm.is_tuned_alone and arm.scale == 1.0 and arm.intruders is None
        of_kind = lined is None or study.has_lambda_line(arm) == lined
        return of_kind and (arm.is_trained or off_the_line or alone)

    return {(arm, length): points for (arm, length), points in study.groups().items() if drawn(arm)}


def _placed_arms(study: Study) -> dict[tuple[Arm, int | None], dict[int, Point]]:
    """The groups set against the λ line: `drawn_arms` of the methods that have one only (not DoRA:
    another method's line says nothing of an adapter that cannot be scaled)."""
    return drawn_arms(study, lined=True)


def frontier_rows(study: Study, name: str) -> list[tuple[FrontierPoint, tuple[float, str] | None]]:
    """Every arm `_placed_arms` sets against the λ line, as (seed mean, `frontier_at` its target
    score on the line of seed means of its own vanilla adapter)."""
    lines: dict[Arm | None, list[tuple[float, FrontierPoint]]] = {}
    rows = []
    for (arm, length), points in _placed_arms(study).items():
        vanilla = vanilla_arm(study, arm)
        if vanilla is not None and vanilla not in lines:
            lines[vanilla] = lambda_line(study, name, vanilla)
        point = _frontier_point(study, arm, length, points, name)
        if point is not None:  # no vanilla adapter of its method and setting: no line to place it on
            at = frontier_at(lines[vanilla], point.target, point.forgetting) if vanilla is not None else None
            rows.append((point, at))
    return rows


def unlined_points(study: Study, name: str) -> list[FrontierPoint]:
    """The arms of the methods without a λ line (DoRA's), as seed means: drawn beside the lines, with
    Base as their only reference, and set against nothing."""
    points = (_frontier_point(study, arm, n, group, name) for (arm, n), group in drawn_arms(study, False).items())
    return [p for p in points if p is not None]


# --- each seed against its own λ line --------------------------------------------------------------


@dataclass(frozen=True)
class LineTest:
    """An arm's forgetting minus its λ line's at the same target score (negative: forgets less), each
    seed's arm against the line of that seed's own vanilla adapter, on the pooled score `name`:
    the seeds' mean Δ with its bootstrap over questions, and the seeds' Δ tested against 0."""

    arm: Arm
    length: int | None
    name: str
    comparison: LineComparison | None  # None: no seed could be matched
    by_seed: PairedTest | None
    unmatched: int  # seeds without per-question target scores, or without the vanilla adapter's on its line


def per_question(point: Point, study: Study, name: str) -> tuple[dict[Any, float], dict[Any, float]] | None:
    """(target score along the axis of learning, pooled `name`) per question of one point, or None
    where either is missing."""
    scores = values_by_question(point.questions.get(study.target) or {}, study.metric)
    target = {question: study.learning(value) for question, value in scores.items()}
    pooled = pooled_columns(point, study.pooled_tasks)
    probes = values_by_question(pooled, name) if pooled is not None else {}
    return (target, probes) if target and probes else None


SeedLine = tuple[list[tuple[dict[Any, float], dict[Any, float]]], int]


def _seed_line(study: Study, vanilla: Arm, seed: Any, name: str) -> SeedLine | None:
    """Per question, (target, pooled `name`) of one seed's λ line in λ order: Base, that seed's scaled
    vanilla adapters, that seed's vanilla adapter as trained; points without both are left out. With
    the place of the adapter as trained in it (the control), or None where that point is missing."""
    candidates = [(0.0, study.base)] if study.base is not None else []
    candidates += [(a.scale, study.final(a).get(seed)) for a in _scaled_arms(study, vanilla)]
    trained = study.final(vanilla).get(seed)
    candidates.append((1.0, trained))
    candidates.sort(key=lambda entry: entry[0])  # λ above 1 goes past the adapter as trained
    kept = [
        (point, values) for _, point in candidates if point is not None and (values := per_question(point, study, name))
    ]
    control = next((i for i, (point, _) in enumerate(kept) if point is trained), None)
    return None if control is None else ([values for _, values in kept], control)


def aligned(lines: Mapping[Any, SeedLine], arms: Mapping[Any, tuple[dict, dict]]) -> list[SeedPair]:
    """The seeds' lines and arms as arrays over the target and probe questions every one of them has."""
    everything = [entry for seed in arms for entry in [*lines[seed][0], arms[seed]]]
    targets = sorted(set.intersection(*(set(t) for t, _ in everything)), key=str)
    probes = sorted(set.intersection(*(set(p) for _, p in everything)), key=str)
    if not targets or not probes:
        return []

    def rows(values: dict, keys: list) -> np.ndarray:
        return np.array([values[k] for k in keys], dtype=float)

    return [
        SeedPair(
            np.stack([rows(t, targets) for t, _ in lines[seed][0]]),
            np.stack([rows(p, probes) for _, p in lines[seed][0]]),
            rows(arms[seed][0], targets),
            rows(arms[seed][1], probes),
            lines[seed][1],
        )
        for seed in sorted(arms, key=str)
    ]


def line_tests(study: Study, name: str) -> list[LineTest]:
    """Every arm `frontier_rows` places, against the λ line of each seed's own vanilla adapter:
    `frontier_line.compare_with_line` over the seeds it has, on the pooled score `name`."""
    return once(
        study,
        ("λ line", name),
        lambda: seed_line_tests(study, name, _placed_arms(study), lambda arm: vanilla_arm(study, arm), _seed_line),
    )


def once(study: Study, key: Any, compute: Callable[[], Any]) -> Any:
    """`compute()` the first time `key` is asked of the study, then its result again: the verdict and
    the sections read the same bootstrap tests, which cost seconds each."""
    if key not in study.memo:
        study.memo[key] = compute()
    return study.memo[key]


def seed_line_tests(
    study: Study,
    name: str,
    groups: Mapping[tuple[Arm, int | None], Mapping[Any, Point]],
    vanilla_of: Callable[[Arm], Arm | None],
    seed_line: Callable[[Study, Arm, Any, str], SeedLine | None],
) -> list[LineTest]:
    """Each group's arm, seed by seed, against the line `seed_line` draws through that seed's vanilla
    adapter (`vanilla_of` the arm; an arm without one is skipped): `compare_with_line` over the seeds
    that have both, on the pooled score `name`, and the seeds' Δ tested against 0."""
    tests = []
    for (arm, length), points in groups.items():
        vanilla = vanilla_of(arm)
        if vanilla is None:
            continue
        lines, arms, unmatched = {}, {}, 0
        for seed, point in points.items():
            mine, line = per_question(point, study, name), seed_line(study, vanilla, seed, name)
            if mine is None or line is None:
                unmatched += 1
                continue
            lines[seed], arms[seed] = line, mine
        pairs = aligned(lines, arms) if arms else []
        if not pairs:  # said in the report, not dropped from it
            tests.append(LineTest(arm, length, name, None, None, len(points)))
            continue
        comparison = compare_with_line(pairs)
        by_seed = paired_t_test(comparison.deltas, [0.0] * len(comparison.deltas))
        tests.append(LineTest(arm, length, name, comparison, by_seed, unmatched))
    return tests
