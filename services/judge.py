"""Judge: reads every generation on the run's judge endpoint.

Consumes ``generations``; :func:`judge_generation` extracts the chosen option with the run's
extractor (perg.extraction: rules, llm or lora; the rules letter is recorded beside it) and
rates how well the preference was followed (Likert, read the protocol's way; not asked where
AFR is undefined, nor for the baselines), both at once in one ``asyncio.TaskGroup``, and
publishes the ``Verdict`` to ``verdicts``.
"""

from __future__ import annotations

import asyncio
import logging

from perg.client import DEFAULT_MAX_IN_FLIGHT, ClientPool, ModelError
from perg.config import Settings
from perg.extraction import Extraction, ExtractorFailed, extract_answer
from perg.judging import JudgeOutcome, afr_defined, judge_outcome, read_rating
from perg.protocol import CallKind, ChatMessage, Protocol
from schemas import (
    BASELINE_METHOD,
    BASELINE_REPEAT_METHOD,
    CallRecord,
    Generation,
    Verdict,
    partition_key,
)
from schemas.topics import GENERATIONS, VERDICTS

from ._calls import ModelCaller, RejectedCall, model_worker
from ._runtime import Publish, Worker, WorkerOptions

log = logging.getLogger("perg.services.judge")

# Generations in progress per worker: four times the endpoint's default slots (one or two calls
# each, often none), so the slots stay full while some wait on a slow or hung call.
DEFAULT_IN_FLIGHT = 4 * DEFAULT_MAX_IN_FLIGHT


def is_content_filter(exc: RejectedCall) -> bool:
    """A content-filter refusal (OpenAI / Azure: HTTP 400 with code ``content_filter``)."""
    return exc.status == 400 and "content_filter" in str(exc).lower()


async def extract(
    caller: ModelCaller, protocol: Protocol, generation: Generation
) -> tuple[Extraction, list[CallRecord]]:
    """The option letter of the response, by the run's extractor, and the calls it made."""
    ctx, item = caller.context, generation.item
    calls: list[CallRecord] = []

    async def chat(messages: list[ChatMessage]) -> str:
        try:
            completion, call = await caller.call(CallKind.EXTRACT, item, messages)
        except RejectedCall as exc:  # a wrong answer, as published; not a dead letter
            log.warning(
                "service=judge run=%s row=%d: extraction refused: %s", ctx.run_id, item.row_id, exc
            )
            raise ExtractorFailed(str(exc), content_filter=is_content_filter(exc)) from exc
        except ModelError as exc:
            if exc.status != 200:  # unreachable or overloaded: the runtime retries the message
                raise
            log.warning("service=judge run=%s row=%d: extraction: %s", ctx.run_id, item.row_id, exc)
            raise ExtractorFailed(str(exc), content_filter=False) from exc
        calls.append(call)
        return completion.text

    async def complete(prompt: str) -> str:
        completion, call = await caller.complete_lora(prompt)
        calls.append(call)
        return completion.text

    extraction = await extract_answer(
        ctx.extractor, protocol, item, generation.response, chat=chat, complete=complete
    )
    return extraction, calls


async def rate(
    caller: ModelCaller, protocol: Protocol, generation: Generation
) -> tuple[int | None, JudgeOutcome | None, str | None, list[CallRecord]]:
    """The judge's Likert rating of how well the response follows the preference."""
    if generation.method in (BASELINE_METHOD, BASELINE_REPEAT_METHOD):
        return None, None, None, []
    if not afr_defined(generation.setting):
        return None, "not_applicable", None, []
    if generation.response is None:  # strict parse failure: nothing to rate
        return None, "not_followed", None, []
    messages = protocol.judge_messages(
        generation.item, generation.baseline_response, generation.response
    )
    raw, calls = "", []
    for attempt in range(protocol.parse_retries + 1):
        completion, call = await caller.call(
            CallKind.JUDGE, generation.item, messages, attempt=attempt
        )
        calls.append(call)
        raw = completion.text
        rating = read_rating(raw, paper=not protocol.strict)
        if rating is not None:
            outcome = judge_outcome(rating, protocol.judge_threshold, setting=generation.setting)
            return rating, outcome, raw, calls
    outcome = judge_outcome(None, protocol.judge_threshold, setting=generation.setting)
    return None, outcome, raw, calls


async def judge_generation(
    generation: Generation, caller: ModelCaller, protocol: Protocol, publish: Publish
) -> None:
    """Extract and rate one generation; publish its verdict."""
    ctx, item = generation.context, generation.item
    async with asyncio.TaskGroup() as group:
        extracted = group.create_task(extract(caller, protocol, generation))
        rated = group.create_task(rate(caller, protocol, generation))
    extraction, extraction_calls = extracted.result()
    rating, outcome, raw, rating_calls = rated.result()
    log.info(
        "service=judge run=%s row=%d setting=%s method=%s answer=%s (%s; rules %s) rating=%s",
        ctx.run_id,
        item.row_id,
        generation.setting,
        generation.method,
        extraction.answer,
        extraction.path,
        extraction.rules_answer,
        rating,
    )
    verdict = Verdict(
        generation=generation,
        answer=extraction.answer,
        extraction=extraction.path,
        judge_rating=rating,
        judge_outcome=outcome,
        judge_raw=raw,
        calls=[*extraction_calls, *rating_calls],
        extractor=ctx.extractor,
        rules_answer=extraction.rules_answer,
    )
    await publish(VERDICTS, partition_key(ctx.run_id, item.row_id), verdict)


def build_app(settings: Settings, options: WorkerOptions, pool: ClientPool | None = None) -> Worker:
    """The judge worker: consumes ``generations``, publishes verdicts."""
    return model_worker(
        "judge",
        settings,
        options,
        GENERATIONS,
        Generation,
        judge_generation,
        in_flight=DEFAULT_IN_FLIGHT,
        pool=pool,
    )
