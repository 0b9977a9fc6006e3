"""Generator: answers every row of a run, without and with the user's preference.

Consumes ``work``; for each (run, row) :func:`answer_row` makes the row's baseline (the answer
without a preference) once and publishes it to ``generations`` for judging, then what the
row's fan-out (``schemas.fan_out``) needs: an ``AlignRequest`` to ``align`` for every
Pref-Aligner setting, and the preference-conditioned answers of zero_shot, cot, icl and
self_critic (both passes). The calls
of one row run in one ``asyncio.TaskGroup``: when one fails for good the others are cancelled,
so nothing is published for a row after it is dead-lettered. A run with a noise floor
(``repeat_baseline``) also makes the baseline call a second time, with the same messages and
decoding, and publishes it for judging as ``baseline_repeat``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from perg.client import DEFAULT_MAX_IN_FLIGHT, ClientPool
from perg.config import Settings
from perg.protocol import CallKind, Method, Protocol, Setting
from schemas import (
    BASELINE_METHOD,
    BASELINE_REPEAT_METHOD,
    BASELINE_SETTING,
    AlignRequest,
    Generation,
    WorkItem,
    partition_key,
)
from schemas.topics import ALIGN, GENERATIONS, WORK

from ._calls import ModelCaller, model_worker, structured_rewrite
from ._runtime import Publish, Worker, WorkerOptions

log = logging.getLogger("perg.services.generator")

# Rows in progress per worker: twice the endpoint's default slots, so the slots stay full while
# rows wait on their sequential steps (baseline, answers, critique) or on a slow or hung call.
# The endpoint's max_in_flight bounds the calls; this bounds the memory.
DEFAULT_IN_FLIGHT = 2 * DEFAULT_MAX_IN_FLIGHT


async def answer_row(
    work: WorkItem, caller: ModelCaller, protocol: Protocol, publish: Publish
) -> None:
    """Baseline, then every (setting, method) answer of one row, each published when done."""
    ctx, item = work.context, work.item
    key = partition_key(ctx.run_id, item.row_id)
    log.info("service=generator run=%s row=%d: baseline", ctx.run_id, item.row_id)
    baseline = await baseline_answer(work, caller, protocol, BASELINE_METHOD)
    baseline_text, needs = baseline.baseline_response, work.fan_out
    async with asyncio.TaskGroup() as group:
        group.create_task(publish(GENERATIONS, key, baseline))
        for setting in needs.aligned:
            request = AlignRequest(
                context=ctx, item=item, setting=setting, baseline_response=baseline_text
            )
            group.create_task(publish(ALIGN, key, request))
        for setting, method in needs.answers:
            group.create_task(
                answer(work, caller, protocol, publish, setting, method, baseline_text)
            )
        for _ in range(needs.repeats):
            group.create_task(repeat_baseline(work, caller, protocol, publish, baseline_text))
    log.info("service=generator run=%s row=%d: answers done", ctx.run_id, item.row_id)


async def baseline_answer(
    work: WorkItem,
    caller: ModelCaller,
    protocol: Protocol,
    method: Literal["baseline", "baseline_repeat"],
    baseline_text: str | None = None,
) -> Generation:
    """The row's answer without a preference (``baseline``), or its repeat for the noise floor
    (``baseline_repeat``: the same messages and decoding, judged against ``baseline_text``)."""
    ctx, item = work.context, work.item
    completion, call = await caller.call(
        CallKind.ANSWER, item, protocol.baseline_messages(item, ctx.layout), label=method
    )
    return Generation(
        context=ctx,
        item=item,
        setting=BASELINE_SETTING,
        method=method,
        stage="baseline",
        response=completion.text,
        baseline_response=completion.text if baseline_text is None else baseline_text,
        calls=[call],
        thinking=completion.reasoning,
    )


async def repeat_baseline(
    work: WorkItem, caller: ModelCaller, protocol: Protocol, publish: Publish, baseline_text: str
) -> None:
    """The noise floor: the baseline call again, same messages and decoding."""
    generation = await baseline_answer(
        work, caller, protocol, BASELINE_REPEAT_METHOD, baseline_text
    )
    await publish(GENERATIONS, partition_key(work.context.run_id, work.item.row_id), generation)


async def answer(
    work: WorkItem,
    caller: ModelCaller,
    protocol: Protocol,
    publish: Publish,
    setting: Setting,
    method: Method,
    baseline_text: str,
) -> None:
    """One preference-conditioned answer (self_critic: answer, then critique and rewrite)."""
    ctx, item = work.context, work.item
    first, first_call = await caller.call(
        CallKind.ANSWER, item, protocol.answer_messages(item, setting, method, ctx.layout)
    )
    if method != "self_critic":
        generation = Generation(
            context=ctx,
            item=item,
            setting=setting,
            method=method,
            stage="answer",
            response=first.text,
            baseline_response=baseline_text,
            calls=[first_call],
            thinking=first.reasoning,
        )
    else:
        rewrite = await structured_rewrite(
            caller,
            CallKind.CRITIQUE,
            item,
            protocol.critic_messages(item, setting, first.text, ctx.layout),
            earlier_text=first.text,
            log_key=(ctx.run_id, item.row_id, setting, method),
        )
        generation = Generation(
            context=ctx,
            item=item,
            setting=setting,
            method=method,
            stage="critique",
            response=rewrite.response,
            baseline_response=baseline_text,
            calls=[first_call, *rewrite.calls],
            parse_fallback=rewrite.parse_fallback,
            parse_failure=rewrite.parse_failure,
            thinking=rewrite.thinking,
            rewrite_read=rewrite.read,
        )
    await publish(GENERATIONS, partition_key(ctx.run_id, item.row_id), generation)


def build_app(settings: Settings, options: WorkerOptions, pool: ClientPool | None = None) -> Worker:
    """The generator worker: consumes ``work``, publishes generations and align requests."""
    return model_worker(
        "generator",
        settings,
        options,
        WORK,
        WorkItem,
        answer_row,
        in_flight=DEFAULT_IN_FLIGHT,
        pool=pool,
    )
