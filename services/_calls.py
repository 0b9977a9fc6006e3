"""Model calls shared by the generator, aligner and judge: one call, and a structured rewrite.

A structured rewrite (self-critic pass 2, Pref-Aligner stage 2) asks for a JSON object and
reads its ``response`` field the protocol's way (``Protocol.read_rewrite``). When it cannot be
read, the protocol decides: ``paper`` keeps the earlier text as published and records the
fallback; ``strict`` asks again (sampling, so the answer can differ) up to ``parse_retries``
times, then records a parse failure.

The model under test is decoded with the run's decoding profile (its per-stage limits, its
thinking switch) in the run's layout (``inst``: one raw ``[INST]`` prompt on the completions
endpoint); the judge and extractor endpoints always greedily, temperature 0 and seed 42, as
the paper's gpt-4o-mini calls (pref_eval_utils.py, mcq_extractor_utils.py).

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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TypeVar

from perg.client import ClientPool, Completion, Endpoint, ModelClient, ModelError
from perg.config import Settings
from perg.hosts import HostNotAllowed, ModelHosts
from perg.protocol import (
    JUDGE_SEED,
    STRICT_RETRY_TEMPERATURE,
    ChatMessage,
    PromptKind,
    Protocol,
    load_protocol,
    split_thinking,
)
from schemas import CallRecord, Record, RunContext, TopicSpec

from ._cancels import CancelledRuns
from ._runtime import PermanentError, Publish, RunCancelled, Worker, WorkerOptions

log = logging.getLogger("perg.services")

JUDGE_SIDE_STAGES = frozenset({"judge", "extraction", "extraction_lora"})
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
    """Calls the endpoints of one run with its protocol and records every call; once the run
    is cancelled (``cancelled(run_id)``), every call raises :class:`RunCancelled` instead, also
    one that was waiting for a free slot of its endpoint (checked again right before it is
    sent)."""

    pool: ClientPool
    context: RunContext
    protocol: Protocol
    cancelled: Callable[[str], bool] = _never_cancelled

    def _check_cancelled(self, stage: str) -> None:
        if self.cancelled(self.context.run_id):
            raise RunCancelled(f"run {self.context.run_id} cancelled before its {stage} call")

    def max_tokens(self, kind: PromptKind, *, under_test: bool) -> int | None:
        """The max_tokens of a prompt kind: the decoding profile's own stage limit or the
        protocol's, then the profile's cap; the judge side never takes the profile's lifted
        limits (they are the tested model's)."""
        decoding = self.context.decoding
        limit = self.protocol.max_tokens(kind)
        if not under_test:
            return dataclasses.replace(decoding, uncapped=False).max_tokens(limit)
        stages = decoding.stage_tokens
        if stages is not None and kind in ("answer", "critic", "aligner"):
            limit = getattr(stages, kind)
        return decoding.max_tokens(limit)

    async def call(
        self,
        endpoint: Endpoint,
        messages: Sequence[ChatMessage],
        *,
        stage: str,
        kind: PromptKind,
        json_schema: Mapping[str, object] | None = None,
        attempt: int = 0,
    ) -> tuple[Completion, CallRecord]:
        """One call; the model under test's reply comes without its thinking (kept in
        ``Completion.reasoning``) and, in the ``inst`` layout, as the protocol reads a raw
        completion."""
        self._check_cancelled(stage)
        decoding = self.context.decoding
        under_test = stage not in JUDGE_SIDE_STAGES  # the judge's and extractor's: greedy
        if attempt:
            temperature = decoding.retry_temperature or STRICT_RETRY_TEMPERATURE
        else:
            temperature = decoding.temperature if under_test else 0.0
        if under_test:
            seed = None if decoding.seed is None else decoding.seed + attempt
        else:
            seed = JUDGE_SEED + attempt
        max_tokens = self.max_tokens(kind, under_test=under_test)
        top_p = decoding.top_p if under_test else None
        client = client_for(self.pool, endpoint)
        if under_test and self.context.layout == "inst":
            prompt = self.protocol.raw_prompt(list(messages), kind)
            with _permanent_client_errors(stage):
                completion = await client.complete(
                    prompt, max_tokens=max_tokens, temperature=temperature, seed=seed, top_p=top_p
                )
            completion = dataclasses.replace(
                completion, text=self.protocol.raw_reply(prompt, completion.text)
            )
            return completion, self._record(stage, completion)
        thinking = decoding.thinking if under_test else None
        switch = None
        if thinking is not None:  # Pref-Aligner stage 2 never thinks (aligner.py:104)
            switch = {"enable_thinking": thinking and kind != "aligner"}
        with _permanent_client_errors(stage):
            completion = await client.chat(
                [{"role": m["role"], "content": m["content"]} for m in messages],
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                json_schema=json_schema,
                top_p=top_p,
                chat_template_kwargs=switch,
                before_send=lambda: self._check_cancelled(stage),
            )
        if thinking is not None:
            answer, thought = split_thinking(completion.text)
            completion = dataclasses.replace(
                completion, text=answer, reasoning=completion.reasoning or thought
            )
        return completion, self._record(stage, completion)

    async def complete(
        self, endpoint: Endpoint, prompt: str, *, stage: str, max_tokens: int
    ) -> tuple[Completion, CallRecord]:
        """A greedy raw completion (the LoRA extractor's one token)."""
        self._check_cancelled(stage)
        client = client_for(self.pool, endpoint)
        with _permanent_client_errors(stage):
            completion = await client.complete(
                prompt,
                max_tokens=max_tokens,
                temperature=0.0,
                seed=JUDGE_SEED,
                before_send=lambda: self._check_cancelled(stage),
            )
        return completion, self._record(stage, completion)

    def _record(self, stage: str, completion: Completion) -> CallRecord:
        """The call's record, also logged (benchmarks/demo_profile.py reads these lines)."""
        log.info(
            "stage=%s run=%s call: tokens_in=%s tokens_out=%s latency=%.2fs attempts=%d finish=%s",
            stage,
            self.context.run_id,
            completion.tokens_in,
            completion.tokens_out,
            completion.latency_s,
            completion.attempts,
            completion.finish_reason,
        )
        return CallRecord(
            stage=stage,
            latency_s=completion.latency_s,
            attempts=completion.attempts,
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
            finish_reason=completion.finish_reason,
        )


@contextmanager
def _permanent_client_errors(stage: str) -> Iterator[None]:
    """A redirect (not followed), or a 4xx reply other than 408/409/429 (the request itself
    is wrong): permanent."""
    try:
        yield
    except ModelError as exc:
        status = exc.status
        if status is not None and 300 <= status < 400:
            raise PermanentError(f"stage {stage}: {exc}") from exc
        if status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX:
            raise RejectedCall(f"stage {stage}: {exc}", status) from exc
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
    async def watching_cancels(_: Worker) -> AsyncIterator[None]:
        async with cancelled.watching():
            yield

    worker = Worker(
        name, settings, options, (source,), in_flight=in_flight, lifespan=watching_cancels
    )
    models = pool or ClientPool(metrics=worker.metrics)

    async def handle(message: M) -> None:
        context: RunContext = message.context  # type: ignore[attr-defined]
        if context.run_id in cancelled:
            log.debug("stage=%s run=%s cancelled: finished without a model call",
                      name, context.run_id)  # fmt: skip
            return
        check_hosts(settings.model_hosts, context)
        protocol = protocol_for(context.protocol, context.protocol_sha256, settings.data_dir)
        caller = ModelCaller(models, context, protocol, cancelled.is_cancelled)
        await orchestrate(message, caller, protocol, worker.publish)

    worker.serve(record, handle)
    return worker


@dataclass(frozen=True)
class Rewrite:
    response: str | None
    calls: list[CallRecord]
    parse_fallback: bool
    parse_failure: bool
    read: str  # perg.protocol.RewriteReading.how of the last reply
    thinking: str | None


async def structured_rewrite(
    caller: ModelCaller,
    messages: Sequence[ChatMessage],
    *,
    stage: str,
    kind: PromptKind,
    schema: Mapping[str, object],
    earlier_text: str,
    log_key: object,
) -> Rewrite:
    """Ask the run's model for a JSON rewrite and read its ``response`` field."""
    protocol = caller.protocol
    calls: list[CallRecord] = []
    json_schema = schema if protocol.structured_output else None
    reading, thinking = None, None
    for attempt in range(protocol.parse_retries + 1):
        completion, record = await caller.call(
            caller.context.model,
            messages,
            stage=stage,
            kind=kind,
            json_schema=json_schema,
            attempt=attempt,
        )
        calls.append(record)
        reading, thinking = protocol.read_rewrite(completion.text), completion.reasoning
        if reading.response is not None:
            return Rewrite(reading.response, calls, False, False, reading.how, thinking)
        log.warning(
            "stage=%s %s: unreadable JSON (%s, attempt %d)", stage, log_key, reading.how,
            attempt + 1,
        )  # fmt: skip
    how = reading.how if reading is not None else "unreadable"
    if protocol.strict:
        return Rewrite(None, calls, False, True, how, thinking)
    return Rewrite(earlier_text, calls, True, False, how, thinking)
