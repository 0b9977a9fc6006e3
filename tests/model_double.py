"""TEST DOUBLE: a scripted OpenAI-compatible model server. Not a model; answers are rules.

``ScriptedModelServer`` is a real aiohttp server on 127.0.0.1 (port 0 picks a free port) serving
``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models`` and ``GET /health``.
A raw completion prompt ``[INST] <text> [/INST] `` (the ``inst`` layout) is scripted as one user
message holding <text> (``inst_messages``); any other prompt as one user message holding it
all. Each chat reply comes from a
pluggable script ``script(messages) -> str | ScriptedReply``; a ScriptedReply can also force an
error status (e.g. 429, 503) for the first ``times`` calls of an identical message list, a
finish_reason and a delay. Usage counts are whitespace-separated words. Every request body is kept
in ``server.requests``. Use it in-process (``async with ScriptedModelServer(script) as server:``,
then ``Endpoint(server.base_url, ...)``) or as a process::

    python tests/model_double.py --port 0 [--script perg-default] [--answers pergdata.csv]

which prints its base URL (``http://127.0.0.1:PORT/v1``) on one stdout line once listening and
serves until SIGTERM/SIGINT. Scripts: ``perg-default`` (below) and ``ok`` (always "ok").

Two server-wide behaviours, for the chaos suite and the pipeline benchmark (``ServerShape``):

* capacity: ``--slots K --service-s T`` serves at most K calls at once, each holding its slot T
  seconds (a GPU server's shape: capacity K/T calls/s); callers beyond K queue.
* faults: ``--fault-percent P --faults 503,429,reset,hang --hang-s S`` answers P% of calls
  (drawn with ``--fault-seed``) with one of the listed faults instead of the script's reply:
  an HTTP 503 or 429 with ``Retry-After: 1``, a connection closed without a reply, or a reply
  that comes only after S seconds. Faults never change what a successful call answers.

``GET /stats`` reports calls received (``received``: counted on arrival, before any queueing
or fault), calls served (``calls``), faults injected by kind, the slot-seconds busy, and the
most chat calls open at once (``peak_open``: arrived, not yet answered, queued ones included).

Decision rules of ``perg_script`` (pure functions of the messages; all hashes are sha256 of UTF-8
text read as a big-endian integer, see ``stable_hash``):

1. ``call_kind(messages)``, first match wins:
   "judge" if a system message contains "Likert scale"; "aligner" if the last user message starts
   with "You are a preference aligner agent"; "critic" if it starts with "Follow the instructions
   below to review"; "paper_extract" if a system message contains "map the language model
   response" (the paper's LLM extractor); "extract" if any message contains both "JSON" and
   ``"answer"``; "answer" if
   any message contains "Which of the options best answers the question"; else "other".
2. The question of a call is parsed from the LAST USER message (never the system message, which
   holds ICL examples): the first text after "Question : " up to "\\nOptions: \\n", followed by
   the option lines "A. text" (``parse_question``); its key is
   ``question_key(question, options)`` = question + "\\n" + the options joined by "\\n".
3. "answer": reply ``"The answer is X."`` with X = ``answer_letter(key, n_options, gold,
   preferred)``, where preferred = a system message contains "Here is the user preference" or
   "Here are the user preferences", and gold = the answer key's letter for the key (from
   ``--answers``/``load_answer_key``; None without one). With h = stable_hash(key + "|pref" or
   "|nopref"): if gold is known, X = gold unless h % 100 < WRONG_PERCENT (20), in which case X is
   the (h // 100) % (n - 1)-th of the other letters in order; if gold is unknown, X = the
   (h % n)-th letter.
   A ``Variant`` (``--pref-wrong-percent``, ``--salt``) changes only the preferred answers: its
   percent replaces WRONG_PERCENT and h hashes key + "|pref" + salt.
4. "aligner" / "critic": X = answer_letter(key, n, gold, preferred=True) for the question embedded
   in the user message. If stable_hash(kind + "|" + key) % 100 < INVALID_JSON_PERCENT (10) the
   reply is the bare, non-JSON text "The answer is X." (exercises fallbacks); otherwise aligner
   replies ``{"response": "The answer is X.", "thoughts": "kept the answer"}`` and critic replies
   ``{"critic": "ok", "response": "The answer is X."}``. An answer, aligner or critic call whose
   last user message holds no question is answered "ok".
5. "judge": ``<explanation>ok</explanation>\\n<answer>N</answer>`` with N = ``judge_rating`` =
   1 + stable_hash(the judge system message) % 5.
6. "extract": ``{"answer": "X"}`` with X the last "The answer is X." letter found in the last
   user message (``extract_letter``), else ``{"answer": null}``. "paper_extract": the same letter
   as a Python dict, ``{'answer': 'X'}`` (what gpt-4o-mini replied to the paper's prompt), else
   ``{'answer': None}``.
7. "other": "ok".
8. A chat call with ``chat_template_kwargs: {"enable_thinking": true}`` (Qwen3's switch) gets
   ``THINKING`` (a ``<think>`` block) before the scripted reply.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import csv
import dataclasses
import hashlib
import random
import re
import signal
import string
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import orjson
from aiohttp import web


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    """A scripted answer; with ``status`` != 200 the first ``times`` calls (None: all) fail."""

    text: str = ""
    finish_reason: str = "stop"
    delay_s: float = 0.0
    status: int = 200
    times: int | None = None


@dataclass(frozen=True, slots=True)
class ServerShape:
    """Capacity (``slots`` at once, ``service_s`` each; 0 slots: unlimited) and injected faults
    (``fault_percent`` of calls, kinds from ``faults``) of a ScriptedModelServer."""

    slots: int = 0
    service_s: float = 0.0
    fault_percent: float = 0.0
    faults: tuple[str, ...] = ("503", "429", "reset", "hang")
    hang_s: float = 30.0
    fault_seed: int = 0


FAULT_KINDS = ("503", "429", "reset", "hang")

Messages = list[dict[str, Any]]
Script = Callable[[Messages], "str | ScriptedReply"]

LETTERS = string.ascii_uppercase
WRONG_PERCENT = 20
INVALID_JSON_PERCENT = 10
# what a chat call with chat_template_kwargs {"enable_thinking": true} thinks before replying
THINKING = "<think>\nscripted thinking\n</think>\n\n"
CallKind = Literal["judge", "aligner", "critic", "paper_extract", "extract", "answer", "other"]

_QUESTION = re.compile(r"Question : (.*?)\nOptions: \n((?:[A-Z]\. [^\n]*\n?)*)", re.DOTALL)
_ANSWER = re.compile(r"The answer is ([A-Z])\.")
_ERRORS = {429: "Model is overloaded", 503: "Service unavailable"}


# -- decision rules of perg_script (pure) ---------------------------------------------------------


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")


def _texts(messages: Messages, role: str | None = None) -> list[str]:
    return [str(m.get("content", "")) for m in messages if role is None or m.get("role") == role]


def call_kind(messages: Messages) -> CallKind:
    users = _texts(messages, "user")
    last_user = users[-1] if users else ""
    if any("Likert scale" in text for text in _texts(messages, "system")):
        return "judge"
    if last_user.startswith("You are a preference aligner agent"):
        return "aligner"
    if last_user.startswith("Follow the instructions below to review"):
        return "critic"
    if any("map the language model response" in text for text in _texts(messages, "system")):
        return "paper_extract"
    if any("JSON" in text and '"answer"' in text for text in _texts(messages)):
        return "extract"
    if any("Which of the options best answers the question" in t for t in _texts(messages)):
        return "answer"
    return "other"


def parse_question(text: str) -> tuple[str, list[str]] | None:
    match = _QUESTION.search(text)
    if match is None:
        return None
    options = [line[3:] for line in match.group(2).splitlines()]
    return match.group(1), options


def question_key(question: str, options: list[str]) -> str:
    return "\n".join([question, *options])


@dataclass(frozen=True)
class Variant:
    """How a scripted model differs from the default one, for preference-conditioned answers
    only (the no-preference baseline, hence Q*, stays the same): a higher ``pref_wrong_percent``
    makes a known amount of breakage; another ``salt`` reshuffles which rows are wrong (noise)."""

    pref_wrong_percent: int = WRONG_PERCENT
    salt: str = ""


DEFAULT_VARIANT = Variant()


def answer_letter(
    key: str, n_options: int, gold: str | None, preferred: bool, variant: Variant = DEFAULT_VARIANT
) -> str:
    h = stable_hash(key + ("|pref" + variant.salt if preferred else "|nopref"))
    wrong_percent = variant.pref_wrong_percent if preferred else WRONG_PERCENT
    letters = LETTERS[:n_options]
    if gold is None or gold not in letters:
        return letters[h % n_options]
    if h % 100 >= wrong_percent or n_options < 2:
        return gold
    others = [letter for letter in letters if letter != gold]
    return others[(h // 100) % len(others)]


def judge_rating(system_message: str) -> int:
    return 1 + stable_hash(system_message) % 5


def extract_letter(text: str) -> str | None:
    found = _ANSWER.findall(text)
    return found[-1] if found else None


def load_answer_key(path: str | Path) -> dict[str, str]:
    """question_key -> gold letter, from a pergdata.csv (options as a Python list literal)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return {
            question_key(row["question"], list(ast.literal_eval(row["options"]))): row[
                "gold_option"
            ]
            for row in csv.DictReader(fh)
        }


