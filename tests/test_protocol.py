"""Protocol rendering: byte-exact against the authors' renderings, and the strict rules."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.live.runs import item as fixture_item

from perg.config import default_data_dir
from perg.dataset import Item, load_dataset
from perg.generation import generation_config
from perg.protocol import (
    ALIGNER_SCHEMA,
    CRITIC_SCHEMA,
    DECODING_PROFILES,
    MERGE_SEPARATOR,
    METHODS,
    PROFILE_DESCRIPTIONS,
    SETTINGS,
    STRICT_RETRY_TEMPERATURE,
    CallKind,
    ChatMessage,
    Protocol,
    chat_messages,
    load_protocol,
    model_family_layout,
    model_family_profile,
    parse_json_response,
    read_rewrite_paper,
    render_published_aligner_prompt,
    render_raw_prompt,
    split_thinking,
)
from schemas import RunSpec, StageTokens

DATA = default_data_dir()
GOLDEN_PATH = DATA / "golden_rendered.json"
ITEM = fixture_item(0)
pytestmark = pytest.mark.skipif(not GOLDEN_PATH.is_file(), reason="shared PERG data not found")


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def paper() -> Protocol:
    return load_protocol("paper")


@pytest.fixture(scope="module")
def strict() -> Protocol:
    return load_protocol("strict")


@pytest.fixture(scope="module")
def item() -> Item:
    """The TruthfulQA row of the golden renderings."""
    return load_dataset().items[0]


def content(messages: list[ChatMessage], role: str) -> str:
    (text,) = [m["content"] for m in messages if m["role"] == role]
    return text


# Golden key -> how to render it with the paper protocol for row 0.
RENDERERS: dict[str, Callable[[Protocol, Item], object]] = {
    "user_prompt": lambda p, i: p.user_prompt(i),
    "sys_nopref": lambda p, i: content(p.baseline_messages(i), "system"),
    "sys_direct_relevant": lambda p, i: content(
        p.answer_messages(i, "relevant", "zero_shot"), "system"
    ),
    "sys_cot_relevant": lambda p, i: content(p.answer_messages(i, "relevant", "cot"), "system"),
    "sys_icl_relevant_prefix": lambda p, i: content(
        p.answer_messages(i, "relevant", "icl"), "system"
    )[:700],
    "sys_direct_mixed": lambda p, i: content(p.answer_messages(i, "mixed", "zero_shot"), "system"),
    "sys_cot_mixed": lambda p, i: content(p.answer_messages(i, "mixed", "cot"), "system"),
    "sys_direct_irrelevant": lambda p, i: content(
        p.answer_messages(i, "irrelevant", "zero_shot"), "system"
    ),
    "critic_user_msg": lambda p, i: content(
        p.critic_messages(i, "relevant", "<INITIAL RESPONSE>"), "user"
    ),
    # The published critic call carried the row's relevant preference in every setting.
    "critic_user_msg_mixed": lambda p, i: content(
        p.critic_messages(i, "mixed", "<INITIAL RESPONSE>"), "user"
    ),
    "critic_user_msg_irrelevant": lambda p, i: content(
        p.critic_messages(i, "irrelevant", "<INITIAL RESPONSE>"), "user"
    ),
    "aligner_user_msg": lambda p, i: content(
        p.aligner_messages(i, "irrelevant", "<NO-PREF RESPONSE>"), "user"
    ),
    "judge_system_msg": lambda p, i: content(
        p.judge_messages(i, "<NO-PREF RESPONSE>", "<PREF RESPONSE>"), "system"
    ),
    "extractor_prompt": lambda p, i: p.extractor_prompt(i, "<MODEL RESPONSE>"),
    "extractor_llm_messages": lambda p, i: p.extractor_llm_messages(i, "<MODEL RESPONSE>"),
    "gemma_style_messages": lambda p, i: chat_messages("<SYS>", "<USER>", "merged"),
    "janus_template": lambda p, i: render_raw_prompt(chat_messages("<SYS>", "<USER>")),
}


def test_every_golden_string_has_a_renderer(golden: dict[str, Any]) -> None:
    assert set(golden) == set(RENDERERS)


@pytest.mark.parametrize("key", sorted(RENDERERS))
def test_golden_byte_exact(key: str, golden: dict[str, Any], paper: Protocol, item: Item) -> None:
    assert RENDERERS[key](paper, item) == golden[key]


def test_icl_prefix_is_a_prefix(golden: dict[str, Any], paper: Protocol, item: Item) -> None:
    system = content(paper.answer_messages(item, "relevant", "icl"), "system")
    assert len(system) > 700
    assert system.startswith(golden["sys_icl_relevant_prefix"])


def test_merged_layout_matches_gemma_style(
    golden: dict[str, Any], paper: Protocol, item: Item
) -> None:
    (expected,) = golden["gemma_style_messages"]
    system = paper.system_prompt(item, "relevant", "cot")
    merged = paper.answer_messages(item, "relevant", "cot", "merged")
    assert merged == [
        {
            "role": "user",
            "content": expected["content"]
            .replace("<SYS>", system)
            .replace("<USER>", paper.user_prompt(item)),
        }
    ]


def apply_template_mistral_instruct(system: object, content: object = None) -> str:
    """The authors' rule (janus_utils.py), as the issue states it, for the checks below."""
    prompt = f"{system}\n{content}".strip() if system else str(content)
    return f"[INST] {prompt.strip()} [/INST] "


