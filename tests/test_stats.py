"""The statistics behind the report: p-values against printed t tables, and the paired test."""

from __future__ import annotations

import math

import pytest

from imsm.experiment.stats import mean_std, paired_t_test, student_t_critical, student_t_two_sided_p


@pytest.mark.parametrize(
    ("t", "df", "p"),
    [(12.706, 1, 0.05), (4.303, 2, 0.05), (2.776, 4, 0.05), (2.228, 10, 0.05), (9.925, 2, 0.01), (0.0, 3, 1.0)],
)
def test_two_sided_p_values_match_the_t_table(t, df, p):
    assert student_t_two_sided_p(t, df) == pytest.approx(p, abs=2e-4)
    assert student_t_two_sided_p(-t, df) == pytest.approx(p, abs=2e-4)  # two-sided: symmetric


def test_paired_test_works_on_the_differences():
    treatment, control = [3.0, 5.0, 4.0, 6.0], [1.0, 2.0, 2.0, 3.0]  # differences 2, 3, 2, 3
    test = paired_t_test(treatment, control)
    mu, sd = mean_std([2.0, 3.0, 2.0, 3.0])
    assert test.n == 4 and test.mean_difference == pytest.approx(2.5)
    assert test.t == pytest.approx(mu / (sd / 2)) and test.t == pytest.approx(8.660, abs=1e-3)
    assert test.p == pytest.approx(student_t_two_sided_p(test.t, 3))


def test_too_few_pairs_or_no_difference_give_no_false_certainty():
    assert math.isnan(paired_t_test([1.0], [0.5]).p)
    assert paired_t_test([1.0, 2.0], [1.0, 2.0]).p == 1.0
    with pytest.raises(ValueError):
        paired_t_test([1.0, 2.0], [1.0])


def test_differences_of_rounding_alone_are_no_difference():
    """The same answers scored twice differ by rounding (up to 2e-5 on the MRPC study's means): that is
    no evidence of anything, however consistent its sign; one question in 800 answered otherwise is."""
    rounding = paired_t_test([0.56 + 1.6e-5, 0.58 + 2e-5, 0.57 + 2e-6], [0.56, 0.58, 0.57])
    assert math.isnan(rounding.t) and rounding.p == 1.0
    real = paired_t_test([0.56 + 1 / 800, 0.58 + 1 / 800, 0.57 + 1 / 800], [0.56, 0.58, 0.57])
    assert real.t > 0 and real.p < 0.05


@pytest.mark.parametrize(("df", "t"), [(1, 12.706), (2, 4.303), (3, 3.182), (10, 2.228), (30, 2.042)])
def test_critical_t_matches_the_t_table(df, t):
    assert student_t_critical(df) == pytest.approx(t, abs=1e-3)
    assert student_t_two_sided_p(student_t_critical(df), df) == pytest.approx(0.05)
