"""Map a free-text answer to one of an item's option letters, by the run's extractor.

Extractors (chosen per run, recorded per row):

- ``rules``: our deterministic parser (:func:`extract_choice`), no model; what it cannot
  decide is unresolved (counted wrong).
- ``llm``: the paper's LLM extractor prompt (``extractor.llm_system`` / ``llm_user``) on an
  OpenAI-compatible endpoint. paper reads the reply as published (``ast.literal_eval`` of the
  whole text, ``.get('answer')``, anything else unresolved); strict constrains the reply to the
  item's letters where the backend can and reads it leniently.
- ``lora``: the paper's 1-token completion prompt (``extractor.lora_prompt``) on an endpoint
  serving the LoRA extractor; when its last character is not an upper-case letter, the ``llm``
  extractor decides, as published.

An LLM extractor call the endpoint refuses (a 4xx, or a malformed reply) does not lose the
row: as published (mcq_extractor_utils.py:127-187), a content-filter 400 is recorded as
``refused`` (wrong, but an answer was given: the authors' None) and any other failure as
``error`` (wrong and no option found: the authors' -1). paper leaves the answer empty; strict
keeps the rules parser's letter (the refusal says nothing about the model's answer).

Whatever the extractor, the rules parser's letter is recorded too (``rules_answer``), so the
agreement of the two is measured on every run that uses a model extractor.
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from perg.errors import InputError
from perg.protocol import ChatMessage, Protocol, parse_json_response
from schemas.values import EXTRACTORS as EXTRACTORS
from schemas.values import LETTERS, Item
from schemas.values import ExtractionPath as ExtractionPath
from schemas.values import Extractor as Extractor


class ExtractorFailed(Exception):
    """The LLM extractor's call was refused (``content_filter``: a content-filter 400) or
    failed for good; raised by the ``chat`` callable of :func:`extract_answer`."""

    def __init__(self, message: str, *, content_filter: bool) -> None:
        super().__init__(message)
        self.content_filter = content_filter


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
    """strict reading of the LLM extractor's reply: the letter, when one of ``letters``."""
    value = parse_json_response(text, "answer")
    if value is None:
        value = text
    letter = value.strip().strip("()[]*.\"' ").upper()
    return letter if letter in letters else None


def parse_llm_choice_paper(text: str) -> str | None:
    """The published reading of the LLM extractor's reply: ``ast.literal_eval`` of the whole
    text, then ``.get('answer')``; anything else (prose, code fences, a non-dict) is
    unresolved. The value is kept as given (``'b'`` or ``'E'`` simply never equal the gold
    letter, as in the published scoring); a non-string value is unresolved."""
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    value = parsed.get("answer")
    return value if isinstance(value, str) else None


def lora_letter(prompt: str, completion: str) -> str | None:
    """The published LoRA extractor's letter: the last character of prompt + generated token,
    stripped, when it is an upper-case ASCII letter (it may name no option: counted wrong)."""
    decoded = (prompt + completion).strip()
    return decoded[-1] if decoded and decoded[-1] in string.ascii_uppercase else None


ChatCall = Callable[[list[ChatMessage]], Awaitable[str]]
CompletionCall = Callable[[str], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Extraction:
    answer: str | None
    path: ExtractionPath
    rules_answer: str | None  # the rules parser's letter, recorded whatever decided


async def extract_answer(
    extractor: Extractor,
    protocol: Protocol,
    item: Item,
    response: str | None,
    *,
    chat: ChatCall | None = None,
    complete: CompletionCall | None = None,
) -> Extraction:
    """Map ``response`` to a letter with the run's extractor.

    ``chat(messages)`` sends the LLM extractor's messages and returns the reply text (llm,
    lora fallback); ``complete(prompt)`` sends the LoRA extractor's 1-token completion (lora).
    ``response`` None (a strict parse failure) is unresolved without a call.
    """
    if response is None:
        return Extraction(None, "unresolved", None)
    rules = extract_choice(response, item.options)
    if extractor == "rules":
        return Extraction(rules, "parsed" if rules is not None else "unresolved", rules)
    if extractor == "lora":
        if complete is None:
            raise ValueError("the lora extractor needs an endpoint serving it")
        prompt = protocol.extractor_prompt(item, response)
        letter = lora_letter(prompt, await complete(prompt))
        if letter is not None:
            return Extraction(letter, "lora", rules)
    if chat is None:
        raise ValueError("the llm extractor needs an endpoint")
    try:
        reply = await chat(protocol.extractor_llm_messages(item, response))
    except ExtractorFailed as exc:
        path: ExtractionPath = "refused" if exc.content_filter else "error"
        return Extraction(rules if protocol.strict else None, path, rules)
    llm = (
        parse_llm_choice(reply, item.letters) if protocol.strict else parse_llm_choice_paper(reply)
    )
    return Extraction(llm, "llm" if llm is not None else "unresolved", rules)


def choose_extractor(
    requested: Extractor | None, *, extractor_endpoint: bool, lora_endpoint: bool
) -> Extractor:
    """The run's extractor: as requested; else the paper's way when an endpoint for it is
    given (``lora`` with a LoRA endpoint, else ``llm`` with an extractor endpoint); else
    ``rules``. ``lora`` needs a LoRA endpoint (:class:`~perg.errors.InputError`)."""
    if requested == "lora" and not lora_endpoint:
        raise InputError("--extractor lora needs --lora-url and --lora-model")
    if requested is not None:
        return requested
    if lora_endpoint:
        return "lora"
    return "llm" if extractor_endpoint else "rules"
