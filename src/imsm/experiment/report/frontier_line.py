"""An arm against the λ line at the same target score, with the uncertainty of both coordinates.

The λ line of one seed runs through Base (λ = 0), that seed's vanilla adapter scaled by λ, and the
adapter as trained (λ = 1). An arm is set against the line where the line reaches the arm's own
target score: Δ = the arm's forgetting − the line's there (negative: the arm forgets less than
scaling the vanilla adapter to the same gain).

The matching rule. The line is read as forgetting against target score, its points taken in order
of target score (not of λ) and joined linearly. So every point of the line is a knot of it, and an
arm that equals a point of the line has Δ = 0; in particular the vanilla adapter, which is the line's
λ = 1 point, has Δ = 0 in every seed and every bootstrap replicate, however noise orders the line's
gains. Near the top the gain flattens (on MRPC, λ = 0.75 and λ = 1 answer all but 3-5 of 200
questions alike), so noise often reverses or ties the gains of neighbouring λ. The rule takes no side
there: it prefers neither the less- nor the more-forgetting point.

- Points whose target scores tie count as their mean between and beyond knots; an arm whose target
  score is exactly a tie is set against the tied point whose score is nearest its own, so that a
  point of the line still sits on it (the mean would put the vanilla adapter above its own line
  whenever a smaller λ ties its gain, which on MRPC happens in a good share of the replicates).
- An arm past the line's best gain is set against the point(s) with that gain ("beyond": it learns
  more than any λ, so Δ < 0 there means it also forgets less); an arm under the line's lowest gain
  (Base's) against that point ("below"). No seed is left out: leaving out arms that out-learn the
  line would drop the one place an arm can dominate.

An earlier rule made the gains non-decreasing in λ (pooling adjacent violators) and took the smallest
λ of a pooled block: it always picked the least-forgetting point of a tie, so the vanilla adapter
sat +0.83 points of pooled accuracy above its own line on the MRPC study, and never below it.

Target scores are noisy (on 200 questions a standard error of about 3 points), and near the top of
the line a one-question shift moves the match a lot. The uncertainty is therefore taken from a
bootstrap that resamples the target questions and the probe questions together (the same draws for
every point, as the questions are shared): each replicate re-matches every seed and recomputes Δ,
and the vanilla adapter's own Δ on the same draw (the control; 0 under this rule, but computed, so
that a rule that favours one side shows). A test over probe questions alone would condition on the
target scores and be overconfident.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ON, BEYOND, BELOW = "on", "beyond", "below"
REPLICATES = 2000
BOOTSTRAP_SEED = 0  # fixed, so a report rerun on the same results prints the same intervals
_CHUNK = 250  # replicates drawn at a time
_TIE = 1e-9  # target scores this close are one gain: a weighted mean summed in another order differs by an ulp


def _by_target(targets: Sequence[float], scores: Sequence[float]) -> list[tuple[float, list[float]]]:
    """The line's points grouped by target score in increasing order: (target, the tied points' scores)."""
    groups: list[tuple[float, list[float]]] = []
    for target, score in sorted(zip(map(float, targets), map(float, scores), strict=True)):
        if groups and target - groups[-1][0] <= _TIE:
            groups[-1][1].append(score)
        else:
            groups.append((target, [score]))
    return groups


def matched_score(targets: Sequence[float], scores: Sequence[float], target: float, score: float) -> tuple[float, str]:
    """The line's score where it reaches `target`, and where that is (ON, BEYOND or BELOW).

    `targets` and `scores` are the line's points (any order); `score` is the arm's own, which only
    chooses among points whose target scores tie at exactly `target` (the module's docstring says why).
    """
    groups = _by_target(targets, scores)
    for gain, tied in groups:
        if abs(gain - target) <= _TIE:
            return min(tied, key=lambda s: abs(s - score)), ON
    if target < groups[0][0]:
        return float(np.mean(groups[0][1])), BELOW
    if target > groups[-1][0]:
        return float(np.mean(groups[-1][1])), BEYOND
    above = next(i for i, (gain, _) in enumerate(groups) if gain > target)
    (low, low_scores), (high, high_scores) = groups[above - 1], groups[above]
    w = (target - low) / (high - low)
    return float((1 - w) * np.mean(low_scores) + w * np.mean(high_scores)), ON


def _delta(
    line_targets: Sequence[float], line_scores: Sequence[float], target: float, score: float
) -> tuple[float, str]:
    """Forgetting − the line's at the same target score = the line's score − the arm's (Base cancels)."""
    at, where = matched_score(line_targets, line_scores, target, score)
    return at - score, where


@dataclass(frozen=True)
class SeedPair:
    """One seed's arm and λ line, per question, over questions shared by every point.

    Attributes:
        line_targets: [points, target questions] the target score of each line point, λ order.
        line_scores: [points, probe questions] the pooled probe score of each line point.
        arm_target: [target questions].
        arm_score: [probe questions].
        control: which line point is the vanilla adapter as trained (λ = 1), the control.
    """

    line_targets: np.ndarray
    line_scores: np.ndarray
    arm_target: np.ndarray
    arm_score: np.ndarray
    control: int

    def delta(self) -> tuple[float, str]:
        """The arm's forgetting − the line's at the arm's target score, and where it matched."""
        targets, scores = self.line_targets.mean(1), self.line_scores.mean(1)
        return _delta(targets, scores, float(self.arm_target.mean()), float(self.arm_score.mean()))

    def control_delta(self) -> float:
        """The vanilla adapter's own Δ against its line."""
        targets, scores = self.line_targets.mean(1), self.line_scores.mean(1)
        return _delta(targets, scores, targets[self.control], scores[self.control])[0]


@dataclass(frozen=True)
class Estimate:
    """A mean Δ over seeds, with the standard error, 95% percentile interval and mean of its bootstrap."""

    mean: float
    standard_error: float
    interval: tuple[float, float]
    replicate_mean: float  # the bootstrap's own mean: Δ's expectation over question draws


def _estimate(mean: float, replicated: np.ndarray) -> Estimate:
    low, high = np.percentile(replicated, [2.5, 97.5])
    spread = float(replicated.std(ddof=1))
    return Estimate(float(mean), spread, (float(low), float(high)), float(replicated.mean()))


@dataclass(frozen=True)
class LineComparison:
    """Δ over seeds (mean of the seeds' Δ), its bootstrap spread over questions, and each seed's Δ;
    the vanilla adapter's own Δ on the same draws (the control), and the arm's Δ − the control's."""

    deltas: list[float]  # per seed, in seed order
    places: list[str]  # per seed: ON, BEYOND or BELOW
    questions: tuple[int, int]  # (target, probe) questions every point of every seed has
    arm: Estimate  # the mean Δ, target and probe questions resampled together
    control: Estimate  # the vanilla adapter's own Δ, mean over seeds
    difference: Estimate  # the arm's Δ − the control's, replicate by replicate

    @property
    def mean(self) -> float:
        return float(np.mean(self.deltas))

    @property
    def standard_error(self) -> float:
        return self.arm.standard_error

    @property
    def interval(self) -> tuple[float, float]:
        return self.arm.interval

    def count(self, place: str) -> int:
        return self.places.count(place)


def _replicate(pair: SeedPair, target_weights: np.ndarray, probe_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(arm's Δ, control's Δ) of one seed in each replicate drawn by the weights."""
    line_targets = target_weights @ pair.line_targets.T  # [replicates, points]
    line_scores = probe_weights @ pair.line_scores.T
    arm_targets, arm_scores = target_weights @ pair.arm_target, probe_weights @ pair.arm_score
    c = pair.control
    arm, control = np.zeros(len(arm_targets)), np.zeros(len(arm_targets))
    for b, (targets, scores) in enumerate(zip(line_targets.tolist(), line_scores.tolist(), strict=True)):
        arm[b] = _delta(targets, scores, arm_targets[b], arm_scores[b])[0]
        control[b] = _delta(targets, scores, targets[c], scores[c])[0]
    return arm, control


def compare_with_line(pairs: Sequence[SeedPair], replicates: int = REPLICATES) -> LineComparison:
    """Every seed's Δ, and the bootstrap of their mean over the shared target and probe questions."""
    if not pairs:
        raise ValueError("no seed to compare")
    n_target, n_probe = pairs[0].arm_target.size, pairs[0].arm_score.size
    if any((p.arm_target.size, p.arm_score.size) != (n_target, n_probe) for p in pairs):
        raise ValueError("the seeds must share their questions (the bootstrap resamples them together)")
    deltas, places = zip(*(pair.delta() for pair in pairs), strict=True)
    controls = [pair.control_delta() for pair in pairs]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    arm, control = np.zeros(replicates), np.zeros(replicates)
    # Resampling with replacement as multinomial weights, so every mean is one matrix product; a
    # chunk of replicates at a time, so the weights stay small for probes of thousands of questions.
    for start in range(0, replicates, _CHUNK):
        size = min(_CHUNK, replicates - start)
        target_weights = rng.multinomial(n_target, np.full(n_target, 1 / n_target), size=size) / n_target
        probe_weights = rng.multinomial(n_probe, np.full(n_probe, 1 / n_probe), size=size) / n_probe
        for pair in pairs:
            mine, theirs = _replicate(pair, target_weights, probe_weights)
            arm[start : start + size] += mine
            control[start : start + size] += theirs
    arm, control = arm / len(pairs), control / len(pairs)
    mine = _estimate(float(np.mean(deltas)), arm)
    theirs = _estimate(float(np.mean(controls)), control)
    difference = _estimate(mine.mean - theirs.mean, arm - control)
    return LineComparison(list(deltas), list(places), (n_target, n_probe), mine, theirs, difference)


__all__ = ["BELOW", "BEYOND", "ON", "Estimate", "LineComparison", "SeedPair", "compare_with_line", "matched_score"]
