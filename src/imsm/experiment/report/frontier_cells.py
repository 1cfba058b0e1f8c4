"""How `imsm frontier`'s tables write a number: differences with their sign, standard error and t,
seed-level tests, spreads over seeds, and each score's column header."""

from __future__ import annotations

import math

from imsm.experiment.report.frontier_compare import QuestionTest
from imsm.experiment.report.frontier_study import FORGETTING, LEARNING, POOL, Score, Study
from imsm.experiment.report.grid import NATS, scale
from imsm.experiment.stats import PairedTest

STRONG_T = 3.0  # |t| at which a question-level difference is marked (z-type: about 3 standard errors)


def decimals(metric: str) -> int:
    """Places a difference of `metric` is written to: 2 for points (×100), 3 for nats, whose
    differences and standard errors are hundredths (a gold-NLL SE of 0.004 must not read 0.00)."""
    return 3 if metric in NATS else 2


def signed(metric: str, value: float) -> str:
    """A difference in display scale with its sign, to `decimals(metric)` places. Rounded to 9 first,
    so that one value reached by two float paths (a mean of question means, a mean of seed means)
    reads alike; + 0.0 so that it never reads "-0.00"."""
    places = decimals(metric)
    return f"{round(round(scale(metric, value), 9), places) + 0.0:+.{places}f}"


def standard_error(metric: str, value: float) -> str:
    """A standard error in display scale, to as many places as `signed` writes the difference."""
    return f"{scale(metric, value):.{decimals(metric)}f}"


def difference_cells(result: QuestionTest, metric: str) -> tuple[str, str]:
    """'Δ ± SE' in display scale and t, bold where |t| >= STRONG_T; dashes where undefined."""
    test = result.test
    if math.isnan(test.mean_difference):
        return "–", "–"
    difference = signed(metric, test.mean_difference)
    if not math.isnan(result.standard_error):
        difference += f" ± {standard_error(metric, result.standard_error)}"
    if math.isnan(test.t):
        return difference, "–"
    t = "∞" if math.isinf(test.t) else f"{test.t:.1f}"
    return difference, f"**{t}**" if abs(test.t) >= STRONG_T else t


def metric_description(study: Study) -> str:
    """The target's score as the report names it, with its direction where lower is better."""
    if not study.lower_is_better:
        return study.metric
    name = "gold NLL of the target" if study.metric == "gold_nll" else study.metric
    return f"{name} (nats, lower is better; gain = Base − arm)"


def learning_label(study: Study) -> str:
    """The name of the axis of learning (`Study.learning`): the target's score, or its gain where
    lower is better."""
    if not study.lower_is_better:
        return f"{study.target} {study.metric}"
    return f"{study.target} {study.metric} gain (Base − arm)"


def score_header(study: Study, score: Score) -> str:
    task, metric = score
    if task == LEARNING:  # the target read along the axis of learning: its score, or its gain
        return f"{learning_label(study)} (target)"
    if task == study.target:
        return f"{task} {metric} (target{', lower is better' if study.lower_is_better else ''})"
    if task == FORGETTING:
        return f"forgetting ({'accuracy' if metric == 'accuracy' else 'gold prob.'})"
    if task == POOL:
        return f"pooled {'accuracy' if metric == 'accuracy' else 'gold prob.'}"
    return f"{task} {metric}"


def seed_test_cells(test: PairedTest) -> tuple[str, str]:
    """t and p of a seed-level test. Where every seed differs by the same amount (likely with a few
    seeds and counts of questions) no test is possible, and p = 0 would read as certainty."""
    if math.isinf(test.t):
        return "–", "– (all seeds differ equally)"
    return ("–" if math.isnan(test.t) else f"{test.t:.2f}"), ("–" if math.isnan(test.p) else f"{test.p:.3f}")


def with_spread(value: float, std: float, seeds: int, digits: int = 1) -> str:
    return f"{value:.{digits}f} ± {std:.{digits}f}" if seeds > 1 else f"{value:.{digits}f}"
