"""Model calls shared by the generator, aligner and judge: one call, and a structured rewrite.

A structured rewrite (self-critic pass 2, Pref-Aligner stage 2) asks for a JSON object and
reads its ``response`` field the protocol's way (``Protocol.read_rewrite``). When it cannot be
read, the protocol decides: ``paper`` keeps the earlier text as published and records the
fallback; ``strict`` asks again (sampling, so the answer can differ) up to ``parse_retries``
times, then records a parse failure.

The model under test is decoded with the run's decoding profile; the judge and extractor
endpoints always greedily (temperature 0, the run's seed), as the paper's gpt-4o-mini calls.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from perg.client import ClientPool, Completion, Endpoint
from perg.protocol import STRICT_RETRY_TEMPERATURE, ChatMessage, Protocol, load_protocol
from schemas import CallRecord, RunContext

from ._runtime import PermanentError

log = logging.getLogger("perg.services")

JUDGE_SIDE_STAGES = frozenset({"judge", "extraction"})


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


@dataclass(frozen=True)
class ModelCaller:
    """Calls one endpoint of a run and records every call."""

    pool: ClientPool
    context: RunContext

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
        decoding = self.context.decoding
        under_test = stage not in JUDGE_SIDE_STAGES  # the judge's and extractor's: greedy
        if attempt:
            temperature = decoding.retry_temperature or STRICT_RETRY_TEMPERATURE
        else:
            temperature = decoding.temperature if under_test else 0.0
        if not under_test:  # the profile's lifted limits are the tested model's, not the judge's
            decoding = dataclasses.replace(decoding, uncapped=False)
        completion = await self.pool.get(endpoint).chat(
            [{"role": m["role"], "content": m["content"]} for m in messages],
            max_tokens=decoding.max_tokens(max_tokens),
            temperature=temperature,
            seed=None if decoding.seed is None else decoding.seed + attempt,
            json_schema=json_schema,
            top_p=decoding.top_p if under_test else None,
        )
        return completion, self._record(stage, completion)

    async def complete(
        self, endpoint: Endpoint, prompt: str, *, stage: str, max_tokens: int
    ) -> tuple[Completion, CallRecord]:
        """A greedy raw completion (the LoRA extractor's one token)."""
        completion = await self.pool.get(endpoint).complete(
            prompt, max_tokens=max_tokens, temperature=0.0, seed=self.context.decoding.seed
        )
        return completion, self._record(stage, completion)

    @staticmethod
    def _record(stage: str, completion: Completion) -> CallRecord:
        return CallRecord(
            stage=stage,
            latency_s=completion.latency_s,
            attempts=completion.attempts,
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
            finish_reason=completion.finish_reason,
        )


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