def make_perg_script(
    answer_key: Mapping[str, str] | None = None, variant: Variant = DEFAULT_VARIANT
) -> Callable[[Messages], str]:
    """The PERG script (rules in the module docstring), optionally knowing the gold letters."""
    key_of = answer_key or {}

    def script(messages: Messages) -> str:
        kind = call_kind(messages)
        users = _texts(messages, "user")
        last_user = users[-1] if users else ""
        if kind == "judge":
            rating = judge_rating(next(t for t in _texts(messages, "system") if "Likert" in t))
            return f"<explanation>ok</explanation>\n<answer>{rating}</answer>"
        if kind == "extract":
            return orjson.dumps({"answer": extract_letter(last_user)}).decode()
        if kind == "paper_extract":
            return repr({"answer": extract_letter(last_user)})
        if kind == "other":
            return "ok"
        parsed = parse_question(last_user)
        if parsed is None:
            return "ok"
        key = question_key(*parsed)
        n_options = len(parsed[1])
        if kind == "answer":
            preferred = any(
                "Here is the user preference" in t or "Here are the user preferences" in t
                for t in _texts(messages, "system")
            )
            letter = answer_letter(key, n_options, key_of.get(key), preferred, variant)
            return f"The answer is {letter}."
        answer = f"The answer is {answer_letter(key, n_options, key_of.get(key), True, variant)}."
        if stable_hash(f"{kind}|{key}") % 100 < INVALID_JSON_PERCENT:
            return answer
        if kind == "aligner":
            return orjson.dumps({"response": answer, "thoughts": "kept the answer"}).decode()
        return orjson.dumps({"critic": "ok", "response": answer}).decode()

    return script


