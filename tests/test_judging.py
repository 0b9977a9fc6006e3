"""Judge rating parsing and outcomes."""

from __future__ import annotations

import pytest

from perg.judging import (
    afr_defined,
    judge_outcome,
    parse_rating,
    parse_rating_paper,
    read_rating,
)


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
    ("text", "expected"),
    [
        ("<explanation>Good.</explanation>\n<answer>4</answer>", 4),
        # the authors' edge cases: no range check, first match wins, exact tag only
        ("<answer>6</answer>", 6),
        ("<answer>0</answer>", 0),
        ("<answer>2</answer> on reflection <answer>5</answer>", 2),
        ("Format: <answer>[1-5]</answer>. Mine: <answer>3</answer>", 3),
        ("<answer> 4 </answer>", None),
        ("<answer>[4]</answer>", None),
        ("<ANSWER>5</ANSWER>", None),
        ('{"rating": 4}', None),
        ("", None),
    ],
)
def test_parse_rating_paper(text: str, expected: int | None) -> None:
    assert parse_rating_paper(text) == expected
    assert read_rating(text, paper=True) == expected


def test_read_rating_dispatches_on_the_protocol() -> None:
    assert read_rating("<answer>6</answer>", paper=False) is None
    assert read_rating("<answer> 4 </answer>", paper=False) == 4


@pytest.mark.parametrize(
    ("rating", "threshold", "expected"),
    [
        (1, 3, "not_followed"),
        (2, 3, "not_followed"),
        (3, 3, "followed"),
        (5, 3, "followed"),
        (6, 3, "followed"),  # the paper's unchecked 6
        (3, 4, "not_followed"),
        (None, 3, "unparseable"),
    ],
)
def test_judge_outcome(rating: int | None, threshold: int, expected: str) -> None:
    assert judge_outcome(rating, threshold, setting="relevant") == expected
    assert judge_outcome(rating, threshold, setting="mixed") == expected


def test_no_afr_in_the_irrelevant_setting() -> None:
    assert [afr_defined(s) for s in ("relevant", "mixed", "irrelevant")] == [True, True, False]
    assert judge_outcome(4, 3, setting="irrelevant") == "not_applicable"
    assert judge_outcome(None, 3, setting="irrelevant") == "not_applicable"


@pytest.mark.parametrize(
    ("reply", "paper"),
    [
        ('{"rating": "²"}', None),  # str.isdigit() accepts it, int() does not
        ('{"rating": "' + "9" * 5000 + '"}', None),
        ("<answer>" + "9" * 5000 + "</answer>", None),  # past int()'s 4,300-digit limit
        ("<answer>٣</answer>", 3),  # the authors' \d and int() read Arabic-Indic digits
    ],
)
def test_hostile_ratings_are_unparseable_not_crashes(reply: str, paper: int | None) -> None:
    assert parse_rating(reply) is None
    assert read_rating(reply, paper=True) == paper
