"""Each arm against its vanilla adapter's own training curve at the same gain: the comparison of
fine-tuning methods along learning–forgetting curves at matched target performance (Biderman et al.
2024, "LoRA Learns Less and Forgets Less"). The curve of one seed runs through Base (step 0), that
seed's vanilla adapter at each snapshot, and the adapter as trained; an arm is set against it where it
reaches the arm's own target gain, by the λ line's rule (`frontier_line`: the points joined in order of
gain, every point a knot, so the vanilla adapter as trained has Δ = 0), with the same bootstrap.

Unlike the λ line it needs no scaling of the adapter, so every peft method has one (DoRA too), and it
answers "had I trained plain PEFT only until it learned as much, would it have forgotten less?". What
it cannot say: a snapshot is a point of one run before its schedule ended (with a cosine schedule, at a
higher rate than a run trained to that length would end at), not a run of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imsm.experiment.report.frontier_lambda import (
    LineTest,
    SeedLine,
    drawn_arms,
    once,
    per_question,
    seed_line_tests,
)
from imsm.experiment.report.frontier_line_section import tests_table
from imsm.experiment.report.frontier_study import POOLED, Arm, Point, Study

HEADING = "## Against vanilla's training curve"


def _snapshots(study: Study, vanilla: Arm, seed: Any) -> list[Point]:
    """The seed's vanilla adapter read before the end of training, in training order."""
    points = [p for p in study.points if p.arm == vanilla and p.seed == seed and not p.final and p.length]
    return sorted(points, key=lambda p: p.length)


def curve_vanilla(study: Study, like: Arm) -> Arm | None:
    """The vanilla adapter of `like`'s peft method and setting, where it was read at a snapshot as
    well as at the end (else there is no curve, only Base and one point); None otherwise."""
    vanilla = Arm(like.method, "none", like.setting)
    trained = study.final(vanilla)
    return vanilla if any(_snapshots(study, vanilla, seed) for seed in trained) else None


def _seed_curve(study: Study, vanilla: Arm, seed: Any, name: str) -> SeedLine | None:
    """Per question, (target, pooled `name`) of one seed's curve: Base, the vanilla adapter's snapshots,
    the adapter as trained (the control, whose place it returns); None without the adapter as trained."""
    trained = study.final(vanilla).get(seed)
    if trained is None:
        return None
    candidates = [study.base] if study.base is not None else []
    candidates += [*_snapshots(study, vanilla, seed), trained]
    kept = [(point, values) for point in candidates if (values := per_question(point, study, name))]
    control = next((i for i, (point, _) in enumerate(kept) if point is trained), None)
    return None if control is None else ([values for _, values in kept], control)


def _curve_arms(study: Study) -> dict[tuple[Arm, int | None], Mapping[Any, Point]]:
    """What the plots draw (`drawn_arms`) of every method, the vanilla adapters themselves aside (their
    snapshots are the curve): the gated arms at every length, the free baselines off the λ line, the
    tuned branches read alone."""
    drawn = drawn_arms(study, lined=None)
    return {(arm, n): points for (arm, n), points in drawn.items() if not (arm.is_trained and arm.fusion == "none")}


def curve_tests(study: Study, name: str) -> list[LineTest]:
    """Each arm of `_curve_arms` against its vanilla adapter's training curve, seed by seed, on the
    pooled score `name`."""
    return once(
        study,
        ("training curve", name),
        lambda: seed_line_tests(study, name, _curve_arms(study), lambda arm: curve_vanilla(study, arm), _seed_curve),
    )


def curve_section(study: Study) -> list[str]:
    """The seed-by-seed test of every arm against its vanilla adapter's training curve, or nothing where
    no vanilla adapter was read before the end of its training."""
    tests = [test for name in POOLED for test in curve_tests(study, name)]
    if not tests:
        return []
    intro = (
        "Each seed's arm against the training curve of that seed's own vanilla adapter of the same peft "
        "method: Base (step 0), the adapter's snapshots and the adapter as trained, a line whose points are "
        "joined in order of target gain as the λ line's are, read at the arm's target score. Δ = the arm's "
        "forgetting − the curve's, in points, averaged over seeds: negative forgets less than plain training "
        "stopped at the same gain. Every method has this curve (DoRA too, which has no λ line); a snapshot "
        "is a point of one run before its schedule ended, not a run trained to that length."
    )
    return [HEADING, "", *tests_table(study, tests, intro)]
