"""Answer extraction: the rules parser, the paper's LLM and LoRA extractors."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perg.config import default_data_dir
from perg.dataset import Item
from perg.errors import InputError
from perg.extraction import (
    Extraction,
    Extractor,
    choice_schema,
    choose_extractor,
    extract_answer,
    extract_choice,
    lora_letter,
    parse_llm_choice,
    parse_llm_choice_paper,
)
from perg.protocol import ChatMessage, Protocol, load_protocol

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


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("{'answer': 'B'}", "B"),
        ('{"answer": "C"}', "C"),
        ("  {'answer': 'D'}\n", "D"),
        # kept as given: never equal to a gold letter, as in the published scoring
        ("{'answer': 'b'}", "b"),
        ("{'answer': 'B. Nauru'}", "B. Nauru"),
        # everything else is unresolved (-1 in the authors' code)
        ("```json\n{'answer': 'B'}\n```", None),
        ("Answer: {'answer': 'B'}", None),
        ("{'answer': 'B'} because Nauru", None),
        ("{'answer': 2}", None),
        ("{'choice': 'B'}", None),
        ("['B']", None),
        ("B", None),
        ("__import__('os').system('true')", None),
        ("", None),
    ],
)
def test_parse_llm_choice_paper(reply: str, expected: str | None) -> None:
    assert parse_llm_choice_paper(reply) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [(" B", "B"), ("C", "C"), (" Z", "Z"), (" b", None), ("", None), (" 1", None), ("\n", None)],
)
def test_lora_letter(completion: str, expected: str | None) -> None:
    assert lora_letter("x\n ### Answer:", completion) == expected


class ScriptedExtractors:
    """Test double of the extractor endpoints: canned replies, calls recorded."""

    def __init__(self, lora: str = "", llm: str = "") -> None:
        self.lora_reply, self.llm_reply = lora, llm
        self.prompts: list[str] = []
        self.chats: list[list[ChatMessage]] = []

    async def complete(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.lora_reply

    async def chat(self, messages: list[ChatMessage]) -> str:
        self.chats.append(messages)
        return self.llm_reply


@pytest.fixture(scope="module")
def paper() -> Protocol:
    if not (default_data_dir() / "paper_protocol.json").is_file():
        pytest.skip("shared PERG data not found")
    return load_protocol("paper")


ITEM = Item(0, "Smallest?", OPTIONS, "B", "Nauru", "", "truthfulqa/truthful_qa", "concise")


def run_extract(
    extractor: Extractor, paper: Protocol, response: str | None, double: ScriptedExtractors
) -> Extraction:
    return asyncio.run(
        extract_answer(extractor, paper, ITEM, response, chat=double.chat, complete=double.complete)
    )


def test_extract_answer_modes(paper: Protocol) -> None:
    double = ScriptedExtractors(lora=" C", llm="{'answer': 'D'}")
    # rules: no model call; the rules letter is always recorded
    expected = Extraction("B", "parsed", "B")
    assert run_extract("rules", paper, "The answer is B.", double) == expected
    assert run_extract("rules", paper, "no idea", double).path == "unresolved"
    assert double.prompts == [] and double.chats == []
    # llm: the paper's prompt, read with literal_eval
    expected = Extraction("D", "llm", "B")
    assert run_extract("llm", paper, "The answer is B.", double) == expected
    assert double.chats == [paper.extractor_llm_messages(ITEM, "The answer is B.")]
    assert double.prompts == []
    # lora: the 1-token prompt; a letter decides
    expected = Extraction("C", "lora", "B")
    assert run_extract("lora", paper, "The answer is B.", double) == expected
    assert double.prompts == [paper.extractor_prompt(ITEM, "The answer is B.")]


def test_lora_falls_back_to_the_llm_as_published(paper: Protocol) -> None:
    double = ScriptedExtractors(lora=" 1", llm="{'answer': 'A'}")
    assert run_extract("lora", paper, "Vatican City", double) == Extraction("A", "llm", "A")
    unreadable = ScriptedExtractors(lora=":", llm="The answer is A")
    expected = Extraction(None, "unresolved", "A")
    assert run_extract("lora", paper, "Vatican City", unreadable) == expected
    # a strict parse failure has no text: unresolved without a call
    silent = ScriptedExtractors()
    assert run_extract("llm", paper, None, silent).path == "unresolved"
    assert silent.chats == []


def test_choose_extractor() -> None:
    assert choose_extractor(None, extractor_endpoint=False, lora_endpoint=False) == "rules"
    assert choose_extractor(None, extractor_endpoint=True, lora_endpoint=False) == "llm"
    assert choose_extractor("rules", extractor_endpoint=True, lora_endpoint=False) == "rules"
    assert choose_extractor("llm", extractor_endpoint=False, lora_endpoint=False) == "llm"
    assert choose_extractor("lora", extractor_endpoint=False, lora_endpoint=True) == "lora"
    assert choose_extractor(None, extractor_endpoint=True, lora_endpoint=True) == "lora"
    with pytest.raises(InputError, match="--extractor lora needs --lora-url"):
        choose_extractor("lora", extractor_endpoint=True, lora_endpoint=False)


@pytest.mark.parametrize(
    "reply", ["[" * 100_000, "{'answer': " * 50_000, "(" * 10_000 + ")" * 10_000]
)
def test_paper_llm_reader_survives_hostile_replies(reply: str) -> None:
    assert parse_llm_choice_paper(reply) is None