def test_inst_layout(paper: Protocol, strict: Protocol, item: Item) -> None:
    system, user = paper.system_prompt(item, None, "zero_shot"), paper.user_prompt(item)
    assert user.endswith("\n") or system.endswith("\n")  # so the strip matters
    for protocol in (paper, strict):
        prompt = protocol.raw_prompt(protocol.baseline_messages(item, "inst"), CallKind.ANSWER)
        assert prompt == apply_template_mistral_instruct(system, user)
        assert prompt == "[INST] " + f"{system}\n{user}".strip() + " [/INST] "
        critic = protocol.critic_messages(item, "relevant", "r", "inst")
        assert protocol.raw_prompt(critic, CallKind.CRITIQUE) == apply_template_mistral_instruct(
            critic[0]["content"], critic[1]["content"]
        )
    aligner = paper.aligner_messages(item, "relevant", "r")
    (message,) = aligner
    # strict: no system text, just the content
    fixed = strict.raw_prompt(strict.aligner_messages(item, "relevant", "r"), CallKind.ALIGN)
    assert fixed == "[INST] " + message["content"].strip() + " [/INST] "
    # paper: the message list as the template's only argument (aligner.py:129-130)
    published = paper.raw_prompt(aligner, CallKind.ALIGN)
    assert published == apply_template_mistral_instruct([dict(message)])
    assert published == render_published_aligner_prompt(aligner)
    assert published.startswith("[INST] [{'role': 'user', 'content': 'You are a preference")
    assert published.endswith("'}]\nNone [/INST] ")
    assert "\\n" in published  # the content's newlines as the list's repr writes them


def test_inst_reply(paper: Protocol, strict: Protocol) -> None:
    """paper: the text after the first [/INST] of prompt + completion, stripped."""
    prompt = "[INST] a question [/INST] "
    assert paper.raw_reply(prompt, "  The answer is B.\n") == "The answer is B."
    assert strict.raw_reply(prompt, "  The answer is B.\n") == "The answer is B."
    tricky = "[INST] quote: [/INST] inside [/INST] "
    assert paper.raw_reply(tricky, "B") == "inside [/INST] B"
    assert strict.raw_reply(tricky, "B") == "B"


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("method", METHODS)
def test_all_settings_and_methods_render(
    setting: Any, method: Any, paper: Protocol, item: Item
) -> None:
    messages = paper.answer_messages(item, setting, method)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == paper.user_prompt(item)
    system = messages[0]["content"]
    if method == "pref_aligner":
        assert messages == paper.baseline_messages(item)
        return
    assert paper.preference_payload(item, setting) in system
    assert ("Here are some examples:" in system) == (method == "icl")
    assert ("Think step-by-step" in system) == (method == "cot")
    critic = paper.critic_messages(item, setting, "first")
    assert f"User Preference: {item.preference}\n" in critic[1]["content"]
    merged = paper.answer_messages(item, setting, method, "merged")
    assert merged == [
        {"role": "user", "content": system + MERGE_SEPARATOR + messages[1]["content"]}
    ]


def test_cot_in_mixed_uses_the_set_instructions(paper: Protocol, item: Item) -> None:
    assert "only the relevant user preferences" in paper.system_prompt(item, "mixed", "cot")
    assert "only the relevant" not in paper.system_prompt(item, "irrelevant", "cot")


def test_preference_payloads(paper: Protocol, item: Item) -> None:
    irrelevant = list(paper.spec["preferences"]["irrelevant"])
    assert paper.preference_payload(item, "relevant") == item.preference
    assert paper.preference_payload(item, "irrelevant") == str(irrelevant)
    mixed = [*irrelevant[:2], item.preference, *irrelevant[2:]]
    assert paper.preference_payload(item, "mixed") == str(mixed)


