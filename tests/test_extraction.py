"""Answer extraction: deterministic parser, constrained LLM fallback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perg.extraction import choice_schema, extract_choice, parse_llm_choice

OPTIONS = ("Vatican City", "Nauru", "Monaco", "the United States")
NESTED = ("Spike", "Stripe", "Stripe the Gremlin")


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # a bare letter
        ("B", "B"),
        (" (C) ", "C"),
        ("**D.**", "D"),
        # explicit statements
        ("The answer is B.", "B"),
        ("The correct answer is B. Nauru is the smallest.", "B"),
        ("**Answer:** (D)", "D"),
        ("Answer: C", "C"),
        ("Final answer - A", "A"),
        ("The best answer would be option C", "C"),
        ("The correct choice is: **B**", "B"),
        ("I choose answer D.", "D"),
        ("C is correct.", "C"),
        ("(B) is the right one, since Nauru is larger than Monaco? No: (B) is the best.", "B"),
        ('Option A, "Vatican City," is the correct answer.', "A"),
        ("B. Nauru is the smallest\ncountry.\n\nA and C are smaller.", "B"),
        ("Let me think. The answer is B. Option A is wrong; so the answer is B.", "B"),
        # mentions, when nothing stronger is said
        ("Consider option C here.", "C"),
        ("I lean towards (A).", "A"),
        ("**C**", "C"),
        # an unambiguous quote of one option's text
        ("I think Nauru is the one.", "B"),
        ("It is the united   states.", "D"),
        ("Stripe the Gremlin, of course.", "C"),
        # ambiguous or empty
        ("", None),
        ("   \n", None),
        ("Option A or option B, hard to say.", None),
        ("A. Vatican City\nB. Nauru\nC. Monaco", None),
        ("It is Monaco or Nauru.", None),
        ("the answer is a democracy", None),
        ("I don't know.", None),
        ("The answer is B, no wait, the answer is C.", None),
        # letters that are not options are never accepted
        ("E", None),
        ("The answer is E.", None),
        ("Answer: (F). Nauru.", None),
        ("Option E is correct. Nauru.", None),
    ],
)
def test_tricky_answers(response: str, expected: str | None) -> None:
    options = NESTED if "Gremlin" in response else OPTIONS
    assert extract_choice(response, options) == expected


def test_quote_inside_a_longer_option_does_not_count() -> None:
    assert extract_choice("Stripe", NESTED) == "B"
    assert extract_choice("It was Stripe.", NESTED) == "B"
    assert extract_choice("It was Spike, or Stripe.", NESTED) is None


def test_duplicate_option_texts_are_ambiguous() -> None:
    assert extract_choice("It is yes.", ("yes", "no", "yes")) is None


@given(st.text(max_size=200), st.integers(min_value=2, max_value=6))
def test_never_a_letter_outside_the_options(response: str, n: int) -> None:
    options = [f"option text {i}" for i in range(n)]
    letter = extract_choice(response, options)
    assert letter is None or letter in "ABCDEF"[:n]


def test_choice_schema() -> None:
    assert choice_schema(["A", "B"]) == {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["A", "B"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"answer": "B"}', "B"),
        ('```json\n{"answer": "(c)"}\n```', "C"),
        ("D", "D"),
        (' "A" ', "A"),
        ('{"answer": "E"}', None),
        ('{"answer": "AB"}', None),
        ('{"answer": 2}', None),
        ("The answer is B", None),
        ("", None),
    ],
)
def test_parse_llm_choice(text: str, expected: str | None) -> None:
    assert parse_llm_choice(text, ("A", "B", "C", "D")) == expected
