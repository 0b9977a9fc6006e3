"""Judge: reads every generation on the run's judge endpoint.

Consumes ``generations``; extracts the chosen option (deterministic parser first, then an LLM
call constrained to the item's letters), rates how well the preference was followed (Likert
1-5; not asked in the irrelevant setting, where AFR is undefined, nor for the baseline), and
publishes the ``Verdict`` to ``verdicts``.
"""

from __future__ import annotations

import logging

import faust

from perg.client import ClientPool
from perg.extraction import ExtractionPath, choice_schema, extract_choice, parse_llm_choice
from perg.judging import RATING_SCHEMA, JudgeOutcome, judge_outcome, parse_rating
from perg.protocol import Protocol
from schemas import BASELINE_METHOD, CallRecord, Generation, Verdict, partition_key
from schemas.topics import GENERATIONS, VERDICTS

from ._calls import ModelCaller, protocol_for
from ._runtime import BatchAgent, Service

log = logging.getLogger("perg.services.judge")

service = Service("judge")
pool = ClientPool()


async def extract(
    caller: ModelCaller, protocol: Protocol, generation: Generation, calls: list[CallRecord]
) -> tuple[str | None, ExtractionPath]:
    item, response = generation.item, generation.response
    if not response:
        return None, "unresolved"
    letter = extract_choice(response, item.options)
    if letter is not None:
        return letter, "parsed"
    completion, call = await caller.call(
        caller.context.judge,
        protocol.extraction_messages(item, response),
        stage="extraction",
        max_tokens=protocol.max_tokens("extraction"),
        json_schema=choice_schema(item.letters),
    )
    calls.append(call)
    letter = parse_llm_choice(completion.text, item.letters)
    return (letter, "llm") if letter is not None else (None, "unresolved")


async def rate(
    caller: ModelCaller, protocol: Protocol, generation: Generation, calls: list[CallRecord]
) -> tuple[int | None, JudgeOutcome | None, str | None]:
    if generation.method == BASELINE_METHOD:
        return None, None, None
    if generation.setting == "irrelevant":
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
            json_schema=RATING_SCHEMA if caller.context.judge.constrain_rating else None,
        )
        calls.append(call)
        raw = completion.text
        rating = parse_rating(raw)
        if rating is not None:
            return rating, judge_outcome(rating, protocol.judge_threshold), raw
    return None, judge_outcome(None, protocol.judge_threshold), raw


async def judge(generation: Generation) -> None:
    ctx, item = generation.context, generation.item
    protocol = protocol_for(ctx.protocol, ctx.protocol_sha256, service.settings.data_dir)
    caller = ModelCaller(pool, ctx)
    calls: list[CallRecord] = []
    answer, path = await extract(caller, protocol, generation, calls)
    rating, outcome, raw = await rate(caller, protocol, generation, calls)
    log.info(
        "stage=judge run=%s row=%d setting=%s method=%s answer=%s (%s) rating=%s",
        ctx.run_id, item.row_id, generation.setting, generation.method, answer, path, rating,
    )  # fmt: skip
    verdict = Verdict(generation, answer, path, rating, outcome, raw, calls)
    await service.send(VERDICTS, partition_key(ctx.run_id, item.row_id), verdict)


agent = BatchAgent(service, Generation, judge, max_concurrency=32)


@service.app.agent(service.topic(GENERATIONS), concurrency=1)
async def judge_agent(stream: faust.StreamT[bytes]) -> None:
    await agent.consume(stream)