def test_icl_examples_follow_the_source(paper: Protocol) -> None:
    dataset = load_dataset()
    for row in (0, 817, 2038):
        row_item = dataset.items[row]
        system = paper.system_prompt(row_item, "relevant", "icl")
        assert paper.spec["icl_examples"][row_item.source][0].strip()[:200] in system


def test_aligner_preference_paper_vs_strict(paper: Protocol, strict: Protocol, item: Item) -> None:
    for setting in SETTINGS:
        paper_text = paper.aligner_messages(item, setting, "r")[0]["content"]
        strict_text = strict.aligner_messages(item, setting, "r")[0]["content"]
        assert f"User Preference: {item.preference}\n" in paper_text
        payload = strict.preference_payload(item, setting)
        assert f"User Preference: {payload}\n" in strict_text
        assert (paper_text == strict_text) == (setting == "relevant")


def test_critic_preference_paper_vs_strict(paper: Protocol, strict: Protocol, item: Item) -> None:
    for setting in SETTINGS:
        paper_text = paper.critic_messages(item, setting, "r")[1]["content"]
        strict_text = strict.critic_messages(item, setting, "r")[1]["content"]
        assert f"User Preference: {item.preference}\n" in paper_text
        payload = strict.preference_payload(item, setting)
        assert f"User Preference: {payload}\n" in strict_text
        assert (paper_text == strict_text) == (setting == "relevant")


def test_extractor_llm_messages(paper: Protocol, item: Item) -> None:
    system, user = paper.extractor_llm_messages(item, "I pick Nauru")
    assert (system["role"], user["role"]) == ("system", "user")
    assert system["content"] == paper.spec["extractor"]["llm_system"]
    assert "response: I pick Nauru\n" in user["content"]
    assert "\nB. Nauru is the smallest country" in user["content"]
    assert "{'answer': 'B'}" in user["content"]  # the doubled braces of the template
    merged = paper.extractor_llm_messages(item, "x", "merged")
    assert [m["role"] for m in merged] == ["user"]


def test_strict_keeps_the_paper_prompts(paper: Protocol, strict: Protocol, item: Item) -> None:
    for method in METHODS:
        assert paper.answer_messages(item, "mixed", method) == strict.answer_messages(
            item, "mixed", method
        )
    assert paper.judge_messages(item, "a", "b") == strict.judge_messages(item, "a", "b")


def test_protocol_rules_and_hashes(paper: Protocol, strict: Protocol) -> None:
    assert (paper.name, paper.strict, paper.parse_retries, paper.structured_output) == (
        "paper",
        False,
        0,
        False,
    )
    assert strict.strict and strict.parse_retries > 0 and strict.structured_output
    assert len(paper.sha256) == 64 and paper.sha256 != strict.sha256
    assert load_protocol("paper").sha256 == paper.sha256
    assert paper.judge_threshold == 3
    kinds = (CallKind.ANSWER, CallKind.CRITIQUE, CallKind.ALIGN)
    assert [paper.max_tokens(kind) for kind in kinds] == [500, 1024, 1000]
    # the published judge and LLM extractor (gpt-4o-mini) ran uncapped; strict caps them
    judge_side = (CallKind.JUDGE, CallKind.EXTRACT)
    assert [paper.max_tokens(kind) for kind in judge_side] == [None, None]
    assert all((strict.max_tokens(kind) or 0) > 0 for kind in judge_side)


def test_judge_uses_the_relevant_preference(paper: Protocol, item: Item) -> None:
    (message,) = paper.judge_messages(item, "no", "yes")
    assert message["role"] == "system"
    assert f"**User Preference:**  \n{item.preference}\n" in message["content"]


@pytest.mark.parametrize(
    ("model", "profile"),
    [
        ("gpt-4o-mini-2024-07-18", "api"),
        ("meta-llama/Llama-3.3-70B-Instruct-Turbo", "api"),
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B-free", "api"),
        ("meta-llama/Llama-3.1-8B-Instruct", "hf-sampled"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "hf"),
        ("smollm2-135m-instruct", "hf"),
        ("prometheus-eval/janus-7b", "janus"),
        ("Qwen/Qwen3-8B", "qwen3"),
        ("google/gemma-2-27b-it", "api"),  # called through an API (mcq_task_1.py:41-44)
        ("google/gemma-2-9b-it", "hf"),
    ],
)
def test_decoding_profile_per_model_family(model: str, profile: str, paper: Protocol) -> None:
    assert model_family_profile(model) == profile
    assert paper.default_decoding_profile(model).profile == profile


