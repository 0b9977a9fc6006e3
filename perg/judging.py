"""The preference judge's rating: how each protocol reads it, and what it means for a row."""

from __future__ import annotations

import re
from typing import Literal

from perg.protocol import Setting, iter_json_objects

JudgeOutcome = Literal["followed", "not_followed", "unparseable", "not_applicable"]
RATING_MIN, RATING_MAX = 1, 5
_STORABLE_MAX = 2**31 - 1  # the results store keeps ratings in an INTEGER column
# The one statement of the rule: AFR (and so the judge) is not defined in the irrelevant
# setting, where no shown preference is meant to be followed. The SQL twin is the column
# ``afr_defined`` of the view ``perg_row_outcomes`` (perg/metrics.sql).
AFR_UNDEFINED_SETTINGS: frozenset[str] = frozenset({"irrelevant"})

# Structured output of a constrained judge (RunContext.constrain_rating): a JSON string that
# can only be one of the five tags, so the reply parses by the paper's rule (first
# <answer>(\d+)</answer>) and by parse_rating.
RATING_SCHEMA: dict[str, object] = {
    "enum": [f"<answer>{n}</answer>" for n in range(RATING_MIN, RATING_MAX + 1)]
}

_ANSWER_TAG = re.compile(r"<answer>\s*\[?\s*([0-9]{1,9})\s*\]?\s*</answer>", re.IGNORECASE)
# The published reader: re.search(r"<answer>(\d+)</answer>", text).group(1), no range check.
PAPER_ANSWER_TAG = re.compile(r"<answer>(\d+)</answer>")


def afr_defined(setting: Setting | str) -> bool:
    """Whether preference following (AFR) is measured in ``setting``."""
    return setting not in AFR_UNDEFINED_SETTINGS


def parse_rating(text: str) -> int | None:
    """Strict reading: the rating in ``<answer>4</answer>`` (last tag wins) or
    ``{"rating": 4}``; None when absent or outside 1..5."""
    tags = _ANSWER_TAG.findall(text)
    rating: int | None = int(tags[-1]) if tags else _json_rating(text)
    return rating if rating is not None and RATING_MIN <= rating <= RATING_MAX else None


def parse_rating_paper(text: str) -> int | None:
    """The published reading: the first ``<answer>(\\d+)</answer>``, exactly as written (no
    spaces, no brackets), with no range check: a 6 is a 6 and counts as followed."""
    match = PAPER_ANSWER_TAG.search(text)
    if match is None:
        return None
    try:
        rating = int(match.group(1))
    except ValueError:  # more digits than int() takes (Python's 4,300-digit limit)
        return None
    return rating if rating <= _STORABLE_MAX else None  # beyond the store's INTEGER: unreadable


def read_rating(text: str, *, paper: bool) -> int | None:
    """The rating as the run's protocol reads it (``paper``: the published reader)."""
    return parse_rating_paper(text) if paper else parse_rating(text)


def _json_rating(text: str) -> int | None:
    for obj in iter_json_objects(text):
        value = obj.get("rating")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value.strip()):
            return int(value)
    return None


def judge_outcome(rating: int | None, threshold: int, *, setting: str) -> JudgeOutcome:
    """Followed iff ``rating >= threshold`` (the protocol's ``judge.followed_threshold``); a
    missing rating is unparseable; not_applicable where AFR is undefined."""
    if not afr_defined(setting):
        return "not_applicable"
    if rating is None:
        return "unparseable"
    return "followed" if rating >= threshold else "not_followed"
