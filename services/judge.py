"""Judge: reads every generation on the run's judge endpoint.

Consumes ``generations``; :func:`judge_generation` extracts the chosen option (deterministic
parser first, then an LLM call constrained to the item's letters) and rates how well the
preference was followed (Likert 1-5; not asked in the irrelevant setting, where AFR is
undefined, nor for the baseline), both at once in one ``asyncio.TaskGroup``, and publishes the
``Verdict`` to ``verdicts``.
"""

from __future__ import annotations

import asyncio
import logging

from perg.client import DEFAULT_MAX_IN_FLIGHT, ClientPool
from perg.config import Settings
from perg.extraction import ExtractionPath, choice_schema, extract_choice, parse_llm_choice
from perg.judging import JudgeOutcome, judge_outcome, parse_rating
from perg.protocol import Protocol
from schemas import BASELINE_METHOD, CallRecord, Generation, Verdict, partition_key
from schemas.topics import GENERATIONS, VERDICTS

from ._calls import ModelCaller, model_worker
from ._runtime import Publish, Worker, WorkerOptions

log = logging.getLogger("perg.services.judge")

# Generations in progress per worker: four times the endpoint's default slots (one or two calls
# each, often none), so the slots stay full while some wait on a slow or hung call.
DEFAULT_IN_FLIGHT = 4 * DEFAULT_MAX_IN_FLIGHT


async def extract(
    caller: ModelCaller, protocol: Protocol, generation: Generation
) -> tuple[str | None, ExtractionPath, list[CallRecord]]:
    """The option letter of the response: parsed, else asked of the judge model."""
    item, response = generation.item, generation.response
    if not response:
        return None, "unresolved", []
    letter = extract_choice(response, item.options)
    if letter is not None:
        return letter, "parsed", []
    completion, call = await caller.call(
        caller.context.judge,
        protocol.extraction_messages(item, response),
        stage="extraction",
        max_tokens=protocol.max_tokens("extraction"),
        json_schema=choice_schema(item.letters),
    )
    letter = parse_llm_choice(completion.text, item.letters)
    return (letter, "llm", [call]) if letter is not None else (None, "unresolved", [call])


async def rate(
    caller: ModelCaller, protocol: Protocol, generation: Generation
) -> tuple[int | None, JudgeOutcome | None, str | None, list[CallRecord]]:
    """The judge's Likert rating of how well the response follows the preference."""
    if generation.method == BASELINE_METHOD:
        return None, None, None, []
    if generation.setting == "irrelevant":
        return None, "not_applicable", None, []
    if generation.response is None:  # strict parse failure: nothing to rate
        return None, "not_followed", None, []
    messages = protocol.judge_messages(
        generation.item, generation.baseline_response, generation.response
    )
    raw, calls = "", []
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
        rating = parse_rating(raw)
        if rating is not None:
            return rating, judge_outcome(rating, protocol.judge_threshold), raw, calls
    return None, judge_outcome(None, protocol.judge_threshold), raw, calls


async def judge_generation(
    generation: Generation, caller: ModelCaller, protocol: Protocol, publish: Publish
) -> None:
    """Extract and rate one generation; publish its verdict."""
    ctx, item = generation.context, generation.item
    async with asyncio.TaskGroup() as group:
        extracted = group.create_task(extract(caller, protocol, generation))
        rated = group.create_task(rate(caller, protocol, generation))
    answer, path, extraction_calls = extracted.result()
    rating, outcome, raw, rating_calls = rated.result()
    log.info(
        "stage=verdict run=%s row=%d setting=%s method=%s answer=%s (%s) rating=%s",
        ctx.run_id, item.row_id, generation.setting, generation.method, answer, path, rating,
    )  # fmt: skip
    verdict = Verdict(
        generation, answer, path, rating, outcome, raw, [*extraction_calls, *rating_calls]
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
