"""Metrics on hand-written predictions whose right answers are known."""

from __future__ import annotations

import math

import pytest

from imsm.metrics import (
    METRICS,
    accuracy,
    binary_f1,
    canonical_number,
    contains,
    exact_match,
    extract_number,
    hit_at_5_words,
    matthews_corrcoef,
    normalize_answer,
    roc_auc,
    token_f1,
    yes_no_label,
    yes_no_pair,
)


def test_normalisation_follows_squad():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear.") == "apple pear"


@pytest.mark.parametrize(
    "text, label",
    [
        ("Yes", "yes"),
        ("No.", "no"),
        ("yes, they are equivalent", "yes"),
        ("No, not at all. Yes?", "no"),
        ("The eyes have it", None),
        ("I cannot say", None),
        ("  YES!", "yes"),
    ],
)
def test_yes_no_label_is_the_first_yes_or_no_word(text, label):
    assert yes_no_label(text) == label


@pytest.mark.parametrize(
    "output, number",
    [
        ("She makes 9 * 2 = 18 dollars.\n#### 18", "18"),
        ("So the total is 5 + 7 = 12. The answer is 12.", "12"),
        ("The answer is $1,250.", "1250"),
        ("The answer is: -3", "-3"),
        ("He has 2.50 left. The answer is 2.5.", "2.5"),
        ("First 3 apples, then 4 more, so 7 apples in total.", "7"),
        ("The answer is 18.00", "18"),
        ("The answer is 10. Wait, 12 is not right either; 5 + 5 = 10", "10"),
        ("no digits here", None),
        ("It costs $1,000,000 in total", "1000000"),
    ],
)
def test_gsm8k_extraction_on_realistic_outputs(output, number):
    assert extract_number(output) == number


def test_canonical_numbers():
    assert canonical_number("1,234.50") == "1234.5"
    assert canonical_number("-$7") == "-7"
    assert canonical_number("seven") is None


def test_accuracy_compares_extracted_answers():
    assert accuracy("Yes, they mean the same.", ["yes"], "yes_no") == 1.0
    assert accuracy("They do not. No.", ["yes"], "yes_no") == 0.0
    assert accuracy("I don't know", ["no"], "yes_no") == 0.0
    assert accuracy("... The answer is 1,018.", ["1018"], "number") == 1.0
    assert accuracy("Group B", ["group b"], "text") == 1.0


def test_exact_match_contains_and_hit_at_five_words():
    golds = ["Jamaican English", "Jamaican Creole English Language"]
    assert exact_match("jamaican english.", golds) == 1.0
    assert exact_match("They speak Jamaican English.", golds) == 0.0
    assert contains("They speak Jamaican English.", golds) == 1.0
    assert hit_at_5_words("They speak Jamaican English.", golds) == 1.0
    long_answer = "Jamaica is an island in the Caribbean whose people mostly speak Jamaican English."
    assert contains(long_answer, golds) == 1.0 and hit_at_5_words(long_answer, golds) == 0.0
    assert contains("It is not known", ["no"]) == 0.0  # whole words: "no" is not in "not"
    assert contains("in 118 years", ["18"]) == 0.0


def test_token_f1_is_squads_and_takes_the_best_gold():
    assert token_f1("the cat sat", ["cat sat down"]) == pytest.approx(0.8)
    assert token_f1("Group B", ["group a", "group b"]) == 1.0
    assert token_f1("nothing", ["cat"]) == 0.0


def test_binary_f1_and_mcc_are_corpus_level():
    pairs = [
        yes_no_pair(p, [g]) for p, g in [("yes", "yes"), ("yes", "no"), ("no", "yes"), ("no", "no"), ("yes", "yes")]
    ]
    assert pairs == [(1, 1), (1, 0), (0, 1), (0, 0), (1, 1)]
    assert binary_f1(pairs) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert matthews_corrcoef(pairs) == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    assert matthews_corrcoef([(1, 1), (1, 0)]) == 0.0  # one predicted class only
    assert binary_f1([(0, 0), (0, 1)]) == 0.0


def test_roc_auc_with_ties_and_degenerate_input():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5], [1, 0, 1]) == 0.5
    assert roc_auc([0.3, 0.7, 0.5, 0.5], [0, 1, 1, 0]) == pytest.approx(0.875)
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))


def test_registry_names_and_suggestions():
    assert {"accuracy", "exact_match", "contains", "token_f1", "hit@5", "f1", "mcc"} <= set(METRICS.names())
    assert METRICS.get("mcc").aggregate([(1, 1), (0, 0)]) == 1.0
    with pytest.raises(ValueError, match="did you mean 'contains'"):
        METRICS.get("contain")
