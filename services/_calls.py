"""Model calls shared by the generator, aligner and judge: one call, and a structured rewrite.

A structured rewrite (self-critic pass 2, Pref-Aligner stage 2) asks for a JSON object and
reads its ``response`` field the protocol's way (``Protocol.read_rewrite``). When it cannot be
read, the protocol decides: ``paper`` keeps the earlier text as published and records the
fallback; ``strict`` asks again (sampling, so the answer can differ) up to ``parse_retries``
times, then records a parse failure.

The model under test is decoded with the run's decoding profile; the judge and extractor
endpoints always greedily (temperature 0, the run's seed), as the paper's gpt-4o-mini calls.

Failures: a client that cannot be set up for an endpoint (its token variable unset or
refused: nothing was sent) and a 4xx reply other than 408/409/429 (the request itself is
wrong) are :class:`PermanentError`, dead-lettered without retries; everything else (5xx, 429,
timeouts, resets, after the client's own retries) is retried by the runtime.
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
from perg.protocol import STRICT_RETRY_TEMPERATURE, ChatMessage, Protocol, load_protocol
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


def _never_cancelled(run_id: str) -> bool:
    return False


@dataclass(frozen=True)
class ModelCaller:
    """Calls the endpoints of one run and records every call; once the run is cancelled
    (``cancelled(run_id)``), every call raises :class:`RunCancelled` instead, also one that
    was waiting for a free slot of its endpoint (checked again right before it is sent)."""

    pool: ClientPool
    context: RunContext
    cancelled: Callable[[str], bool] = _never_cancelled

    def _check_cancelled(self, stage: str) -> None:
        if self.cancelled(self.context.run_id):
            raise RunCancelled(f"run {self.context.run_id} cancelled before its {stage} call")

    async def call(
        self,
        endpoint: Endpoint,
        messages: Sequence[ChatMessage],
        *,
        stage: str,
        max_tokens: int | None,
        json_schema: Mapping[str, object] | None = None,
        attempt: int = 0,
    ) -> tuple[Completion, CallRecord]:
        self._check_cancelled(stage)
        decoding = self.context.decoding
        under_test = stage not in JUDGE_SIDE_STAGES  # the judge's and extractor's: greedy
        if attempt:
            temperature = decoding.retry_temperature or STRICT_RETRY_TEMPERATURE
        else:
            temperature = decoding.temperature if under_test else 0.0
        if not under_test:  # the profile's lifted limits are the tested model's, not the judge's
            decoding = dataclasses.replace(decoding, uncapped=False)
        client = client_for(self.pool, endpoint)
        with _permanent_client_errors(stage):
            completion = await client.chat(
                [{"role": m["role"], "content": m["content"]} for m in messages],
                max_tokens=decoding.max_tokens(max_tokens),
                temperature=temperature,
                seed=None if decoding.seed is None else decoding.seed + attempt,
                json_schema=json_schema,
                top_p=decoding.top_p if under_test else None,
                before_send=lambda: self._check_cancelled(stage),
            )
        return completion, _record(stage, completion)

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
                seed=self.context.decoding.seed,
                before_send=lambda: self._check_cancelled(stage),
            )
        return completion, _record(stage, completion)


@contextmanager
def _permanent_client_errors(stage: str) -> Iterator[None]:
    """A 4xx reply other than 408/409/429 means the request itself is wrong: permanent."""
    try:
        yield
    except ModelError as exc:
        status = exc.status
        if status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX:
            raise PermanentError(f"stage {stage}: {exc}") from exc
        raise


def _record(stage: str, completion: Completion) -> CallRecord:
    return CallRecord(
        stage=stage,
        latency_s=completion.latency_s,
        attempts=completion.attempts,
        tokens_in=completion.tokens_in,
        tokens_out=completion.tokens_out,
        finish_reason=completion.finish_reason,
    )


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
    protocol, a model caller over ``pool`` (one client per endpoint for the whole process)
    and the worker's publisher. A message of a cancelled run is finished without a model
    call (services/_cancels.py)."""
    models = pool or ClientPool()
    cancelled = CancelledRuns(settings, name)

    @asynccontextmanager
    async def watching_cancels(_: Worker) -> AsyncIterator[None]:
        async with cancelled.watching():
            yield

    worker = Worker(
        name, settings, options, (source,), in_flight=in_flight, lifespan=watching_cancels
    )

    async def handle(message: M) -> None:
        context: RunContext = message.context  # type: ignore[attr-defined]
        if context.run_id in cancelled:
            log.debug("stage=%s run=%s cancelled: finished without a model call",
                      name, context.run_id)  # fmt: skip
            return
        protocol = protocol_for(context.protocol, context.protocol_sha256, settings.data_dir)
        caller = ModelCaller(models, context, cancelled.is_cancelled)
        await orchestrate(message, caller, protocol, worker.publish)

    worker.serve(record, handle)
    return worker


@dataclass(frozen=True)
class Rewrite:
    response: str | None
    calls: list[CallRecord]
    parse_fallback: bool
    parse_failure: bool


async def structured_rewrite(
    caller: ModelCaller,
    protocol: Protocol,
    messages: Sequence[ChatMessage],
    *,
    stage: str,
    max_tokens: int | None,
    schema: Mapping[str, object],
    earlier_text: str,
    log_key: object,
) -> Rewrite:
    """Ask the run's model for a JSON rewrite and read its ``response`` field."""
    calls: list[CallRecord] = []
    json_schema = schema if protocol.structured_output else None
    for attempt in range(protocol.parse_retries + 1):
        completion, record = await caller.call(
            caller.context.model,
            messages,
            stage=stage,
            max_tokens=max_tokens,
            json_schema=json_schema,
            attempt=attempt,
        )
        calls.append(record)
        parsed = protocol.read_rewrite(completion.text, schema)
        if parsed is not None:
            return Rewrite(parsed, calls, parse_fallback=False, parse_failure=False)
        log.warning("stage=%s %s: unparseable JSON (attempt %d)", stage, log_key, attempt + 1)
    if protocol.strict:
        return Rewrite(None, calls, parse_fallback=False, parse_failure=True)
    return Rewrite(earlier_text, calls, parse_fallback=True, parse_failure=False)
