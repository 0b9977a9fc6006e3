"""Judge rating parsing and outcomes."""

from __future__ import annotations

import pytest

from perg.judging import judge_outcome, parse_rating


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<explanation>Good.</explanation>\n<answer>4</answer>", 4),
        ("<answer> 4 </answer>", 4),
        ("<answer>[4]</answer>", 4),
        ("<ANSWER>5</ANSWER>", 5),
        ("```xml\n<explanation>x</explanation>\n<answer>1</answer>\n```", 1),
        ('{"rating": 4}', 4),
        ('Here: {"explanation": "ok", "rating": "2"}', 2),
        # the template's own placeholder is not a rating; the last tag wins
        ("Format: <answer>[1-5]</answer>. Mine: <answer>3</answer>", 3),
        ("<answer>2</answer> on reflection <answer>5</answer>", 5),
        # unparseable or out of range
        ("<answer>[1-5]</answer>", None),
        ("<answer>0</answer>", None),
        ("<answer>6</answer>", None),
        ("<answer>four</answer>", None),
        ("I would rate this a 4.", None),
        ('{"rating": 7}', None),
        ('{"rating": true}', None),
        ('{"rating": 3.5}', None),
        ("", None),
    ],
)
def test_parse_rating(text: str, expected: int | None) -> None:
    assert parse_rating(text) == expected


@pytest.mark.parametrize(
    ("rating", "expected"),
    [
        (1, "not_followed"),
        (2, "not_followed"),
        (3, "followed"),
        (5, "followed"),
        (None, "unparseable"),
    ],
)
def test_judge_outcome(rating: int | None, expected: str) -> None:
    assert judge_outcome(rating) == expected


def test_judge_outcome_threshold_and_applicability() -> None:
    assert judge_outcome(3, threshold=4) == "not_followed"
    assert judge_outcome(4, applicable=False) == "not_applicable"
    assert judge_outcome(None, applicable=False) == "not_applicable"