@pytest.mark.parametrize(
    ("model", "layout"),
    [
        ("google/gemma-2-9b-it", "merged"),  # mcq_task_1.py:124-125
        ("google/gemma-2-27b-it", "merged"),
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B-free", "merged"),
        ("Qwen/Qwen3-8B", "merged"),  # runs.py:187: every Qwen3 call
        ("prometheus-eval/janus-7b", "inst"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "system"),
        ("gpt-4o-mini-2024-07-18", "system"),
    ],
)
def test_layout_per_model_family(
    model: str, layout: str, paper: Protocol, strict: Protocol
) -> None:
    assert model_family_layout(model) == layout == paper.default_layout(model)
    assert strict.default_layout(model) == ("system" if "Qwen3" in model else layout)


def test_self_critic_pass_2_is_system_and_user_under_paper(
    paper: Protocol, strict: Protocol, item: Item
) -> None:
    """runs.py:60-61,106-107: get_messages(critic_sys_message, message) whatever the model."""
    for layout in ("system", "merged"):
        roles = [m["role"] for m in paper.critic_messages(item, "relevant", "r", layout)]
        assert roles == ["system", "user"]
    merged = strict.critic_messages(item, "relevant", "r", "merged")
    assert [m["role"] for m in merged] == ["user"]
    assert [m["role"] for m in paper.answer_messages(item, "relevant", "cot", "merged")] == ["user"]


@pytest.mark.parametrize(
    ("output", "answer", "thinking"),
    [
        ("<think>\nLet me see.\n</think>\n\nThe answer is B.", "The answer is B.",
         "<think>\nLet me see.\n</think>"),
        ("\n\nThe answer is C.\n", "The answer is C.", None),  # no </think>: the whole output
        ("<think>a</think>b</think>\nD", "D", "<think>a</think>b</think>"),  # the last one
        ("<think>\nran out of tokens", "<think>\nran out of tokens", None),
    ],
)  # fmt: skip
def test_split_thinking(output: str, answer: str, thinking: str | None) -> None:
    assert split_thinking(output) == (answer, thinking)


def test_decoding_profiles(paper: Protocol, strict: Protocol) -> None:
    api = paper.decoding_profile("api")
    assert (api.uncapped, api.temperature, api.seed, api.top_p) == (True, 0.0, 42, None)
    hf = paper.decoding_profile("hf")
    assert (hf.uncapped, hf.temperature) == (False, 0.0)
    sampled = paper.decoding_profile("hf-sampled")
    assert not sampled.uncapped and sampled.temperature > 0 and sampled.top_p is not None
    own = strict.default_decoding_profile("gpt-4o-mini")
    assert own.profile == "strict" and own.retry_temperature == STRICT_RETRY_TEMPERATURE
    assert str(STRICT_RETRY_TEMPERATURE) in PROFILE_DESCRIPTIONS["strict"]
    assert set(DECODING_PROFILES) == {"api", "hf", "hf-sampled", "janus", "qwen3", "strict"}
    assert set(PROFILE_DESCRIPTIONS) == set(DECODING_PROFILES)
    # runs.py:133,153 and aligner.py:133; runs.py:204-237 (1024, greedy)
    janus, qwen3 = paper.decoding_profile("janus"), paper.decoding_profile("qwen3")
    assert (janus.stage_tokens, janus.temperature, janus.uncapped) == (
        StageTokens(answer=1024, critic=2048, aligner=1024),
        0.0,
        False,
    )
    assert (qwen3.stage_tokens, qwen3.temperature, qwen3.uncapped) == (
        StageTokens(answer=1024, critic=1024, aligner=1024),
        0.0,
        False,
    )
    with pytest.raises(ValueError, match="unknown decoding profile 'fast'"):
        paper.decoding_profile("fast")


def test_load_from_path(tmp_path: Path, paper: Protocol, item: Item) -> None:
    spec = json.loads((DATA / "paper_protocol.json").read_text(encoding="utf-8"))
    spec["system_prompt"]["base"] = "Be brief.\n"
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    custom = load_protocol(path)
    assert custom.name == "custom" and not custom.strict
    assert custom.system_prompt(item, None, "zero_shot") == "Be brief.\n"
    assert custom.sha256 != paper.sha256


