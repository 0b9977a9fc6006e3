"""ModelClient against MockTransport and against the real ScriptedModelServer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from model_double import ScriptedModelServer, ScriptedReply, ServerShape
from tenacity import wait_none

from perg.client import (
    AiohttpTransport,
    ClientPool,
    ClientTuning,
    Endpoint,
    MockTransport,
    ModelClient,
    ModelError,
    Timeouts,
    TransportError,
    TransportRequest,
    TransportResponse,
)
from perg.client._client import MIN_DEADLINE_S

ENDPOINT = Endpoint("http://model.test/v1", "m")
TUNING = ClientTuning(max_retries=3, timeout_s=5.0)
MESSAGES = [{"role": "user", "content": "hello"}]


def ok(text: str = "hi", **usage: int) -> TransportResponse:
    body: dict[str, Any] = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": usage or {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
    }
    return TransportResponse(200, orjson.dumps(body))


def client_for(
    handler: Any,
    endpoint: Endpoint = ENDPOINT,
    tuning: ClientTuning = TUNING,
    token_envs: tuple[str, ...] = (),
) -> ModelClient:
    return ModelClient(
        endpoint,
        MockTransport(handler),
        tuning=tuning,
        retry_wait=wait_none(),
        token_envs=token_envs,
    )


def scripted(*responses: TransportResponse | Exception) -> tuple[list[TransportRequest], Any]:
    seen: list[TransportRequest] = []

    def handler(request: TransportRequest) -> TransportResponse:
        item = responses[len(seen)]
        seen.append(request)
        if isinstance(item, Exception):
            raise item
        return item

    return seen, handler


async def test_success_parses_text_and_usage() -> None:
    seen, handler = scripted(ok("The answer is B."))
    async with client_for(handler) as client:
        result = await client.chat(MESSAGES, max_tokens=32, temperature=0.5, seed=42)
    assert (result.text, result.finish_reason, result.tokens_in, result.tokens_out) == (
        "The answer is B.",
        "stop",
        7,
        2,
    )
    assert result.attempts == 1 and result.latency_s >= 0
    sent = seen[0].json()
    assert seen[0].url == "http://model.test/v1/chat/completions"
    assert sent == {
        "model": "m",
        "messages": MESSAGES,
        "max_tokens": 32,
        "temperature": 0.5,
        "stream": False,
        "seed": 42,
    }
    assert "Authorization" not in seen[0].headers


async def test_missing_usage_gives_none() -> None:
    body = {"choices": [{"message": {"content": "x"}, "finish_reason": None}]}
    _, handler = scripted(TransportResponse(200, orjson.dumps(body)))
    result = await client_for(handler).chat(MESSAGES, max_tokens=4)
    assert (result.tokens_in, result.tokens_out, result.finish_reason) == (None, None, None)


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_overload_is_retried(status: int, caplog: pytest.LogCaptureFixture) -> None:
    seen, handler = scripted(TransportResponse(status, b'{"error":"Model is overloaded"}'), ok())
    with caplog.at_level(logging.WARNING, logger="perg.client"):
        result = await client_for(handler).chat(MESSAGES, max_tokens=4)
    assert result.attempts == 2 and len(seen) == 2
    assert f"status {status}" in caplog.text and "http://model.test/v1" in caplog.text


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_other_4xx_fails_at_once(status: int) -> None:
    seen, handler = scripted(TransportResponse(status, b'{"error":"Input validation error"}'))
    with pytest.raises(ModelError) as info:
        await client_for(handler).chat(MESSAGES, max_tokens=4)
    assert len(seen) == 1 and info.value.status == status
    assert "http://model.test/v1" in str(info.value) and "Input validation error" in str(info.value)


async def test_connection_error_is_retried() -> None:
    _, handler = scripted(TransportError("connection refused"), ok())
    assert (await client_for(handler).chat(MESSAGES, max_tokens=4)).attempts == 2


async def test_timeout_is_retried() -> None:
    calls = 0

    async def handler(request: TransportRequest) -> TransportResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)
        return ok()

    tuning = ClientTuning(max_retries=3, timeout_s=0.05)
    assert (await client_for(handler, ENDPOINT, tuning).chat(MESSAGES, max_tokens=4)).attempts == 2


async def test_retries_exhausted_raises() -> None:
    seen, handler = scripted(*[TransportResponse(503, b"busy")] * 4)
    with pytest.raises(ModelError, match=r"HTTP 503.*gave up after 4 attempts") as info:
        await client_for(handler).chat(MESSAGES, max_tokens=4)
    assert len(seen) == 4 and info.value.status == 503


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"choices": []}', b'{"choices": [{}]}'])
async def test_malformed_reply_raises(body: bytes) -> None:
    _, handler = scripted(TransportResponse(200, body))
    with pytest.raises(ModelError, match=r"http://model\.test/v1.*malformed"):
        await client_for(handler).chat(MESSAGES, max_tokens=4)


async def test_in_flight_bound() -> None:
    active = peak = 0

    async def handler(request: TransportRequest) -> TransportResponse:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return ok()

    client = client_for(handler, ENDPOINT, ClientTuning(max_in_flight=3))
    results = await asyncio.gather(*(client.chat(MESSAGES, max_tokens=4) for _ in range(20)))
    assert len(results) == 20 and peak == 3


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("tgi", {"type": "json", "value": {"type": "object"}}),
        ("llamacpp", {"type": "json_object", "schema": {"type": "object"}}),
        *[
            (
                name,
                {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": {"type": "object"}, "strict": True},
                },
            )
            for name in ("openai", "vllm")
        ],
    ],
)
async def test_response_format_per_backend(backend: Any, expected: dict[str, Any]) -> None:
    seen, handler = scripted(ok())
    endpoint = Endpoint("http://model.test/v1", "m", backend=backend)
    await client_for(handler, endpoint).chat(MESSAGES, max_tokens=4, json_schema={"type": "object"})
    assert seen[0].json()["response_format"] == expected


async def test_bearer_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERG_TEST_KEY", "s3cret")
    seen, handler = scripted(ok())
    endpoint = Endpoint("http://model.test/v1", "m", api_key_env="PERG_TEST_KEY")
    allowed = ("PERG_TEST_KEY@model.test",)  # the worker's PERG_MODEL_TOKEN_ENVS
    await client_for(handler, endpoint, token_envs=allowed).chat(MESSAGES, max_tokens=4)
    assert seen[0].headers["Authorization"] == "Bearer s3cret"


def test_missing_key_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERG_TEST_KEY", raising=False)
    with pytest.raises(ModelError, match=r"environment variable 'PERG_TEST_KEY'.*not set"):
        ModelClient(
            Endpoint("http://model.test/v1", "m", api_key_env="PERG_TEST_KEY"),
            token_envs=("PERG_TEST_KEY",),
        )


async def test_pool_shares_one_client_per_endpoint() -> None:
    async with ClientPool() as pool:
        a = pool.get(ENDPOINT)
        assert pool.get(Endpoint("http://model.test/v1", "m")) is a
        assert pool.get(Endpoint("http://other.test/v1", "m")) is not a


async def test_real_round_trip_against_the_double() -> None:
    def script(messages: list[dict[str, Any]]) -> str:
        return "pong " + str(messages[-1]["content"])

    async with (
        ScriptedModelServer(script) as server,
        ModelClient(Endpoint(server.base_url, "scripted")) as client,
    ):
        result = await client.chat(MESSAGES, max_tokens=8, seed=1, json_schema={"type": "object"})
    assert result.text == "pong hello" and result.finish_reason == "stop"
    # the double counts about four characters per token
    assert result.tokens_in == len(orjson.dumps(MESSAGES)) // 4 and result.tokens_out == 2
    assert result.attempts == 1
    assert server.requests[0]["seed"] == 1
    assert server.requests[0]["response_format"]["type"] == "json_schema"


async def test_real_429_then_ok_against_the_double() -> None:
    reply = ScriptedReply("fine", status=429, times=2)
    async with (
        ScriptedModelServer(lambda messages: reply) as server,
        ClientPool(retry_wait=wait_none()) as pool,
    ):
        client = pool.get(Endpoint(server.base_url, "scripted"))
        result = await client.chat(MESSAGES, max_tokens=8)
    assert result.text == "fine" and result.attempts == 3 and len(server.requests) == 3


# -- deadlines, Retry-After, bounds -------------------------------------------------------------


def test_deadline_is_sized_to_the_request_and_doubles_per_retry() -> None:
    tuning = ClientTuning(deadline_base_s=5, min_tokens_per_s=50)
    client = ModelClient(ENDPOINT, MockTransport(lambda r: ok()), tuning=tuning)
    assert client.timeouts(100).total_s == pytest.approx(7.0)
    assert client.timeouts(1000).total_s == pytest.approx(25.0)
    assert client.timeouts(100, attempt=3).total_s == pytest.approx(28.0)
    assert client.timeouts(100).connect_s == 7.0  # never longer than the whole attempt
    assert client.timeouts(1000).connect_s == tuning.connect_timeout_s
    assert client.timeouts(10_000, attempt=6).total_s == tuning.timeout_s  # the cap


async def test_deadline_follows_the_observed_replies() -> None:
    async def slowish(request: TransportRequest) -> TransportResponse:
        await asyncio.sleep(0.01)
        return ok()

    tuning = ClientTuning(deadline_base_s=30, min_tokens_per_s=1)
    client = client_for(slowish, ENDPOINT, tuning)
    assert client.timeouts(64).total_s == pytest.approx(94)  # sized: nothing seen yet
    for _ in range(8):
        await client.chat(MESSAGES, max_tokens=64)
    assert client.timeouts(64).total_s == pytest.approx(MIN_DEADLINE_S)  # 4x ~10 ms, floored
    assert client.timeouts(32).total_s == pytest.approx(62)  # another size: still sized


async def test_a_hung_call_is_abandoned_at_its_deadline_and_retried() -> None:
    calls = 0

    async def hangs_once(request: TransportRequest) -> TransportResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(3600)
        return ok()

    tuning = ClientTuning(deadline_base_s=0.05, min_tokens_per_s=1e6)
    started = asyncio.get_running_loop().time()
    result = await client_for(hangs_once, ENDPOINT, tuning).chat(MESSAGES, max_tokens=16)
    assert result.attempts == 2
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_retry_after_is_honoured() -> None:
    seen, handler = scripted(TransportResponse(429, b"slow down", retry_after_s=0.3), ok())
    started = asyncio.get_running_loop().time()
    result = await client_for(handler).chat(MESSAGES, max_tokens=4)
    assert result.attempts == 2 and len(seen) == 2
    assert asyncio.get_running_loop().time() - started >= 0.3


async def test_retry_after_header_is_read_from_a_real_server() -> None:
    shape = ServerShape(fault_percent=100, faults=("429",))
    async with ScriptedModelServer(lambda m: "ok", shape=shape) as server:
        transport = AiohttpTransport()
        try:
            response = await transport.post_json(
                f"{server.base_url}/chat/completions",
                orjson.dumps({"messages": MESSAGES}),
                {"Content-Type": "application/json"},
                Timeouts(connect_s=5, total_s=5),
            )
        finally:
            await transport.aclose()
    assert (response.status, response.retry_after_s) == (429, 1.0)


@pytest.mark.parametrize("bad", [0, -1])
def test_max_in_flight_below_one_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="max_in_flight must be at least 1"):
        ClientTuning(max_in_flight=bad)


async def test_a_call_on_the_wire_is_held_to_a_deadline_learned_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("perg.client._client.MIN_DEADLINE_S", 0.3)
    monkeypatch.setattr("perg.client._client.WATCH_EVERY_S", 0.02)
    first = True

    async def first_hangs(request: TransportRequest) -> TransportResponse:
        nonlocal first
        if first:
            first = False
            await asyncio.sleep(3600)
        return ok()

    tuning = ClientTuning(deadline_base_s=60, max_retries=0)
    client = client_for(first_hangs, ENDPOINT, tuning)
    hung = asyncio.create_task(client.chat(MESSAGES, max_tokens=8))
    await asyncio.sleep(0.05)
    for _ in range(8):  # fast replies teach the client a short deadline
        await client.chat(MESSAGES, max_tokens=8)
    with pytest.raises(ModelError, match=r"no reply within 0\.3s"):
        await asyncio.wait_for(hung, timeout=5)


async def test_thinking_switch_and_separate_reasoning() -> None:
    """chat_template_kwargs as vLLM/SGLang take them; a reasoning parser's reasoning_content
    comes back apart from the answer."""
    body = {"choices": [{"message": {"content": "B", "reasoning_content": "hm"}}], "usage": {}}
    seen, handler = scripted(TransportResponse(200, orjson.dumps(body)))
    result = await client_for(handler).chat(
        MESSAGES, max_tokens=8, chat_template_kwargs={"enable_thinking": False}
    )
    assert (result.text, result.reasoning) == ("B", "hm")
    assert seen[0].json()["chat_template_kwargs"] == {"enable_thinking": False}
    seen, handler = scripted(ok())
    assert (await client_for(handler).chat(MESSAGES, max_tokens=8)).reasoning is None
    assert "chat_template_kwargs" not in seen[0].json()


async def test_raw_completion_against_the_double() -> None:
    """--layout inst: /v1/completions with no limit when uncapped, top_p when given."""
    async with (
        ScriptedModelServer(lambda messages: "got " + messages[-1]["content"]) as server,
        ModelClient(Endpoint(server.base_url, "scripted")) as client,
    ):
        result = await client.complete("[INST] hello [/INST] ", max_tokens=None, top_p=0.9)
    assert result.text == "got hello"
    assert "max_tokens" not in server.requests[0] and server.requests[0]["top_p"] == 0.9
