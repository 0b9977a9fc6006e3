"""Model calls shared by the generator, aligner and judge: one call, and a structured rewrite.

A structured rewrite (self-critic pass 2, Pref-Aligner stage 2) asks for a JSON object and
reads its ``response`` field the protocol's way (``Protocol.read_rewrite``). When it cannot be
read, the protocol decides: ``paper`` keeps the earlier text as published and records the
fallback; ``strict`` asks again (sampling, so the answer can differ) up to ``parse_retries``
times, then records a parse failure.

Every call names its :class:`~perg.protocol.CallKind`, which decides its endpoint and how it
is decoded (perg.generation: the run's decoding profile for the model under test, greedy for
the judge and extractor); the model under test is called in the run's layout (``inst``: one
raw ``[INST]`` prompt on the completions endpoint).

Failures: a run naming a model host the worker may not call (``PERG_MODEL_HOSTS``, checked for
every endpoint of the run before any call: nothing is sent anywhere), a client that cannot be
set up for an endpoint (its token variable unset or refused: nothing was sent), a redirect
(never followed) and a 4xx reply other than 408/409/429 (the request itself is wrong; a
:class:`RejectedCall`) are :class:`PermanentError`, dead-lettered without retries; everything
else (5xx, 429, timeouts, resets, after the client's own retries) is retried by the runtime.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TypeVar

from perg.client import ClientPool, Completion, Endpoint, ModelClient, ModelError
from perg.config import Settings
from perg.generation import generation_config, under_test
from perg.hosts import HostNotAllowed, ModelHosts
from perg.protocol import (
    JUDGE_SEED,
    LORA_EXTRACTION_MAX_TOKENS,
    CallKind,
    ChatMessage,
    Protocol,
    load_protocol,
    split_thinking,
)
from schemas import CallRecord, Item, Record, RunContext, TopicSpec

from ._cancels import CancelledRuns
from ._runtime import PermanentError, Publish, RunCancelled, Worker, WorkerOptions

log = logging.getLogger("perg.services")

# What a call of each kind is recorded as (CallRecord.stage, stored with the row). The
# generator records its baseline calls as "baseline" / "baseline_repeat" (the label argument).
CALL_LABELS: dict[CallKind, str] = {
    CallKind.ANSWER: "answer",
    CallKind.CRITIQUE: "critique",
    CallKind.ALIGN: "aligned",
    CallKind.JUDGE: "judge",
    CallKind.EXTRACT: "extraction",
}
RETRYABLE_4XX = frozenset({408, 409, 429})


@cache
def protocol_for(name: str, sha256: str, data_dir: Path) -> Protocol:
    """The run's protocol, checked against the hash the run was submitted with."""
    try:
        protocol = load_protocol(name, data_dir)
    except (OSError, ValueError) as exc:
        raise PermanentError(f"protocol {name!r} cannot be loaded here: {exc}") from exc
    if protocol.sha256 != sha256:
        raise PermanentError(
            f"protocol {name!r} here has hash {protocol.sha256[:12]}, the run was submitted "
            f"with {sha256[:12]}: this worker's PERG_DATA_DIR ({data_dir}) differs"
        )
    return protocol


def client_for(pool: ClientPool, endpoint: Endpoint) -> ModelClient:
    """The pool's client of ``endpoint``; a configuration error is permanent."""
    try:
        return pool.get(endpoint)
    except Exception as exc:  # raised before any request: retrying cannot help
        raise PermanentError(
            f"model client for {endpoint.base_url} cannot be set up: {type(exc).__name__}: {exc}"
        ) from exc


