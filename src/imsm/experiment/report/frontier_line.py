"""An arm against the λ line at the same target score, with the uncertainty of both coordinates.

The λ line of one seed runs through Base (λ = 0), that seed's vanilla adapter scaled by λ, and the
adapter as trained (λ = 1). An arm is set against the line where the line reaches the arm's own
target score: Δ = the arm's forgetting − the line's there (negative: the arm forgets less than
scaling the vanilla adapter to the same gain).

Matching on a measured target score has two pitfalls, both handled here:

- Target scores are noisy (on 200 questions a standard error of about 3 points), and near the top
  of the line the gain flattens, so a one-question shift moves the matched λ, and the line's
  forgetting, a lot. The uncertainty is therefore taken from a bootstrap that resamples the target
  questions and the probe questions together (the same draws for every point, as the questions are
  shared): each replicate re-matches every seed and recomputes Δ. A test over probe questions alone
  would condition on the target scores and be overconfident.
- Noise makes the gain non-monotone in λ, and picking the best of several crossings favours the line.
  The line's target scores are first made non-decreasing in λ (least squares, pool adjacent
  violators), and the arm is matched at the smallest λ that reaches its score. An arm past the line's
  best gain is compared with the first λ point that reaches it ("beyond": it learns more than the
  fitted line anywhere, and Δ < 0 means it also forgets less than that point); an arm below Base's
  gain is compared with Base ("below"). No seed is left out: leaving out arms that out-learn the
  line would drop the one place an arm can dominate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ON, BEYOND, BELOW = "on", "beyond", "below"
REPLICATES = 2000
BOOTSTRAP_SEED = 0  # fixed, so a report rerun on the same results prints the same intervals
_CHUNK = 250  # replicates drawn at a time
_TIE = 1e-9


def nondecreasing(values: Sequence[float]) -> list[float]:
    """The least-squares non-decreasing fit of `values` (pool adjacent violators, equal weights)."""
    blocks: list[list[float]] = []  # [sum, count]
    for value in values:
        blocks.append([float(value), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    fitted: list[float] = []
    for total, count in blocks:
        fitted += [total / count] * int(count)
    return fitted


def matched_score(targets: Sequence[float], scores: Sequence[float], target: float) -> tuple[float, str]:
    """The line's score where it reaches `target`, and where that is (ON, BEYOND or BELOW).

    `targets` and `scores` are the line's points in λ order (Base first). The targets are made
    non-decreasing first; the line is linear between consecutive points; the smallest λ that reaches
    `target` counts. Past the line's best gain: the first point that reaches it; below Base's: Base.
    """
    fitted = nondecreasing(targets)
    if target < fitted[0] - _TIE:
        return float(scores[0]), BELOW
    if target > fitted[-1] + _TIE:  # the first point at the best gain, within the tie (pooled means round)
        first = next(i for i, value in enumerate(fitted) if value >= fitted[-1] - _TIE)
        return float(scores[first]), BEYOND
    i = next(i for i, value in enumerate(fitted) if value >= target - _TIE)
    if i == 0 or fitted[i] - target <= _TIE:
        return float(scores[i]), ON
    w = (target - fitted[i - 1]) / (fitted[i] - fitted[i - 1])
    return float((1 - w) * scores[i - 1] + w * scores[i]), ON


@dataclass(frozen=True)
class SeedPair:
    """One seed's arm and λ line, per question, over questions shared by every point.

    Attributes:
        line_targets: [points, target questions] the target score of each line point, λ order.
        line_scores: [points, probe questions] the pooled probe score of each line point.
        arm_target: [target questions].
        arm_score: [probe questions].
    """

    line_targets: np.ndarray
    line_scores: np.ndarray
    arm_target: np.ndarray
    arm_score: np.ndarray

    def delta(self) -> tuple[float, str]:
        """The arm's forgetting − the line's at the arm's target score, and where it matched."""
        at, where = matched_score(self.line_targets.mean(1), self.line_scores.mean(1), float(self.arm_target.mean()))
        return at - float(self.arm_score.mean()), where


@dataclass(frozen=True)
class LineComparison:
    """Δ over seeds (mean of the seeds' Δ), its bootstrap spread over questions, and each seed's Δ."""

    deltas: list[float]  # per seed, in seed order
    places: list[str]  # per seed: ON, BEYOND or BELOW
    questions: tuple[int, int]  # (target, probe) questions every point of every seed has
    standard_error: float  # of the mean Δ, target and probe questions resampled together
    interval: tuple[float, float]  # 95% percentile interval of the mean Δ

    @property
    def mean(self) -> float:
        return float(np.mean(self.deltas))

    def count(self, place: str) -> int:
        return self.places.count(place)


def compare_with_line(pairs: Sequence[SeedPair], replicates: int = REPLICATES) -> LineComparison:
    """Every seed's Δ, and the bootstrap of their mean over the shared target and probe questions."""
    if not pairs:
        raise ValueError("no seed to compare")
    n_target, n_probe = pairs[0].arm_target.size, pairs[0].arm_score.size
    if any((p.arm_target.size, p.arm_score.size) != (n_target, n_probe) for p in pairs):
        raise ValueError("the seeds must share their questions (the bootstrap resamples them together)")
    deltas, places = zip(*(pair.delta() for pair in pairs), strict=True)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    replicated = np.zeros(replicates)
    # Resampling with replacement as multinomial weights, so every mean is one matrix product; a
    # chunk of replicates at a time, so the weights stay small for probes of thousands of questions.
    for start in range(0, replicates, _CHUNK):
        size = min(_CHUNK, replicates - start)
        target_weights = rng.multinomial(n_target, np.full(n_target, 1 / n_target), size=size) / n_target
        probe_weights = rng.multinomial(n_probe, np.full(n_probe, 1 / n_probe), size=size) / n_probe
        for pair in pairs:
            line_targets = target_weights @ pair.line_targets.T  # [size, points]
            line_scores = probe_weights @ pair.line_scores.T
            arm_targets, arm_scores = target_weights @ pair.arm_target, probe_weights @ pair.arm_score
            for b in range(size):
                at, _ = matched_score(line_targets[b], line_scores[b], arm_targets[b])
                replicated[start + b] += at - arm_scores[b]
    replicated /= len(pairs)
    low, high = np.percentile(replicated, [2.5, 97.5])
    spread = float(replicated.std(ddof=1))
    return LineComparison(list(deltas), list(places), (n_target, n_probe), spread, (float(low), float(high)))


__all__ = ["BELOW", "BEYOND", "ON", "LineComparison", "SeedPair", "compare_with_line", "matched_score", "nondecreasing"]
