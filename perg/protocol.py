"""Prompt protocols as data: the published ``paper`` protocol and the project's ``strict`` one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypedDict, assert_never

from perg.config import default_data_dir
from schemas import Decoding, StageTokens
from schemas.values import LETTERS, Item
from schemas.values import METHODS as METHODS
from schemas.values import ROLE_LAYOUTS as ROLE_LAYOUTS
from schemas.values import SETTINGS as SETTINGS
from schemas.values import Method as Method
from schemas.values import RoleLayout as RoleLayout
from schemas.values import Setting as Setting


class CallKind(StrEnum):
    """The kinds of model call (and prompt) a run makes; perg.generation maps each to how it
    is decoded, :meth:`Protocol.max_tokens` to its limit."""

    ANSWER = "answer"
    """The model under test answers a row (the baseline, a method's answer, self-critic's
    first pass)."""
    CRITIQUE = "critique"
    """Self-critic's second pass: critique and rewrite the answer (JSON)."""
    ALIGN = "align"
    """Pref-Aligner stage 2: rewrite the baseline for the preference (JSON)."""
    JUDGE = "judge"
    """The judge rates how well a response follows the preference."""
    EXTRACT = "extract"
    """The LLM extractor reads the chosen option from a response."""


PROTOCOL_FILE = "paper_protocol.json"
MERGE_SEPARATOR = "\n\n\n"
STRICT_PARSE_RETRIES = 2
# strict re-asks sample at this temperature (seed + attempt), so a retry can differ.
STRICT_RETRY_TEMPERATURE = 0.7
# strict caps the judge and the LLM extractor; paper sent no cap (gpt-4o-mini over the API).
STRICT_JUDGE_MAX_TOKENS = 256
STRICT_EXTRACTION_MAX_TOKENS = 32
LORA_EXTRACTION_MAX_TOKENS = 1  # the published LoRA extractor generated one token
# the published judge and LLM extractor (gpt-4o-mini): temperature 0, seed 42, every run
JUDGE_SEED = 42
INST_CLOSE = "[/INST]"
THINK_CLOSE = "</think>"

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
        """Self-critic second pass (paper: always the relevant preference, and always system +
        user, as published (runs.py:60-61,106-107); strict: the setting's preferences, in the
        run's layout)."""
        preference = self.preference_payload(item, setting) if self.strict else item.preference
        user = self.spec["self_critic"]["user"].format(
            preference=preference,
            question=self.user_prompt(item),
            response=first_response,
        )
        if not self.strict and layout == "merged":
            layout = "system"
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

    def max_tokens(self, kind: CallKind) -> int | None:
        """Generation limit of a kind of call, None for no limit: the answering model's prompts
        have the protocol's limits (a decoding profile may lift them); paper's judge and LLM
        extractor ran uncapped, strict caps them."""
        limits = self.spec["decoding"]["max_new_tokens"]
        match kind:
            case CallKind.ANSWER:
                return int(limits["answer"])
            case CallKind.CRITIQUE:
                return int(limits["self_critic_second_pass"])
            case CallKind.ALIGN:
                return int(limits["aligner"])
            case CallKind.JUDGE:
                return STRICT_JUDGE_MAX_TOKENS if self.strict else None
            case CallKind.EXTRACT:
                return STRICT_EXTRACTION_MAX_TOKENS if self.strict else None
            case _:
                assert_never(kind)

    def read_rewrite(self, text: str) -> RewriteReading:
        """The revised ``response`` of a self-critic / aligner JSON reply (None if unreadable)
        and how it was read.

        paper: the published reader (:func:`read_rewrite_paper`); strict: the first JSON
        object anywhere with a non-blank ``response`` (:func:`parse_json_response`)."""
        if self.strict:
            value = parse_json_response(text, "response")
            return RewriteReading(value, "json" if value is not None else "unreadable")
        return read_rewrite_paper(text)

    def raw_prompt(self, messages: list[ChatMessage], kind: CallKind) -> str:
        """The ``inst`` layout's completion prompt (:func:`render_raw_prompt`). paper's
        Pref-Aligner stage 2 is the published Janus call, which passed the message list as the
        template's only argument (:func:`render_published_aligner_prompt`); strict fixes it."""
        if kind is CallKind.ALIGN and not self.strict:
            return render_published_aligner_prompt(messages)
        return render_raw_prompt(messages)

    def raw_reply(self, prompt: str, completion: str) -> str:
        """The reply of an ``inst`` call. paper: as published (``extract_after_inst``), the
        text after the first ``[/INST]`` of prompt + completion, stripped (a ``[/INST]`` in the
        prompt's content cuts there); strict: the completion, stripped."""
        if self.strict:
            return completion.strip()
        return (prompt + completion).split(INST_CLOSE, 1)[1].strip()

    def decoding_profile(self, name: str) -> Decoding:
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

    def default_decoding_profile(self, model: str) -> Decoding:
        """strict: its own profile; paper: the profile of the model's family (see
        :func:`model_family_profile`)."""
        return self.decoding_profile("strict" if self.strict else model_family_profile(model))

    def default_layout(self, model: str) -> RoleLayout:
        """The message layout of the model's family (:func:`model_family_layout`); strict
        gives Qwen3 its system role (its chat template has one; the published runs merged)."""
        layout = model_family_layout(model)
        if self.strict and _QWEN3.search(model):
            return "system"
        return layout


