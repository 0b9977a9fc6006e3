"""The six ``--protocol paper`` deviations of issue 19 as the services run them, in-process: the
scripted double's rules behind the client's MockTransport, the publisher a list. Each test
names the authors' code it follows (chimaobi-okite/pref_aligner)."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest
from model_double import inst_messages, make_perg_script
from pipeline_harness import DATA_DIR
from tenacity import wait_none

from perg.client import (
    ClientPool,
    ClientTuning,
    Endpoint,
    MockTransport,
    TransportRequest,
    TransportResponse,
)
from perg.config import load_settings
from perg.dataset import load_dataset
from perg.errors import InputError
from perg.protocol import RoleLayout, load_protocol
from perg.runs import RunRequest, plan_run
from schemas import AlignRequest, Generation, Record, RunContext, TopicSpec, Verdict, WorkItem
from services._calls import ModelCaller
from services.aligner import align
from services.generator import answer_row
from services.judge import judge_generation

pytestmark = pytest.mark.skipif(not DATA_DIR.is_dir(), reason="needs ../shared/perg")

MODEL = Endpoint("http://model.test/v1", "scripted")
JUDGE = Endpoint("http://judge.test/v1", "judge")
SCRIPT = make_perg_script()
ITEM = load_dataset(DATA_DIR / "pergdata.csv").items[0] if DATA_DIR.is_dir() else None


class Published:
    def __init__(self) -> None:
        self.records: list[Record] = []

    async def __call__(self, spec: TopicSpec, key: bytes, record: Record) -> None:
        self.records.append(record)

    def of(self, kind: type[Any]) -> list[Any]:
        return [r for r in self.records if isinstance(r, kind)]


class Server:
    """Answers chat and completion requests by the double's script, or by ``override``
    (request body -> reply text, a (status, body) error, or None for the script); keeps every
    request body with its URL."""

    def __init__(self, override: Any = None) -> None:
        self.override = override
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: TransportRequest) -> TransportResponse:
        body = request.json()
        self.requests.append((request.url, body))
        reply = self.override(body) if self.override else None
        if isinstance(reply, tuple):
            status, error = reply
            return TransportResponse(status, error)
        if "prompt" in body:
            text = reply if reply is not None else SCRIPT(inst_messages(body["prompt"]))
            choice: dict[str, Any] = {"text": text}
        else:
            text = reply if reply is not None else SCRIPT(body["messages"])
            choice = {"message": {"content": text}}
        payload = {"choices": [{**choice, "finish_reason": "stop"}], "usage": {}}
        return TransportResponse(200, orjson.dumps(payload))

    def to(self, host: str) -> list[dict[str, Any]]:
        return [body for url, body in self.requests if host in url]


def caller_for(
    server: Server,
    *,
    protocol_name: str = "paper",
    profile: str = "hf",
    layout: RoleLayout = "system",
    thinking: bool | None = None,
    extractor: Any = "rules",
) -> tuple[ModelCaller, WorkItem]:
    protocol = load_protocol(protocol_name, DATA_DIR)
    decoding = dataclasses.replace(protocol.decoding_profile(profile), thinking=thinking)
    context = RunContext(
        run_id="run-1",
        model=MODEL,
        judge=JUDGE,
        protocol=protocol_name,
        protocol_sha256=protocol.sha256,
        decoding=decoding,
        layout=layout,
        extractor=extractor,
    )
    assert ITEM is not None
    work = WorkItem(
        context=context,
        item=ITEM,
        settings=["relevant"],
        methods=["zero_shot", "self_critic", "pref_aligner"],
    )
    pool = ClientPool(
        tuning=ClientTuning(max_retries=0),
        retry_wait=wait_none(),
        transport=lambda e: MockTransport(server),
    )
    return ModelCaller(pool, context, protocol), work


async def run_row(caller: ModelCaller, work: WorkItem) -> Published:
    """The generator, aligner and judge on one row; everything published."""
    out = Published()
    await answer_row(work, caller, caller.protocol, out)
    for request in out.of(AlignRequest):
        await align(request, caller, caller.protocol, out)
    for generation in out.of(Generation):
        await judge_generation(generation, caller, caller.protocol, out)
    return out


def generation(out: Published, method: str) -> Generation:
    (found,) = [g for g in out.of(Generation) if g.method == method]
    return found


# 1. critic / aligner JSON reading (mcq_extractor_utils.py:295-347)


@pytest.mark.parametrize(
    ("reply", "response", "read", "fallback"),
    [
        ('{"critic": "c", "response": "  padded  "}', "padded", "json", False),
        ('{"critic": "c", "response": "r", "thoughts": "three keys"}', "r", "json", False),
        ('{"critic": "c"}', "", "json_missing", False),
        ('Sure: {Critic: "c", RESPONSE: \u201ccurly\u201d} ok', "curly", "regex", False),
        ('[{"critic": "c", "response": "r"}]', None, "not_object", True),  # .get raised
        ("not json at all", None, "unreadable", True),
    ],
)
async def test_rewrites_are_read_as_published_and_recorded_per_row(
    reply: str, response: str | None, read: str, fallback: bool
) -> None:
    def rewrite(body: dict[str, Any]) -> str | None:
        text = body["messages"][-1]["content"]
        is_rewrite = text.startswith(("Follow the instructions", "You are a preference aligner"))
        return reply if is_rewrite else None

    caller, work = caller_for(Server(rewrite))
    out = await run_row(caller, work)
    for method in ("self_critic", "pref_aligner"):
        g = generation(out, method)
        assert (g.rewrite_read, g.parse_fallback, g.parse_failure) == (read, fallback, False)
        if fallback:  # the earlier text is kept, as published
            assert g.response and g.response.startswith("The answer is")
        else:
            assert g.response == response
    assert generation(out, "zero_shot").rewrite_read is None


# 2. message layout per model family (mcq_task_1.py:124-125, runs.py:187, runs.py:60-61)


async def test_merged_layout_keeps_self_critic_pass_2_as_system_and_user() -> None:
    server = Server()
    caller, work = caller_for(server, layout="merged")
    await run_row(caller, work)
    model_calls = server.to("model.test")
    roles = {tuple(m["role"] for m in body["messages"]) for body in model_calls}
    critic = [b for b in model_calls if "Follow the instructions" in b["messages"][-1]["content"]]
    assert critic and all([m["role"] for m in b["messages"]] == ["system", "user"] for b in critic)
    assert ("user",) in roles  # baseline, answers and the aligner: one user turn


def test_layout_and_decoding_follow_the_family_and_are_recorded() -> None:
    settings = load_settings()

    def context(model: str, **kwargs: Any) -> RunContext:
        endpoint = Endpoint("http://m.test/v1", model)
        spec, _ = plan_run(RunRequest(endpoint, JUDGE, rows="1", **kwargs), settings)
        return spec.context

    janus = context("prometheus-eval/janus-7b")
    assert (janus.layout, janus.decoding.profile) == ("inst", "janus")
    stages = janus.decoding.stage_tokens
    assert stages is not None and (stages.answer, stages.critic, stages.aligner) == (
        1024, 2048, 1024,
    )  # fmt: skip
    qwen = context("Qwen/Qwen3-8B")
    assert (qwen.layout, qwen.decoding.profile, qwen.decoding.thinking) == (
        "merged",
        "qwen3",
        False,
    )
    assert context("Qwen/Qwen3-8B", thinking=True).decoding.thinking is True
    gemma = context("google/gemma-2-27b-it")
    assert (gemma.layout, gemma.decoding.profile, gemma.decoding.uncapped) == (
        "merged", "api", True,
    )  # fmt: skip
    assert (gemma.decoding.temperature, gemma.decoding.seed) == (0.0, 42)
    overridden = context("google/gemma-2-27b-it", layout="system", decoding_profile="hf")
    assert (overridden.layout, overridden.decoding.profile) == ("system", "hf")
    assert context("Qwen/Qwen3-8B", protocol="strict").layout == "system"
    with pytest.raises(InputError, match="--thinking: model 'gpt-4o-mini' has no thinking"):
        context("gpt-4o-mini", thinking=True)


# 3. decoding per model (runs.py:133,153, aligner.py:133; runs.py:204-237)


async def test_janus_runs_raw_inst_prompts_with_its_limits() -> None:
    server = Server()
    caller, work = caller_for(server, profile="janus", layout="inst")
    out = await run_row(caller, work)
    model_calls = [(url, b) for url, b in server.requests if "model.test" in url]
    assert all(url.endswith("/completions") and "/chat/" not in url for url, _ in model_calls)
    limits = {}
    for _, body in model_calls:
        prompt = body["prompt"]
        assert prompt.startswith("[INST] ") and prompt.endswith(" [/INST] ")
        kind = (
            "aligner" if prompt.startswith("[INST] [{'role': 'user'")
            else "critic" if "Follow the instructions" in prompt else "answer"
        )  # fmt: skip
        limits.setdefault(kind, set()).add(body["max_tokens"])
        assert body["temperature"] == 0.0 and "seed" not in body
    assert limits == {"answer": {1024}, "critic": {2048}, "aligner": {1024}}
    # the published Janus aligner prompt holds no question the model can answer
    aligned = generation(out, "pref_aligner")
    assert aligned.parse_fallback and aligned.rewrite_read == "unreadable"
    answer = generation(out, "zero_shot").response
    assert answer and answer.startswith("The answer is")


async def test_qwen3_thinking_switch_limits_and_split() -> None:
    def think(body: dict[str, Any]) -> str | None:
        if "messages" not in body or body.get("chat_template_kwargs") is None:
            return None
        reply = SCRIPT(body["messages"])
        on = body["chat_template_kwargs"]["enable_thinking"]
        return f"<think>\nweighing B\n</think>\n\n{reply}" if on else reply

    server = Server(think)
    caller, work = caller_for(server, profile="qwen3", layout="merged", thinking=True)
    out = await run_row(caller, work)
    switches = {}
    for body in server.to("model.test"):
        text = body["messages"][-1]["content"]
        kind = "aligner" if text.startswith("You are a preference aligner") else "other"
        switches.setdefault(kind, set()).add(body["chat_template_kwargs"]["enable_thinking"])
        assert body["max_tokens"] == 1024 and body["temperature"] == 0.0
    assert switches == {"aligner": {False}, "other": {True}}  # aligner.py:104
    assert all("chat_template_kwargs" not in b for b in server.to("judge.test"))
    answer = generation(out, "zero_shot")
    assert answer.response and answer.response.startswith("The answer is")
    assert answer.thinking == "<think>\nweighing B\n</think>"
    assert generation(out, "pref_aligner").thinking is None
    baseline = generation(out, "baseline")
    assert baseline.thinking and "</think>" not in (baseline.response or "")


# 4. the judge: temperature 0 and seed 42 always (pref_eval_utils.py:75-94)


@pytest.mark.parametrize("profile", ["hf", "hf-sampled", "api", "strict"])
async def test_judge_and_extractor_are_greedy_with_seed_42(profile: str) -> None:
    server = Server()
    protocol_name = "strict" if profile == "strict" else "paper"
    caller, work = caller_for(server, protocol_name=protocol_name, profile=profile, extractor="llm")
    await run_row(caller, work)
    judged = server.to("judge.test")
    assert judged and all((b["temperature"], b["seed"]) == (0.0, 42) for b in judged)


# 5. LLM-extractor refusals and errors count as wrong answers (mcq_extractor_utils.py:127-187)

CONTENT_FILTER = orjson.dumps(
    {"error": {"message": "The response was filtered", "code": "content_filter"}}
)


@pytest.mark.parametrize(
    ("protocol_name", "status", "error", "path", "letter"),
    [
        ("paper", 400, CONTENT_FILTER, "refused", False),
        ("paper", 400, b'{"error": "context length exceeded"}', "error", False),
        ("paper", 422, b"unprocessable", "error", False),
        ("strict", 400, CONTENT_FILTER, "refused", True),  # strict: the rules letter
    ],
)
async def test_extractor_refusals_are_wrong_answers_not_dead_letters(
    protocol_name: str, status: int, error: bytes, path: str, letter: bool
) -> None:
    def refuse(body: dict[str, Any]) -> Any:
        system = body["messages"][0]["content"] if "messages" in body else ""
        return (status, error) if "map the language model response" in system else None

    caller, work = caller_for(Server(refuse), protocol_name=protocol_name, extractor="llm")
    out = await run_row(caller, work)
    verdicts = out.of(Verdict)
    assert len(verdicts) == len(out.of(Generation)) == 4  # baseline + 3 answers: none lost
    for verdict in verdicts:
        assert verdict.extraction == path
        assert (verdict.answer is not None) == letter
        assert verdict.answer == (verdict.rules_answer if letter else None)
