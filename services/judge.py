"""Judge: reads every generation on the run's judge endpoint.

Consumes ``generations``; extracts the chosen option with the run's extractor
(perg.extraction: rules, llm or lora; the rules letter is recorded beside it), rates how well
the preference was followed (Likert 1-5, read the protocol's way; not asked where AFR is
undefined, nor for the baselines), and publishes the ``Verdict`` to ``verdicts``.
"""

from __future__ import annotations

import logging

import faust

from perg.client import ClientPool
from perg.extraction import Extraction, choice_schema, extract_answer
from perg.judging import JudgeOutcome, afr_defined, judge_outcome, read_rating
from perg.protocol import LORA_EXTRACTION_MAX_TOKENS, ChatMessage, Protocol
from schemas import (
    BASELINE_METHOD,
    BASELINE_REPEAT_METHOD,
    CallRecord,
    Generation,
    Verdict,
    partition_key,
)
from schemas.topics import GENERATIONS, VERDICTS

from ._calls import ModelCaller, protocol_for
from ._runtime import BatchAgent, PermanentError, Service

log = logging.getLogger("perg.services.judge")

service = Service("judge")
pool = ClientPool()


async def extract(
    caller: ModelCaller, protocol: Protocol, generation: Generation, calls: list[CallRecord]
) -> Extraction:
    ctx, item = caller.context, generation.item
    schema = choice_schema(item.letters) if protocol.strict else None

    async def chat(messages: list[ChatMessage]) -> str:
        completion, call = await caller.call(
            ctx.extractor_endpoint or ctx.judge,
            messages,
            stage="extraction",
            max_tokens=protocol.max_tokens("extraction"),
            json_schema=schema,
        )
        calls.append(call)
        return completion.text

    async def complete(prompt: str) -> str:
        if ctx.lora_endpoint is None:
            raise PermanentError("the run uses the lora extractor but names no lora endpoint")
        completion, call = await caller.complete(
            ctx.lora_endpoint, prompt, stage="extraction_lora",
            max_tokens=LORA_EXTRACTION_MAX_TOKENS,
        )  # fmt: skip
        calls.append(call)
        return completion.text

    return await extract_answer(
        ctx.extractor, protocol, item, generation.response, chat=chat, complete=complete
    )


async def rate(
    caller: ModelCaller, protocol: Protocol, generation: Generation, calls: list[CallRecord]
) -> tuple[int | None, JudgeOutcome | None, str | None]:
    if generation.method in (BASELINE_METHOD, BASELINE_REPEAT_METHOD):
        return None, None, None
    if not afr_defined(generation.setting):
        return None, "not_applicable", None
    if generation.response is None:  # strict parse failure: nothing to rate
        return None, "not_followed", None
    messages = protocol.judge_messages(
        generation.item, generation.baseline_response, generation.response
    )
    raw = ""
    for attempt in range(protocol.parse_retries + 1):
        completion, call = await caller.call(
            caller.context.judge,
            messages,
            stage="judge",
            max_tokens=protocol.max_tokens("judge"),
            attempt=attempt,
        )
        calls.append(call)
        raw = completion.text
        rating = read_rating(raw, paper=not protocol.strict)
        if rating is not None:
            outcome = judge_outcome(rating, protocol.judge_threshold, setting=generation.setting)
            return rating, outcome, raw
    return None, judge_outcome(None, protocol.judge_threshold, setting=generation.setting), raw


async def judge(generation: Generation) -> None:
    ctx, item = generation.context, generation.item
    protocol = protocol_for(ctx.protocol, ctx.protocol_sha256, service.settings.data_dir)
    caller = ModelCaller(pool, ctx)
    calls: list[CallRecord] = []
    extraction = await extract(caller, protocol, generation, calls)
    rating, outcome, raw = await rate(caller, protocol, generation, calls)
    log.info(
        "stage=judge run=%s row=%d setting=%s method=%s answer=%s (%s; rules %s) rating=%s",
        ctx.run_id, item.row_id, generation.setting, generation.method, extraction.answer,
        extraction.path, extraction.rules_answer, rating,
    )  # fmt: skip
    verdict = Verdict(
        generation, extraction.answer, extraction.path, rating, outcome, raw, calls,
        ctx.extractor, extraction.rules_answer,
    )  # fmt: skip
    await service.send(VERDICTS, partition_key(ctx.run_id, item.row_id), verdict)


agent = BatchAgent(service, Generation, judge, max_concurrency=32)


@service.app.agent(service.topic(GENERATIONS), concurrency=1)
async def judge_agent(stream: faust.StreamT[bytes]) -> None:
    await agent.consume(stream)
