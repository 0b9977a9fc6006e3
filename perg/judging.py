"""Parse the preference judge's Likert rating."""

from __future__ import annotations

import re
from typing import Literal

from perg.protocol import iter_json_objects

JudgeOutcome = Literal["followed", "not_followed", "unparseable", "not_applicable"]
RATING_MIN, RATING_MAX = 1, 5

# Structured output of a constrained judge (Endpoint.constrain_rating): a JSON string that
# can only be one of the five tags, so the reply parses by the paper's rule (first
# <answer>(\d+)</answer>) and by parse_rating.
RATING_SCHEMA: dict[str, object] = {
    "enum": [f"<answer>{n}</answer>" for n in range(RATING_MIN, RATING_MAX + 1)]
}

_ANSWER_TAG = re.compile(r"<answer>\s*\[?\s*(\d+)\s*\]?\s*</answer>", re.IGNORECASE)


def parse_rating(text: str) -> int | None:
    """The rating in ``<answer>4</answer>`` (last tag wins) or ``{"rating": 4}``; None when
    absent or outside 1..5."""
    tags = _ANSWER_TAG.findall(text)
    rating: int | None = int(tags[-1]) if tags else _json_rating(text)
    return rating if rating is not None and RATING_MIN <= rating <= RATING_MAX else None


def _json_rating(text: str) -> int | None:
    for obj in iter_json_objects(text):
        value = obj.get("rating")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
    return None


def judge_outcome(
    rating: int | None, threshold: int = 3, *, applicable: bool = True
) -> JudgeOutcome:
    """Followed iff ``rating >= threshold``; a missing rating is unparseable.

    ``applicable=False`` (the irrelevant setting, where AFR is undefined) gives not_applicable.
    """
    if not applicable:
        return "not_applicable"
    if rating is None:
        return "unparseable"
    return "followed" if rating >= threshold else "not_followed"
