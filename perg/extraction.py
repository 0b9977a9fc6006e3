"""Map a free-text answer to one of an item's option letters."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from perg.dataset import LETTERS
from perg.protocol import parse_json_response

ExtractionPath = Literal["parsed", "llm", "unresolved"]

_LETTER = r"[\(\[]?(?P<letter>[A-Z])(?![A-Za-z0-9'\u2019])"
_WRAPPED = r"[\(\[]?(?P<letter>[A-Z])[\)\]]?"
_IS_CORRECT = r"\s+(?i:is|would\s+be)\s+(?i:the\s+)?(?i:correct|right|best|most\s+accurate|true)\b"
_QUOTED = r"(?:\s*,?\s*[\"\u201c][^\"\u201d\n]*[\"\u201d]\s*,?)?"

# Tiers of evidence, strongest first; the first tier that names any letter decides.
_TIERS: tuple[tuple[re.Pattern[str], ...], ...] = (
    (re.compile(r"\s*[\(\[*]*(?P<letter>[A-Z])[\)\]*]*[.:]?\s*"),),
    (
        re.compile(
            r"(?<![A-Za-z])(?i:answer|choice)\**\s*(?:(?i:is|would\s+be|will\s+be|should\s+be)\s*:?|[:=\-])"
            r"[\s*]*(?:(?i:option|choice)\s*)?" + _LETTER
        ),
        re.compile(r"(?<![A-Za-z])(?i:option|choice)\s*" + _WRAPPED + _QUOTED + _IS_CORRECT),
        re.compile(r"(?<![A-Za-z0-9])" + _WRAPPED + r"[.:]?" + _QUOTED + _IS_CORRECT),
        # Starts with a letter label, and no later line starts with one.
        re.compile(
            r"\A[\s*#]*[\(\[]?(?P<letter>[A-Z])[.):\]](?:\s|\Z)"
            r"(?![\s\S]*^[\s*#]*[\(\[]?[A-Z][.):\]](?:\s|$))",
            re.MULTILINE,
        ),
    ),
    (
        re.compile(r"(?<![A-Za-z])(?i:option|choice|answer)\s*" + _LETTER),
        re.compile(r"\((?P<letter>[A-Z])\)"),
        re.compile(r"^[\s*#]*(?P<letter>[A-Z])[.):](?:\s|$)", re.MULTILINE),
        re.compile(r"\*\*(?P<letter>[A-Z])[.)]?\*\*"),
    ),
)


def extract_choice(response: str, options: Sequence[str]) -> str | None:
    """The option letter the response chooses, or None when empty or ambiguous.

    Explicit letters win over quoted option text; a tier naming two letters, or a letter
    that is not one of the options, is ambiguous (None).
    """
    letters = LETTERS[: len(options)]
    if not response.strip():
        return None
    if (whole := _TIERS[0][0].fullmatch(response)) is not None:
        return whole["letter"] if whole["letter"] in letters else None
    for tier in _TIERS[1:]:
        found = {m["letter"] for pattern in tier for m in pattern.finditer(response)}
        if found:
            return found.pop() if len(found) == 1 and found <= set(letters) else None
    return _quoted_option(response, options)


def _normalize(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def _quoted_option(response: str, options: Sequence[str]) -> str | None:
    text = _normalize(response)
    quoted = {
        index: norm
        for index, norm in enumerate(_normalize(o) for o in options)
        if norm and re.search(r"(?<!\w)" + re.escape(norm) + r"(?!\w)", text)
    }
    # An option quoted only as part of a longer quoted option does not count.
    maximal = [
        i for i, norm in quoted.items() if not any(norm in o and j != i for j, o in quoted.items())
    ]
    return LETTERS[maximal[0]] if len(maximal) == 1 else None


def choice_schema(letters: Sequence[str]) -> dict[str, object]:
    """JSON schema of the LLM extraction output: ``{"answer": <one of letters>}``."""
    return {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": list(letters)}},
        "required": ["answer"],
        "additionalProperties": False,
    }


def parse_llm_choice(text: str, letters: Sequence[str]) -> str | None:
    """The letter of the LLM extraction output, when it is one of ``letters``."""
    value = parse_json_response(text, "answer")
    if value is None:
        value = text
    letter = value.strip().strip("()[]*.\"' ").upper()
    return letter if letter in letters else None