def test_bad_protocol_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read protocol"):
        load_protocol("strict", tmp_path)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid JSON protocol"):
        load_protocol(bad_json)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"user_prompt": {"header": "x"}}), encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"partial.json: protocol lacks key 'user_prompt.option_line'"
    ):
        load_protocol(partial)


def test_schemas() -> None:
    assert ALIGNER_SCHEMA["required"] == ["response", "thoughts"]
    assert CRITIC_SCHEMA["required"] == ["critic", "response"]


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ('{"response": "B. Nauru", "thoughts": "ok"}', "response", "B. Nauru"),
        ('```json\n{"critic": "c", "response": "fixed"}\n```', "response", "fixed"),
        ('Sure! Here it is: {"response": "line\nbreak"} done', "response", "line\nbreak"),
        ('{"critic": "only"} then {"response": "second"}', "response", "second"),
        ('{"critic": "fine"}', "critic", "fine"),
        ('{"response": ""}', "response", None),
        ('{"response": 3}', "response", None),
        ('{"response": "unterminated', "response", None),
        ("no json at all", "response", None),
        ("", "response", None),
        ('{"a": {"response": "nested"}}', "response", None),
        ('{bad} {"response": "after bad"}', "response", "after bad"),
    ],
)
def test_parse_json_response(text: str, field: str, expected: str | None) -> None:
    assert parse_json_response(text, field) == expected


def _render_cli(*argv: str) -> Any:
    """``perg prompts render ... --json`` in a child process, as a user would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "perg", "prompts", "render", "--protocol", "paper", "--json", *argv],
        capture_output=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_cli_renders_the_new_goldens(golden: dict[str, Any]) -> None:
    extractor = _render_cli("--method", "extractor", "--response", "<MODEL RESPONSE>")
    assert extractor == {"messages": golden["extractor_llm_messages"]}
    lora = _render_cli("--method", "extractor_lora", "--response", "<MODEL RESPONSE>")
    assert lora == {"prompt": golden["extractor_prompt"]}
    for setting in SETTINGS:
        critic = _render_cli(
            "--row", "0", "--method", "self_critic", "--stage", "2", "--setting", setting,
            "--response", "<INITIAL RESPONSE>",
        )  # fmt: skip
        key = "critic_user_msg" if setting == "relevant" else f"critic_user_msg_{setting}"
        assert critic["messages"][1] == {"role": "user", "content": golden[key]}


@pytest.mark.parametrize(
    ("text", "expected", "how"),
    [
        # json.loads of the whole reply: str(parsed.get('response', '')).strip()
        ('{"critic": "c", "response": "fixed"}', "fixed", "json"),
        ('{"response": "  B. Nauru \\n", "thoughts": "ok"}', "B. Nauru", "json"),
        ('{"response": "say \\"B\\"", "thoughts": "t"}', 'say "B"', "json"),
        ('{"critic": "c", "response": "r", "extra": 1}', "r", "json"),  # three keys
        ('{"critic": "c", "response": ""}', "", "json"),
        ('{"response": 3}', "3", "json"),
        ('{"response": null}', "None", "json"),  # str(None), as published
        ('{"Response": "capitalised key"}', "", "json_missing"),  # json keys are exact
        ('{"critic": "only"}', "", "json_missing"),  # a missing key: "" is used
        # no JSON object: the published .get raised; we keep the earlier text
        ('["a list", {"response": "r"}]', None, "not_object"),
        ('"just a string"', None, "not_object"),
        ("42", None, "not_object"),
        # a JSON decode error: the response regex (quotes optional, any case, other keys)
        ('Sure! {"critic": "c", "response": "fixed"} Hope it helps.', "fixed", "regex"),
        ('```json\n{"response": " padded ", "thoughts": "t"}\n```', "padded", "regex"),
        ('Here: {"thoughts": "t", "response": "either order"}', "either order", "regex"),
        ('Here: {"response": "no critic key"}', "no critic key", "regex"),
        ("{critic: 'c', response: \"unquoted key\"}", "unquoted key", "regex"),
        ('{"RESPONSE": "upper", "x": 1', "upper", "regex"),
        ('{"response": \u201ccurly quotes\u201d}', "curly quotes", "regex"),
        ("{\u201cresponse\u201d: \u201ccurly key\u201d}", None, "unreadable"),  # ” is no "
        ('x {"response": "open \u201cclose\u201d and more"}', "open \u201cclose", "regex"),
        ('x {"response": "say \\"B\\" twice"}', "say \\", "regex"),  # ends at the first "
        ('x {"critic": "c", "thoughts": "t", "response": "three keys"', "three keys", "regex"),
        ('{"response": "line\nbreak"}', None, "unreadable"),  # . stops at a newline
        ('x "response": "first\nline" then "response": "second"', "second", "regex"),
        ('Here: {"critic": "c", "response": ""} done', "", "regex"),
        ("no json at all", None, "unreadable"),
        ("", None, "unreadable"),
    ],
)
def test_read_rewrite_paper(text: str, expected: str | None, how: str) -> None:
    reading = read_rewrite_paper(text)
    assert (reading.response, reading.how) == (expected, how)


def test_read_rewrite_paper_matches_the_published_regex() -> None:
    """Where JSON fails, our linear reader captures what the published pattern does."""
    published = re.compile(r'"?response"?\s*:\s*["\u201c](.*?)["\u201d]\s*}?', re.IGNORECASE)
    replies = [
        'a "response": "b\nc" x response: "d" "response":"e"',
        'response: "abc response:\n"x"',
        "{'Response': \u201cz\u201d",
        'response : \n\n "spans lines before the value"',
        'RESPONSE:"" x',
        "response: unquoted",
    ]
    for reply in replies:
        match = published.search(reply)
        expected = None if match is None else match.group(1).strip()
        assert read_rewrite_paper(reply).response == expected, reply


def test_read_rewrite_by_protocol(paper: Protocol, strict: Protocol) -> None:
    empty = '{"critic": "c", "response": ""}'
    assert paper.read_rewrite(empty).response == ""
    assert strict.read_rewrite(empty).response is None
    chatty = 'Sure: {"response": "r"} and {"thoughts": "t"}'
    assert paper.read_rewrite(chatty).response == "r"
    assert strict.read_rewrite(chatty).response == "r"
    listed = '[{"response": "r"}]'
    assert paper.read_rewrite(listed).how == "not_object"
    assert strict.read_rewrite(listed).response == "r"


def answer_limit(spec: RunSpec) -> int | None:
    """The max_tokens of the run's answer calls."""
    protocol = load_protocol(spec.context.protocol)
    return generation_config(CallKind.ANSWER, protocol, spec.context, ITEM).max_tokens