perg_script = make_perg_script()


# Where the user turn of an ``[INST]`` prompt starts (after the system text and a newline).
_INST_USER_TURNS = (
    "Follow the instructions below to review",
    "You are a preference aligner agent",
    "Which of the options best answers the question",
)


def inst_messages(prompt: str) -> Messages:
    """A raw completion prompt as the script sees it: the text between ``[INST] `` and the
    last `` [/INST]``, split into a system and a user message where a user turn of
    ``_INST_USER_TURNS`` starts on a line of its own (the first marker found, at its last
    such line), unless the text starts with one; else all of it as one user message (the
    whole prompt when it is no ``[INST]`` prompt)."""
    body = prompt.strip()
    if body.startswith("[INST]") and body.endswith("[/INST]"):
        body = body[len("[INST]") : -len("[/INST]")].strip()
    for marker in () if body.startswith(_INST_USER_TURNS) else _INST_USER_TURNS:
        at = body.rfind("\n" + marker)
        if at < 0:
            continue
        return [
            {"role": "system", "content": body[:at]},
            {"role": "user", "content": body[at + 1 :]},
        ]
    return [{"role": "user", "content": body}]


def ok_script(messages: Messages) -> str:
    return "ok"


# -- the server ---------------------------------------------------------------------------------


class ScriptedModelServer:
    """A real HTTP server answering chat completions from ``script``; see the module docstring."""

    def __init__(
        self,
        script: Script,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "scripted",
        shape: ServerShape = ServerShape(),
        keep_requests: bool = True,
    ) -> None:
        self.script = script
        self.model = model
        self.shape = shape
        self.keep_requests = keep_requests
        self.requests: list[dict[str, Any]] = []
        self.stats: Counter[str] = Counter()
        self.busy_s = 0.0
        self._slots = asyncio.Semaphore(shape.slots) if shape.slots > 0 else None
        self._faults = random.Random(shape.fault_seed)
        self._host, self._port = host, port
        self._calls: Counter[bytes] = Counter()
        self._open = 0
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/stats", self._stats)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _chat(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            messages = body["messages"]
            if not isinstance(messages, list):
                raise TypeError("messages must be a list")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return _error(400, f"Input validation error: {exc}")
        self.stats["received"] += 1
        self._open += 1  # what the server sees at once: queued, faulting or served
        self.stats["peak_open"] = max(self.stats["peak_open"], self._open)
        try:
            return await self._serve(request, body, messages)
        finally:
            self._open -= 1

    async def _serve(
        self, request: web.Request, body: dict[str, Any], messages: Messages
    ) -> web.Response:
        """A call's fault or slot (``ServerShape``), then its scripted reply."""
        shape = self.shape
        if shape.fault_percent and self._faults.random() * 100 < shape.fault_percent:
            fault = self._faults.choice(shape.faults)
            self.stats[f"fault_{fault}"] += 1
            if fault in ("503", "429"):
                return _error(int(fault), _ERRORS[int(fault)], retry_after="1")
            if fault == "reset":
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=500)
            await asyncio.sleep(shape.hang_s)  # "hang": the reply comes late (or never)
        if self._slots is not None:
            async with self._slots:
                started = time.perf_counter()
                await asyncio.sleep(shape.service_s)
                self.busy_s += time.perf_counter() - started
        return await self._reply(body, messages)

    async def _completion(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            prompt = body["prompt"]
            if not isinstance(prompt, str):
                raise TypeError("prompt must be a string")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return _error(400, f"Input validation error: {exc}")
        return await self._reply(body, inst_messages(prompt), completion=True)

    async def _reply(
        self, body: dict[str, Any], messages: Messages, *, completion: bool = False
    ) -> web.Response:
        self.stats["calls"] += 1
        if self.keep_requests:
            self.requests.append(body)
        reply = self.script(messages)
        if isinstance(reply, str):
            reply = ScriptedReply(reply)
        switch = body.get("chat_template_kwargs")
        if isinstance(switch, dict) and switch.get("enable_thinking") is True:
            reply = dataclasses.replace(reply, text=THINKING + reply.text)
        key = orjson.dumps(messages)
        call = self._calls[key]
        self._calls[key] += 1
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200 and (reply.times is None or call < reply.times):
            return _error(reply.status, _ERRORS.get(reply.status, "scripted error"))
        # usage: about four characters per token, as for English text
        prompt_tokens = len(key) // 4
        completion_tokens = max(1, len(reply.text) // 4)
        if completion:
            choice: dict[str, Any] = {"index": 0, "text": reply.text}
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": reply.text}}
        return web.Response(
            body=orjson.dumps(
                {
                    "id": f"chatcmpl-{len(self.requests)}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": self.model,
                    "choices": [{**choice, "finish_reason": reply.finish_reason}],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }
            ),
            content_type="application/json",
        )

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model"}]}
        )

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {**self.stats, "busy_slot_s": self.busy_s, "slots": self.shape.slots}
        )