@dataclass(frozen=True, slots=True)
class RewriteReading:
    """What a rewrite reader made of a reply: the ``response`` (None: unreadable, the caller
    keeps the earlier text or records a failure) and ``how``: ``json`` (the whole reply, or
    strict's first object), ``json_missing`` (paper: a JSON object without ``response``, read
    as the empty string as published), ``regex`` (paper's fallback on a JSON decode error),
    ``not_object`` (paper: JSON that is no object, a list say, where the published ``.get``
    raised; the earlier text is kept), ``unreadable``."""

    response: str | None
    how: Literal["json", "json_missing", "regex", "not_object", "unreadable"]


# The named decodings of the model under test (``perg submit --decoding``): the run records
# the chosen one (with --max-tokens and --thinking) as its Decoding; perg.generation turns it
# into each call's configuration. ``uncapped``: no max-token limit (else the protocol's, or the
# profile's own per-stage ones); temperature 0 is greedy; top_p None leaves the server's; seed
# None sends none; retry_temperature: strict's parse re-asks.
DECODING_PROFILES: dict[str, Decoding] = {
    "api": Decoding(profile="api", uncapped=True, temperature=0.0, seed=42),
    "hf": Decoding(profile="hf", temperature=0.0, seed=None),
    "hf-sampled": Decoding(profile="hf-sampled", temperature=0.6, top_p=0.9, seed=None),
    "janus": Decoding(
        profile="janus",
        temperature=0.0,
        seed=None,
        stage_tokens=StageTokens(answer=1024, critic=2048, aligner=1024),
    ),
    "qwen3": Decoding(
        profile="qwen3",
        temperature=0.0,
        seed=None,
        stage_tokens=StageTokens(answer=1024, critic=1024, aligner=1024),
    ),
    "strict": Decoding(
        profile="strict", temperature=0.0, seed=42, retry_temperature=STRICT_RETRY_TEMPERATURE
    ),
}
PROFILE_DESCRIPTIONS: dict[str, str] = {
    "api": "paper, API models (OpenAI, Together): no max-token limit, temperature 0, seed 42",
    "hf": "paper, local Hugging Face models: greedy (their generation configs do not sample), "
    "max_new_tokens 500 answer / 1024 self-critic pass 2 / 1000 aligner",
    "hf-sampled": "paper, Llama-3.1-8B-Instruct: sampled with its generation_config defaults "
    "(temperature 0.6, top_p 0.9), the same max_new_tokens as hf",
    "janus": "paper, Janus-7B: greedy, raw [INST] prompt, max_new_tokens 1024 answer / 2048 "
    "self-critic pass 2 / 1024 aligner",
    "qwen3": "paper, Qwen3: greedy, max_new_tokens 1024 for every stage (thinking and answer "
    "share them), thinking switched off unless --thinking on",
    "strict": "strict: the hf limits, temperature 0, seed 42; an unparseable JSON rewrite or "
    f"judge reply is asked again up to {STRICT_PARSE_RETRIES} times at temperature "
    f"{STRICT_RETRY_TEMPERATURE} with seed 42 + attempt",
}

# Model names the published runs called over an API (evaluations/aligner.py `client_models`).
# gemma-2-27b-it too (evaluations/mcq_task_1.py client_models).
_API_MODEL = re.compile(
    r"(^|/)(gpt-|o[134]-|o[134]$|claude|gemini)|-turbo|deepseek-r1-distill-llama-70b"
    r"|gemma-2-27b-it",
    re.I,
)
_LLAMA_31_8B = re.compile(r"llama-?3\.1-8b", re.IGNORECASE)
_JANUS = re.compile(r"janus", re.IGNORECASE)
_QWEN3 = re.compile(r"qwen3", re.IGNORECASE)
# mcq_task_1.py:124-125: "gemma" or "DeepSeek-R1-Distill-Llama-70B-free" in the name
_NO_SYSTEM_ROLE = re.compile(r"gemma|deepseek-r1", re.IGNORECASE)


def model_family_profile(model: str) -> str:
    """The paper's decoding profile for a model name: ``janus`` and ``qwen3`` for those
    families, ``api`` for the hosted models it called, ``hf-sampled`` for Llama-3.1-8B, ``hf``
    for every other local model."""
    if _JANUS.search(model):
        return "janus"
    if _QWEN3.search(model):
        return "qwen3"
    if _LLAMA_31_8B.search(model):
        return "hf-sampled"
    return "api" if _API_MODEL.search(model) else "hf"