def test_runs_record_profile_threshold_and_extractor() -> None:
    from perg.client import Endpoint
    from perg.config import load_settings
    from perg.runs import RunRequest, plan_run

    model = Endpoint("http://127.0.0.1:9/v1", "gpt-4o-mini-2024-07-18")
    local = Endpoint("http://127.0.0.1:9/v1", "meta-llama/Llama-3.1-8B-Instruct")
    settings = load_settings()
    spec, _ = plan_run(RunRequest(model, model, rows="2"), settings)
    ctx = spec.context
    assert (ctx.decoding.profile, ctx.decoding.uncapped, ctx.decoding.seed) == ("api", True, 42)
    assert answer_limit(spec) is None and spec.followed_threshold == 3
    assert (ctx.extractor, ctx.repeat_baseline) == ("rules", False)
    spec, _ = plan_run(
        RunRequest(local, model, rows="2", extractor_endpoint=model, repeat_baseline=True),
        settings,
    )
    ctx = spec.context
    assert (ctx.decoding.profile, ctx.decoding.temperature, ctx.decoding.top_p) == (
        "hf-sampled", 0.6, 0.9
    )  # fmt: skip
    assert answer_limit(spec) == 500 and ctx.extractor == "llm" and ctx.repeat_baseline
    spec, _ = plan_run(
        RunRequest(local, model, rows="2", protocol="strict", temperature=0.2, max_tokens_cap=64),
        settings,
    )
    decoding = spec.context.decoding
    assert (decoding.profile, decoding.temperature, answer_limit(spec)) == (
        "strict+override",
        0.2,
        64,
    )
    assert decoding.retry_temperature == STRICT_RETRY_TEMPERATURE


NESTED = '{"a":' * 100_000
REPEATED = '{"critic": "x", "response": "' * 20_000


CURLY_OPENS = "response: \u201c" * 20_000


@pytest.mark.parametrize("text", [NESTED, REPEATED, "{" * 100_000, CURLY_OPENS])
def test_json_readers_survive_hostile_replies(text: str) -> None:
    """Deep nesting, many unterminated objects, values never closed: no crash, linear time."""
    assert parse_json_response(text) is None
    reading = read_rewrite_paper(text)
    assert reading.response in (None, "{")  # REPEATED: the value ends at the next quote