def _error(status: int, message: str, retry_after: str | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": {"message": message, "code": status}}),
        content_type="application/json",
        headers={"Retry-After": retry_after} if retry_after else None,
    )


# -- as a process -------------------------------------------------------------------------------


async def _serve(script: Script, host: str, port: int, shape: ServerShape) -> None:
    async with ScriptedModelServer(
        script, host=host, port=port, shape=shape, keep_requests=False
    ) as server:
        print(server.base_url, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Scripted OpenAI-compatible model server (test double)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--script", choices=["perg-default", "ok"], default="perg-default")
    parser.add_argument("--answers", help="pergdata.csv giving perg-default the gold letters")
    parser.add_argument(
        "--pref-wrong-percent",
        type=int,
        default=WRONG_PERCENT,
        help="wrong preference-conditioned answers, percent (Variant)",
    )
    parser.add_argument("--salt", default="", help="reshuffle which rows are wrong (Variant)")
    parser.add_argument("--slots", type=int, default=0, help="calls served at once (0: no limit)")
    parser.add_argument("--service-s", type=float, default=0.0, help="seconds a call holds a slot")
    parser.add_argument("--fault-percent", type=float, default=0.0, help="calls given a fault")
    parser.add_argument("--faults", default=",".join(FAULT_KINDS), help="fault kinds to draw")
    parser.add_argument("--hang-s", type=float, default=30.0, help="delay of a 'hang' fault")
    parser.add_argument("--fault-seed", type=int, default=0)
    args = parser.parse_args(argv)
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    if not set(faults) <= set(FAULT_KINDS):
        parser.error(f"--faults: choose from {','.join(FAULT_KINDS)}")
    shape = ServerShape(
        args.slots, args.service_s, args.fault_percent, faults, args.hang_s, args.fault_seed
    )
    if args.script == "ok":
        script: Script = ok_script
    else:
        answer_key = load_answer_key(args.answers) if args.answers else None
        script = make_perg_script(answer_key, Variant(args.pref_wrong_percent, args.salt))
    asyncio.run(_serve(script, args.host, args.port, shape))


if __name__ == "__main__":
    main()
