"""The scripted model server test double: its PERG decision rules and both ways to run it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from model_double import (
    INVALID_JSON_PERCENT,
    WRONG_PERCENT,
    ScriptedModelServer,
    ScriptedReply,
    answer_letter,
    call_kind,
    judge_rating,
    make_perg_script,
    parse_question,
    perg_script,
    question_key,
    stable_hash,
)

OPTIONS = ["Vatican City.", "Nauru.", "Monaco.", "The United States."]
PROMPT = (
    "Which of the options best answers the question\n\n    Question : Smallest country?\n"
    "Options: \n"
    + "".join(f"{letter}. {text}\n" for letter, text in zip("ABCD", OPTIONS, strict=True))
)
KEY = question_key("Smallest country?", OPTIONS)
BASE = (
    "You are an AI assistant that provides factually accurate, unbiased, and helpful responses.\n"
)
PREF = BASE + "Here is the user preference: I prefer concise responses..\n"


def answer_call(system: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": PROMPT}]


def test_parse_question() -> None:
    assert parse_question(PROMPT) == ("Smallest country?", OPTIONS)
    assert parse_question("no question here") is None


def test_call_kinds() -> None:
    judge = [{"role": "system", "content": "rate on a **Likert scale from 1** ..." + PROMPT}]
    aligner = [{"role": "user", "content": "You are a preference aligner agent. Query: " + PROMPT}]
    critic = [{"role": "user", "content": "Follow the instructions below to review ... " + PROMPT}]
    extract = [
        {"role": "user", "content": PROMPT + 'Reply with a JSON object {"answer": "<letter>"}'}
    ]
    assert call_kind(judge) == "judge" and call_kind(aligner) == "aligner"
    assert call_kind(critic) == "critic" and call_kind(extract) == "extract"
    assert call_kind(answer_call(BASE)) == "answer"
    assert call_kind([{"role": "user", "content": "hi"}]) == "other"


def test_answer_follows_the_rule_with_and_without_preference() -> None:
    for system, preferred in ((BASE, False), (PREF, True)):
        expected = answer_letter(KEY, 4, None, preferred)
        assert perg_script(answer_call(system)) == f"The answer is {expected}."
    icl = PREF + "Here are some examples:\n" + PROMPT.replace("Smallest", "Largest")
    assert perg_script(answer_call(icl)) == perg_script(answer_call(PREF))
    keyed = make_perg_script({KEY: "B"})
    letter = answer_letter(KEY, 4, "B", False)
    assert keyed(answer_call(BASE)) == f"The answer is {letter}."


def test_answer_letter_is_mostly_gold_with_a_wrong_subset() -> None:
    keys = [f"question {i}" for i in range(2000)]
    letters = [answer_letter(key, 4, "C", preferred=True) for key in keys]
    wrong = sum(letter != "C" for letter in letters) / len(keys)
    assert abs(wrong - WRONG_PERCENT / 100) < 0.03
    assert set(letters) == {"A", "B", "C", "D"}
    for key, letter in zip(keys, letters, strict=True):
        assert (letter != "C") == (stable_hash(key + "|pref") % 100 < WRONG_PERCENT)
    assert {answer_letter(key, 4, None, False) for key in keys} == {"A", "B", "C", "D"}


def test_aligner_and_critic_json_with_an_invalid_subset() -> None:
    invalid = 0
    for i in range(300):
        prompt = PROMPT.replace("Smallest country?", f"Smallest country {i}?")
        key = question_key(f"Smallest country {i}?", OPTIONS)
        answer = f"The answer is {answer_letter(key, 4, None, True)}."
        for kind, start in (
            ("aligner", "You are a preference aligner agent"),
            ("critic", "Follow the instructions below to review"),
        ):
            reply = perg_script([{"role": "user", "content": f"{start}\nQuery: {prompt}\n"}])
            if stable_hash(f"{kind}|{key}") % 100 < INVALID_JSON_PERCENT:
                invalid += 1
                assert reply == answer
            else:
                assert orjson.loads(reply)["response"] == answer
    assert 0 < invalid < 120


def test_judge_and_extraction() -> None:
    system = "Likert scale ...\n**Model Response With Preference:**\nThe answer is A."
    reply = perg_script([{"role": "system", "content": system}])
    assert reply == f"<explanation>ok</explanation>\n<answer>{judge_rating(system)}</answer>"
    extract = (
        PROMPT
        + 'Response:\nI think so. The answer is D.\n\nReply with only a JSON object {"answer"'
    )
    assert orjson.loads(perg_script([{"role": "user", "content": extract}])) == {"answer": "D"}
    missing = 'Response:\nno idea\nReply with only a JSON object {"answer": "<letter>"}'
    assert orjson.loads(perg_script([{"role": "user", "content": missing}])) == {"answer": None}


async def test_scripted_errors_delay_and_endpoints() -> None:
    reply = ScriptedReply("late", finish_reason="length", delay_s=0.05, status=503, times=1)
    async with ScriptedModelServer(lambda m: reply) as server, aiohttp.ClientSession() as http:
        body = {"model": "x", "messages": [{"role": "user", "content": "q"}]}
        url = server.base_url + "/chat/completions"
        async with http.post(url, json=body) as first:
            assert first.status == 503
        async with http.post(url, json=body) as second:
            data = await second.json()
        assert data["choices"][0]["message"]["content"] == "late"
        assert data["choices"][0]["finish_reason"] == "length"
        async with http.post(url, json={"model": "x"}) as invalid:
            assert invalid.status == 400
        async with http.get(server.base_url + "/models") as models:
            assert (await models.json())["data"][0]["id"] == "scripted"
        async with http.get(server.base_url.removesuffix("/v1") + "/health") as health:
            assert health.status == 200


async def test_runs_as_its_own_process() -> None:
    double = Path(__file__).with_name("model_double.py")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(double),
        "--port",
        "0",
        "--script",
        "perg-default",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        base_url = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        body = {"model": "x", "messages": answer_call(PREF)}
        async with (
            aiohttp.ClientSession() as http,
            http.post(base_url + "/chat/completions", json=body) as response,
        ):
            data = await response.json()
        expected = f"The answer is {answer_letter(KEY, 4, None, True)}."
        assert data["choices"][0]["message"]["content"] == expected
    finally:
        process.terminate()
        assert await process.wait() == 0