class RejectedCall(PermanentError):
    """A 4xx reply other than 408/409/429: the request itself was refused (``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _never_cancelled(run_id: str) -> bool:
    return False


@dataclass(frozen=True)
class ModelCaller:
    """Calls the endpoints of one run with its protocol, each call decoded as its
    :class:`CallKind` says (perg.generation), and records every call; once the run is
    cancelled (``cancelled(run_id)``), every call raises :class:`RunCancelled` instead, also
    one that was waiting for a free slot of its endpoint (checked again right before it is
    sent)."""

    pool: ClientPool
    context: RunContext
    protocol: Protocol
    cancelled: Callable[[str], bool] = _never_cancelled
    service: str = "model-caller"
    """The service making the calls, for log lines."""

    def _check_cancelled(self, label: str) -> None:
        if self.cancelled(self.context.run_id):
            raise RunCancelled(f"run {self.context.run_id} cancelled before its {label} call")

    def endpoint(self, kind: CallKind) -> Endpoint:
        """The run's endpoint for a call of ``kind``: the model under test, the judge, or the
        LLM extractor's (default: the judge's)."""
        if kind is CallKind.EXTRACT:
            return self.context.extractor_endpoint or self.context.judge
        return self.context.model if under_test(kind) else self.context.judge

    async def call(
        self,
        kind: CallKind,
        item: Item,
        messages: Sequence[ChatMessage],
        *,
        label: str | None = None,
        attempt: int = 0,
    ) -> tuple[Completion, CallRecord]:
        """One call of ``kind`` about ``item``, recorded under ``label`` (default: the kind's
        :data:`CALL_LABELS`); the model under test's reply comes without its thinking (kept in
        ``Completion.reasoning``) and, in the ``inst`` layout, as the protocol reads a raw
        completion."""
        label = label or CALL_LABELS[kind]
        self._check_cancelled(label)
        config = generation_config(kind, self.protocol, self.context, item, attempt=attempt)
        client = client_for(self.pool, self.endpoint(kind))
        if under_test(kind) and self.context.layout == "inst":
            prompt = self.protocol.raw_prompt(list(messages), kind)
            with _permanent_client_errors(label):
                completion = await client.complete(
                    prompt,
                    max_tokens=config.max_tokens,
                    temperature=config.temperature,
                    seed=config.seed,
                    top_p=config.top_p,
                )
            completion = dataclasses.replace(
                completion, text=self.protocol.raw_reply(prompt, completion.text)
            )
            return completion, self._record(label, completion)
        switch = None if config.thinking is None else {"enable_thinking": config.thinking}
        with _permanent_client_errors(label):
            completion = await client.chat(
                [{"role": m["role"], "content": m["content"]} for m in messages],
                max_tokens=config.max_tokens,
                temperature=config.temperature,
                seed=config.seed,
                json_schema=config.constraint,
                top_p=config.top_p,
                chat_template_kwargs=switch,
                before_send=lambda: self._check_cancelled(label),
            )
        if config.thinking is not None:
            answer, thought = split_thinking(completion.text)
            completion = dataclasses.replace(
                completion, text=answer, reasoning=completion.reasoning or thought
            )
        return completion, self._record(label, completion)

    async def complete_lora(self, prompt: str) -> tuple[Completion, CallRecord]:
        """The LoRA extractor's greedy one-token raw completion (as published)."""
        endpoint = self.context.lora_endpoint
        if endpoint is None:
            raise PermanentError("the run uses the lora extractor but names no lora endpoint")
        label = "extraction_lora"
        self._check_cancelled(label)
        client = client_for(self.pool, endpoint)
        with _permanent_client_errors(label):
            completion = await client.complete(
                prompt,
                max_tokens=LORA_EXTRACTION_MAX_TOKENS,
                temperature=0.0,
                seed=JUDGE_SEED,
                before_send=lambda: self._check_cancelled(label),
            )
        return completion, self._record(label, completion)

    def _record(self, label: str, completion: Completion) -> CallRecord:
        """The call's record, also logged (benchmarks/demo_profile.py reads these lines)."""
        log.info(
            "service=%s run=%s call=%s tokens_in=%s tokens_out=%s latency=%.2fs attempts=%d "
            "finish=%s",
            self.service,
            self.context.run_id,
            label,
            completion.tokens_in,
            completion.tokens_out,
            completion.latency_s,
            completion.attempts,
            completion.finish_reason,
        )
        return CallRecord(
            stage=label,
            latency_s=completion.latency_s,
            attempts=completion.attempts,
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
            finish_reason=completion.finish_reason,
        )