def model_family_layout(model: str) -> RoleLayout:
    """The published message layout of a model's family: ``inst`` for Janus (a raw
    ``[INST]`` prompt), ``merged`` for gemma*, DeepSeek-R1 (mcq_task_1.py:124-125) and every
    Qwen3 call (runs.py:187), ``system`` for the rest."""
    if _JANUS.search(model):
        return "inst"
    return "merged" if _NO_SYSTEM_ROLE.search(model) or _QWEN3.search(model) else "system"


def has_thinking_switch(model: str) -> bool:
    """Whether the model's chat template has a thinking switch (Qwen3's ``enable_thinking``)."""
    return bool(_QWEN3.search(model))


def split_thinking(text: str) -> tuple[str, str | None]:
    """A thinking model's output as (answer, thinking), as the published Qwen3 runs read it
    (runs.py:204-237): the answer is the text after the last ``</think>``, the thinking the
    text up to and with it, both stripped of newlines; no ``</think>``: the whole output is the
    answer, no thinking."""
    head, close, answer = text.rpartition(THINK_CLOSE)
    if not close:
        return text.strip("\n"), None
    return answer.strip("\n"), (head + close).strip("\n")


def chat_messages(system: str, user: str, layout: RoleLayout = "system") -> list[ChatMessage]:
    """A system + user pair; ``merged`` puts the system text into the user turn."""
    if layout == "merged":
        return [{"role": "user", "content": system + MERGE_SEPARATOR + user}]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def render_raw_prompt(messages: list[ChatMessage]) -> str:
    """The ``inst`` layout of raw-prompt models, the authors' ``apply_template_mistral_instruct
    (system, content)`` (janus_utils.py): ``"[INST] " + f"{system}\\n{content}".strip() +
    " [/INST] "``, just the content (stripped) when there is no system text."""
    system = "".join(m["content"] for m in messages if m["role"] == "system")
    user = "".join(m["content"] for m in messages if m["role"] == "user")
    body = f"{system}\n{user}" if system else user
    return f"[INST] {body.strip()} [/INST] "


def render_published_aligner_prompt(messages: list[ChatMessage]) -> str:
    """The published Janus Pref-Aligner prompt: ``apply_template_mistral_instruct`` called
    with the message list as its only argument (aligner.py:129-130), so the list's Python
    ``str`` took the system's place and ``None`` the content's:
    ``[INST] [{'role': 'user', 'content': ...}]\\nNone [/INST] ``."""
    listed = str([{"role": m["role"], "content": m["content"]} for m in messages])
    body = f"{listed}\n{None}"
    return f"[INST] {body.strip()} [/INST] "


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


# The published fallback regexes (mcq_extractor_utils.py): r'"?KEY"?\s*:\s*["“](.*?)["”]\s*}?',
# case-insensitive, one per key, independent. Read in linear time by _first_value.
_CLOSER = re.compile('["\u201d\\n]')


def _key_prefix(key: str) -> re.Pattern[str]:
    return re.compile(r'"?' + re.escape(key) + r'"?\s*:\s*["\u201c]', re.IGNORECASE)


_RESPONSE_PREFIX = _key_prefix("response")


def _first_value(prefix: re.Pattern[str], text: str) -> str | None:
    """What ``re.search(prefix + r'(.*?)["”]', text, re.I)`` captures (``.`` stops at a
    newline), in linear time: once a candidate's value meets the end of its line, every later
    candidate whose value starts on that line fails too, and is skipped unscanned."""
    position, dead_until = 0, -1
    while (found := prefix.search(text, position)) is not None:
        position = found.start() + 1
        if found.end() <= dead_until:
            continue
        closer = _CLOSER.search(text, found.end())
        if closer is None:
            return None
        if closer.group() != "\n":
            return text[found.end() : closer.start()]
        dead_until = closer.start()
    return None


def read_rewrite_paper(text: str) -> RewriteReading:
    """The published reader of a JSON rewrite (``extract_critic_and_response`` /
    ``extract_thoughts_and_response``, mcq_extractor_utils.py:295-347): ``json.loads`` of the
    whole reply and ``str(parsed.get('response', '')).strip()`` (a missing key: the empty
    string, used); only on a JSON decode error, the case-insensitive regex of the ``response``
    key (quotes optional, other keys allowed, the value ends at the first ``"`` or ``”``),
    stripped; no match: unreadable (the caller keeps the earlier text, as published). JSON
    that is no object (a list, a number...) made the published ``.get`` raise: we keep the
    earlier text and say so (``not_object``)."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        value = _first_value(_RESPONSE_PREFIX, text)
        if value is None:
            return RewriteReading(None, "unreadable")
        return RewriteReading(value.strip(), "regex")
    except RecursionError:  # nested past Python's limit: the published call raised too
        return RewriteReading(None, "not_object")
    if not isinstance(parsed, dict):
        return RewriteReading(None, "not_object")
    if "response" not in parsed:
        return RewriteReading("", "json_missing")
    return RewriteReading(str(parsed["response"]).strip(), "json")
