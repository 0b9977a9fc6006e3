"""What travels inside the records: the vocabulary of a run (settings, methods, layouts,
extractors), a dataset row and a model endpoint reference. The core (perg) takes these from
here; the contracts import nothing from it."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Literal, get_args

Setting = Literal["relevant", "mixed", "irrelevant"]
SETTINGS: tuple[Setting, ...] = get_args(Setting)
Method = Literal["zero_shot", "cot", "icl", "self_critic", "pref_aligner"]
METHODS: tuple[Method, ...] = get_args(Method)
# system: a system message; merged: the system text in the user turn; inst: one raw
# ``[INST] ... [/INST] `` completion prompt (Janus).
RoleLayout = Literal["system", "merged", "inst"]
ROLE_LAYOUTS: tuple[RoleLayout, ...] = get_args(RoleLayout)
Extractor = Literal["rules", "llm", "lora"]
EXTRACTORS: tuple[Extractor, ...] = get_args(Extractor)
# Which tier decided a row: the rules parser, the LoRA extractor, the LLM extractor, or none;
# refused / error: the LLM extractor's endpoint refused the call (content filter) or failed.
ExtractionPath = Literal["parsed", "lora", "llm", "unresolved", "refused", "error"]
Backend = Literal["tgi", "openai", "llamacpp", "vllm"]
LETTERS = string.ascii_uppercase


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A reference to one OpenAI-compatible model server, as a run names it: where it is,
    which model, which server kind, and the *name* of the environment variable holding its
    bearer token (secrets never travel). How a worker's client calls it (concurrency,
    deadlines, retries) is the worker's own configuration (perg.client.ClientTuning)."""

    base_url: str
    """The server's OpenAI-compatible root, e.g. ``http://127.0.0.1:8080/v1``."""
    model: str
    """The model name sent in every request (``"model"``)."""
    backend: Backend = "openai"
    """The server kind: decides the form of structured output (``response_format``)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the bearer token; None sends no token."""


@dataclass(frozen=True, slots=True)
class Item:
    """One PERGData row; ``row_id`` is its 0-based position in the file."""

    row_id: int
    question: str
    options: tuple[str, ...]
    gold_option: str
    gold_answer: str
    category: str
    source: str
    preference: str

    @property
    def letters(self) -> tuple[str, ...]:
        """The option letters, ``("A", "B", ...)``."""
        return tuple(LETTERS[: len(self.options)])