@contextmanager
def _permanent_client_errors(label: str) -> Iterator[None]:
    """A redirect (not followed), or a 4xx reply other than 408/409/429 (the request itself
    is wrong): permanent."""
    try:
        yield
    except ModelError as exc:
        status = exc.status
        if status is not None and 300 <= status < 400:
            raise PermanentError(f"call {label}: {exc}") from exc
        if status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX:
            raise RejectedCall(f"call {label}: {exc}", status) from exc
        raise


def check_hosts(hosts: ModelHosts, context: RunContext) -> None:
    """Refuse a run naming any model host not on ``hosts``, before any of its calls."""
    endpoints = (context.model, context.judge, context.extractor_endpoint, context.lora_endpoint)
    for endpoint in endpoints:
        if endpoint is not None:
            try:
                hosts.check(endpoint.base_url)
            except HostNotAllowed as exc:
                raise PermanentError(f"run {context.run_id}: {exc}") from exc


M = TypeVar("M", bound=Record)
Orchestration = Callable[[M, "ModelCaller", Protocol, Publish], Awaitable[None]]


def model_worker(
    name: str,
    settings: Settings,
    options: WorkerOptions,
    source: TopicSpec,
    record: type[M],
    orchestrate: Orchestration[M],
    *,
    in_flight: int,
    pool: ClientPool | None = None,
) -> Worker:
    """A worker that runs ``orchestrate`` on each ``record`` of ``source`` with the run's
    protocol, a model caller over ``pool`` (one client per endpoint for the whole process,
    counted in the worker's metrics) and the worker's publisher, once every model host of the
    run is on ``settings.model_hosts``. A message of a cancelled run is finished without a
    model call (services/_cancels.py)."""
    cancelled = CancelledRuns(settings, name)

    @asynccontextmanager
    async def watching_cancels() -> AsyncIterator[None]:
        async with cancelled.watching():
            yield

    worker = Worker(
        name, settings, options, (source,), in_flight=in_flight, lifespan=watching_cancels
    )
    models = pool or ClientPool(
        tuning=options.client, metrics=worker.metrics, token_envs=settings.model_token_envs
    )

    async def handle(message: M) -> None:
        context: RunContext = message.context  # type: ignore[attr-defined]
        if context.run_id in cancelled:
            log.debug(
                "service=%s run=%s cancelled: finished without a model call", name, context.run_id
            )
            return
        check_hosts(settings.model_hosts, context)
        protocol = protocol_for(context.protocol, context.protocol_sha256, settings.data_dir)
        caller = ModelCaller(models, context, protocol, cancelled.is_cancelled, service=name)
        await orchestrate(message, caller, protocol, worker.publish)

    worker.serve(record, handle)
    return worker


@dataclass(frozen=True)
class Rewrite:
    """A structured rewrite's text (None: a strict parse failure), the calls it made, how
    the last reply was read (perg.protocol.RewriteReading.how) and the model's thinking."""

    response: str | None
    calls: list[CallRecord]
    read: str
    thinking: str | None
    parse_fallback: bool = False
    parse_failure: bool = False


async def structured_rewrite(
    caller: ModelCaller,
    kind: CallKind,
    item: Item,
    messages: Sequence[ChatMessage],
    *,
    earlier_text: str,
    log_key: object,
) -> Rewrite:
    """Ask the run's model for a JSON rewrite (``kind``: a critique or an alignment) and read
    its ``response`` field."""
    protocol = caller.protocol
    calls: list[CallRecord] = []
    reading, thinking = None, None
    for attempt in range(protocol.parse_retries + 1):
        completion, record = await caller.call(kind, item, messages, attempt=attempt)
        calls.append(record)
        reading, thinking = protocol.read_rewrite(completion.text), completion.reasoning
        if reading.response is not None:
            return Rewrite(
                response=reading.response, calls=calls, read=reading.how, thinking=thinking
            )
        log.warning(
            "service=%s %s: unreadable JSON (%s, attempt %d)",
            caller.service,
            log_key,
            reading.how,
            attempt + 1,
        )
    how = reading.how if reading is not None else "unreadable"
    if protocol.strict:
        return Rewrite(response=None, calls=calls, read=how, thinking=thinking, parse_failure=True)
    return Rewrite(
        response=earlier_text, calls=calls, read=how, thinking=thinking, parse_fallback=True
    )
