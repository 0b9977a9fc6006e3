"""Prompt protocols as data: the published ``paper`` protocol and the project's ``strict`` one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args

from perg.config import default_data_dir
from perg.dataset import LETTERS, Item

Setting = Literal["relevant", "mixed", "irrelevant"]
SETTINGS: tuple[Setting, ...] = get_args(Setting)
Method = Literal["zero_shot", "cot", "icl", "self_critic", "pref_aligner"]
METHODS: tuple[Method, ...] = get_args(Method)
RoleLayout = Literal["system", "merged"]
# the kinds of prompt a run sends, each with its own generation limit (Protocol.max_tokens).
PromptKind = Literal["answer", "critic", "aligner", "judge", "extraction"]

PROTOCOL_FILE = "paper_protocol.json"
MERGE_SEPARATOR = "\n\n\n"
STRICT_PARSE_RETRIES = 2
# strict re-asks sample at this temperature (seed + attempt), so a retry can differ.
STRICT_RETRY_TEMPERATURE = 0.7
# strict caps the judge and the LLM extractor; paper sent no cap (gpt-4o-mini over the API).
STRICT_JUDGE_MAX_TOKENS = 256
STRICT_EXTRACTION_MAX_TOKENS = 32
LORA_EXTRACTION_MAX_TOKENS = 1  # the published LoRA extractor generated one token

ALIGNER_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"response": {"type": "string"}, "thoughts": {"type": "string"}},
    "required": ["response", "thoughts"],
    "additionalProperties": False,
}
CRITIC_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"critic": {"type": "string"}, "response": {"type": "string"}},
    "required": ["critic", "response"],
    "additionalProperties": False,
}

# Keys every protocol file must define, as dotted paths.
_REQUIRED_KEYS = (
    "user_prompt.header",
    "user_prompt.option_line",
    "system_prompt.base",
    "system_prompt.single_preference",
    "system_prompt.preference_set",
    "system_prompt.icl_intro",
    "system_prompt.cot_single",
    "system_prompt.cot_set",
    "self_critic.system",
    "self_critic.user",
    "aligner.user",
    "judge.system",
    "judge.followed_threshold",
    "extractor.lora_prompt",
    "extractor.references_header",
    "extractor.references_option_line",
    "extractor.llm_system",
    "extractor.llm_user",
    "preferences.irrelevant",
    "preferences.mixed_insert_index",
    "icl_examples",
    "decoding.max_new_tokens.answer",
    "decoding.max_new_tokens.self_critic_second_pass",
    "decoding.max_new_tokens.aligner",
)


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class Protocol:
    """A loaded protocol: renders every prompt of the benchmark for one item."""

    name: str
    sha256: str
    strict: bool
    parse_retries: int
    spec: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def structured_output(self) -> bool:
        """Whether JSON-schema constrained output is requested where a backend supports it."""
        return self.strict

    @property
    def judge_threshold(self) -> int:
        """Minimum Likert rating that counts as followed."""
        return int(self.spec["judge"]["followed_threshold"])

    def user_prompt(self, item: Item) -> str:
        """The question and its lettered options."""
        spec = self.spec["user_prompt"]
        lines = (
            spec["option_line"].format(letter=letter, text=text)
            for letter, text in zip(LETTERS, item.options, strict=False)
        )
        return str(spec["header"].format(question=item.question) + "".join(lines))

    def preference_payload(self, item: Item, setting: Setting) -> str:
        """What the setting shows as the preference."""
        irrelevant = list(self.spec["preferences"]["irrelevant"])
        if setting == "relevant":
            return item.preference
        if setting == "mixed":
            irrelevant.insert(int(self.spec["preferences"]["mixed_insert_index"]), item.preference)
        return str(irrelevant)

    def system_prompt(self, item: Item, setting: Setting | None, method: Method) -> str:
        """The answering system prompt; ``setting=None`` is the no-preference baseline."""
        spec = self.spec["system_prompt"]
        text: str = spec["base"]
        if setting is None:
            return text
        payload = self.preference_payload(item, setting)
        if setting == "mixed":
            text += spec["preference_set"].format(preferences=payload)
        else:
            text += spec["single_preference"].format(preference=payload)
        if method == "icl":
            text += spec["icl_intro"] + "\n\n".join(self.spec["icl_examples"][item.source]).strip()
        if method == "cot":
            text += spec["cot_set"] if setting == "mixed" else spec["cot_single"]
        return text

    def baseline_messages(self, item: Item, layout: RoleLayout = "system") -> list[ChatMessage]:
        """The no-preference baseline call (also Pref-Aligner stage 1)."""
        return chat_messages(self.spec["system_prompt"]["base"], self.user_prompt(item), layout)

    def answer_messages(
        self, item: Item, setting: Setting, method: Method, layout: RoleLayout = "system"
    ) -> list[ChatMessage]:
        """First call of a method (self-critic: the zero-shot pass; aligner: the baseline)."""
        if method == "pref_aligner":
            return self.baseline_messages(item, layout)
        system = self.system_prompt(item, setting, method)
        return chat_messages(system, self.user_prompt(item), layout)

    def critic_messages(
        self, item: Item, setting: Setting, first_response: str, layout: RoleLayout = "system"
    ) -> list[ChatMessage]:
        """Self-critic second pass (paper: always the relevant preference; strict: the setting's
        preferences)."""
        preference = self.preference_payload(item, setting) if self.strict else item.preference
        user = self.spec["self_critic"]["user"].format(
            preference=preference,
            question=self.user_prompt(item),
            response=first_response,
        )
        return chat_messages(self.spec["self_critic"]["system"], user, layout)

    def aligner_messages(
        self, item: Item, setting: Setting, baseline_response: str
    ) -> list[ChatMessage]:
        """Pref-Aligner stage 2 (paper: always the relevant preference; strict: the setting's)."""
        preference = self.preference_payload(item, setting) if self.strict else item.preference
        user = self.spec["aligner"]["user"].format(
            question=self.user_prompt(item), response=baseline_response, preference=preference
        )
        return [{"role": "user", "content": user}]

    def judge_messages(
        self, item: Item, nopref_response: str, pref_response: str
    ) -> list[ChatMessage]:
        """The preference-following judge: one system message."""
        system = self.spec["judge"]["system"].format(
            user_prompt=self.user_prompt(item),
            preference=item.preference,
            response_without_preference=nopref_response,
            response_with_preference=pref_response,
        )
        return [{"role": "system", "content": system}]

    def extractor_references(self, item: Item) -> str:
        """The options as the published extractors saw them (sic: a period after every option)."""
        spec = self.spec["extractor"]
        lines = (
            spec["references_option_line"].format(letter=letter, option=option)
            for letter, option in zip(LETTERS, item.options, strict=False)
        )
        return str(spec["references_header"] + "".join(lines))

    def extractor_prompt(self, item: Item, response: str) -> str:
        """The published 1-token (LoRA) extractor's raw completion prompt."""
        return str(
            self.spec["extractor"]["lora_prompt"].format(
                response=response, references=self.extractor_references(item)
            )
        )

    def extractor_llm_messages(
        self, item: Item, response: str, layout: RoleLayout = "system"
    ) -> list[ChatMessage]:
        """The published LLM extractor's call (gpt-4o-mini in the paper): system + user."""
        spec = self.spec["extractor"]
        user = spec["llm_user"].format(response=response, reference=self.extractor_references(item))
        return chat_messages(spec["llm_system"], user, layout)

    def max_tokens(self, kind: PromptKind) -> int | None:
        """Generation limit of a kind of prompt, None for no limit: the answering model's prompts
        have the protocol's limits (a decoding profile may lift them); paper's judge and LLM
        extractor ran uncapped, strict caps them."""
        limits = self.spec["decoding"]["max_new_tokens"]
        by_kind: dict[PromptKind, int | None] = {
            "answer": limits["answer"],
            "critic": limits["self_critic_second_pass"],
            "aligner": limits["aligner"],
            "judge": STRICT_JUDGE_MAX_TOKENS if self.strict else None,
            "extraction": STRICT_EXTRACTION_MAX_TOKENS if self.strict else None,
        }
        limit = by_kind[kind]
        return None if limit is None else int(limit)

    def read_rewrite(self, text: str, schema: Mapping[str, object]) -> str | None:
        """The revised ``response`` of a self-critic / aligner JSON reply, None if unreadable.

        paper: the published reader (:func:`parse_json_response_paper`); strict: the first JSON
        object anywhere with a non-blank ``response`` (:func:`parse_json_response`)."""
        if self.strict:
            return parse_json_response(text, "response")
        required = schema.get("required")
        keys = tuple(str(k) for k in required) if isinstance(required, list) else ("response",)
        return parse_json_response_paper(text, keys)

    def decoding_profile(self, name: str) -> DecodingProfile:
        """A decoding profile by name (see :data:`DECODING_PROFILES`)."""
        if name not in DECODING_PROFILES:
            raise ValueError(
                f"unknown decoding profile {name!r}; choose from {', '.join(DECODING_PROFILES)}"
            )
        profile = DECODING_PROFILES[name]
        if name == "api":  # temperature and seed as the protocol file records them
            api = self.spec["decoding"].get("api_models", {})
            profile = dataclasses.replace(
                profile,
                temperature=float(api.get("temperature", profile.temperature)),
                seed=api.get("seed", profile.seed),
            )
        return profile

    def default_decoding_profile(self, model: str) -> DecodingProfile:
        """strict: its own profile; paper: the profile of the model's family (see
        :func:`model_family_profile`)."""
        return self.decoding_profile("strict" if self.strict else model_family_profile(model))


@dataclass(frozen=True)
class DecodingProfile:
    """How the model under test is decoded. ``capped``: send the protocol's per-stage
    ``max_new_tokens`` (else no limit); ``temperature`` 0 is greedy; ``top_p`` None leaves the
    server's; ``seed`` None sends none. ``retry_temperature``: strict's parse re-asks."""

    name: str
    capped: bool
    temperature: float
    top_p: float | None
    seed: int | None
    retry_temperature: float | None
    description: str


DECODING_PROFILES: dict[str, DecodingProfile] = {
    profile.name: profile
    for profile in (
        DecodingProfile(
            "api", False, 0.0, None, 42, None,
            "paper, API models (OpenAI, Together): no max-token limit, temperature 0, seed 42",
        ),
        DecodingProfile(
            "hf", True, 0.0, None, None, None,
            "paper, local Hugging Face models: greedy (their generation configs do not sample), "
            "max_new_tokens 500 answer / 1024 self-critic pass 2 / 1000 aligner",
        ),
        DecodingProfile(
            "hf-sampled", True, 0.6, 0.9, None, None,
            "paper, Llama-3.1-8B-Instruct: sampled with its generation_config defaults "
            "(temperature 0.6, top_p 0.9), the same max_new_tokens as hf",
        ),
        DecodingProfile(
            "strict", True, 0.0, None, 42, STRICT_RETRY_TEMPERATURE,
            "strict: the hf limits, temperature 0, seed 42; an unparseable JSON rewrite or "
            f"judge reply is asked again up to {STRICT_PARSE_RETRIES} times at temperature "
            f"{STRICT_RETRY_TEMPERATURE} with seed 42 + attempt",
        ),
    )
}  # fmt: skip

# Model names the published runs called over an API (evaluations/aligner.py `client_models`).
_API_MODEL = re.compile(
    r"(^|/)(gpt-|o[134]-|o[134]$|claude|gemini)|-turbo|deepseek-r1-distill-llama-70b", re.I
)
_LLAMA_31_8B = re.compile(r"llama-?3\.1-8b", re.IGNORECASE)


def model_family_profile(model: str) -> str:
    """The paper's decoding profile for a model name: ``api`` for the hosted models it called,
    ``hf-sampled`` for Llama-3.1-8B, ``hf`` for every other local model."""
    if _LLAMA_31_8B.search(model):
        return "hf-sampled"
    return "api" if _API_MODEL.search(model) else "hf"


def chat_messages(system: str, user: str, layout: RoleLayout = "system") -> list[ChatMessage]:
    """A system + user pair; ``merged`` puts the system text into the user turn."""
    if layout == "merged":
        return [{"role": "user", "content": system + MERGE_SEPARATOR + user}]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def render_raw_prompt(messages: list[ChatMessage]) -> str:
    """The ``inst`` layout of raw-prompt models: ``[INST] <SYS>\\n<USER> [/INST] ``."""
    system = "".join(m["content"] + "\n" for m in messages if m["role"] == "system")
    user = "".join(m["content"] for m in messages if m["role"] == "user")
    return f"[INST] {system}{user} [/INST] "


def load_protocol(name_or_path: str | Path = "paper", data_dir: Path | None = None) -> Protocol:
    """``"paper"`` or ``"strict"`` (both from ``paper_protocol.json`` in the data dir), or a path
    to a file of the same shape (loaded with the paper rules)."""
    if name_or_path in ("paper", "strict"):
        name = str(name_or_path)
        path = (data_dir if data_dir is not None else default_data_dir()) / PROTOCOL_FILE
    else:
        path = Path(name_or_path)
        name = path.stem
    try:
        raw = path.read_bytes()
        spec = json.loads(raw)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read protocol: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid JSON protocol file: {exc}") from exc
    _check_shape(spec, path)
    strict = name == "strict"
    return Protocol(
        name=name,
        sha256=hashlib.sha256(raw + b"\0" + name.encode()).hexdigest(),
        strict=strict,
        parse_retries=STRICT_PARSE_RETRIES if strict else 0,
        spec=spec,
    )


def _check_shape(spec: object, path: Path) -> None:
    for dotted in _REQUIRED_KEYS:
        node = spec
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                raise ValueError(f"{path}: protocol lacks key {dotted!r}")
            node = node[key]


def iter_json_objects(text: str) -> Iterator[dict[str, Any]]:
    """Every JSON object embedded in ``text`` (code fences and surrounding prose ignored)."""
    decoder = json.JSONDecoder(strict=False)
    start = text.find("{")
    while start >= 0:
        try:
            obj, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        except RecursionError:  # nested past Python's limit: no object can be read from here
            return
        if isinstance(obj, dict):
            yield obj
        start = text.find("{", end)


def parse_json_response(text: str, field: str = "response") -> str | None:
    """The first non-blank string ``field`` of a JSON object in ``text``, else None."""
    for obj in iter_json_objects(text):
        value = obj.get(field)
        if isinstance(value, str) and value.strip():
            return value
    return None


# A JSON string body, possessive (linear time on any reply; a lazy ``.*?`` is cubic).
_STRING = r'"((?:[^"\\]|\\.)*+)"'
_BOTH_KEYS = r'\{{\s*"{a}"\s*:\s*{value}\s*,\s*"{b}"\s*:\s*{value}\s*\}}'


def parse_json_response_paper(text: str, keys: tuple[str, ...]) -> str | None:
    """The published reader of a JSON rewrite: ``json.loads`` of the whole reply and its
    ``response`` (kept as is, even empty); failing that, a regex needing both keys of ``keys``
    as string fields (either order; the raw string body, escapes not decoded); else None (the
    caller keeps the earlier text, as published)."""
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        whole = None
    if isinstance(whole, dict) and "response" in whole:
        value = whole["response"]
        return value if isinstance(value, str) else str(value)
    if len(keys) != 2 or "response" not in keys:
        return None
    a, b = keys
    for first, second in ((a, b), (b, a)):
        pattern = _BOTH_KEYS.format(a=re.escape(first), b=re.escape(second), value=_STRING)
        match = re.search(pattern, text, re.DOTALL)
        if match:
            return match.group(1 if first == "response" else 2)
    return None
