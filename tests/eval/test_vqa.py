"""Tests for cheers_pl.eval.vqa: normalised exact match per category."""

import pytest

from cheers_pl.eval.vqa import exact_match_by_category, normalize_answer


def test_normalize_answer_ignores_case_punctuation_and_whitespace() -> None:
    assert normalize_answer("  Three.\n") == "three"
    assert normalize_answer("Yes!") == normalize_answer("yes") == "yes"
    assert normalize_answer("top  Left,") == "top left"
    assert normalize_answer("3") != normalize_answer("three")


def test_exact_match_by_category() -> None:
    preds = ["Red!", "blue", " THREE ", "7", "no", "dotted"]
    answers = ["red", "red", "three", "7", "yes", "dotted"]
    categories = ["color", "color", "count", "digit", "relation", "made_up"]
    scores = exact_match_by_category(preds, answers, categories)
    assert scores == {"color": 0.5, "count": 1.0, "digit": 1.0, "relation": 0.0, "other": 1.0, "overall": 4 / 6}
    with pytest.raises(ValueError, match="as many"):
        exact_match_by_category(["a"], [], [])
