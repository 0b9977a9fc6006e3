"""Generator: answers every row of a run, without and with the user's preference.

Consumes ``work``; for each (run, row) :func:`answer_row` makes the row's baseline (the answer
without a preference) once and publishes it to ``generations`` for judging, sends an
``AlignRequest`` to ``align`` for every Pref-Aligner setting, and publishes the
preference-conditioned answers of zero_shot, cot, icl and self_critic (both passes). The calls
of one row run in one ``asyncio.TaskGroup``: when one fails for good the others are cancelled,
so nothing is published for a row after it is dead-lettered. A run with a noise floor
(``repeat_baseline``) also makes the baseline call a second time, with the same messages and
decoding, and publishes it for judging as ``baseline_repeat``.
"""

from __future__ import annotations

import asyncio
import logging

from perg.client import DEFAULT_MAX_IN_FLIGHT, ClientPool
from perg.config import Settings
from perg.protocol import CRITIC_SCHEMA, Method, Protocol, Setting
from schemas import (
    BASELINE_METHOD,
    BASELINE_REPEAT_METHOD,
    BASELINE_SETTING,
    AlignRequest,
    CallRecord,
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
    log.info("stage=baseline run=%s row=%d", ctx.run_id, item.row_id)
    baseline, baseline_call = await caller.call(
        ctx.model,
        protocol.baseline_messages(item, ctx.layout),
        stage="baseline",
        kind="answer",
    )
    async with asyncio.TaskGroup() as group:
        group.create_task(
            publish(GENERATIONS, key, Generation(
                ctx, item, BASELINE_SETTING, BASELINE_METHOD, "baseline",
                baseline.text, baseline.text, [baseline_call], thinking=baseline.reasoning,
            ))
        )  # fmt: skip
        if "pref_aligner" in work.methods:
            for setting in work.settings:
                request = AlignRequest(ctx, item, setting, baseline.text)
                group.create_task(publish(ALIGN, key, request))
        for setting in work.settings:
            for method in work.methods:
                if method != "pref_aligner":
                    group.create_task(
                        answer(work, caller, protocol, publish, setting, method, baseline.text)
                    )
        if ctx.repeat_baseline:
            group.create_task(repeat_baseline(work, caller, protocol, publish, baseline.text))
    log.info("stage=answers run=%s row=%d done", ctx.run_id, item.row_id)


async def repeat_baseline(
    work: WorkItem, caller: ModelCaller, protocol: Protocol, publish: Publish, baseline_text: str
) -> None:
    """The noise floor: the baseline call again, same messages and decoding."""
    ctx, item = work.context, work.item
    repeat, repeat_call = await caller.call(
        ctx.model,
        protocol.baseline_messages(item, ctx.layout),
        stage="baseline_repeat",
        kind="answer",
    )
    generation = Generation(
        ctx, item, BASELINE_SETTING, BASELINE_REPEAT_METHOD, "baseline",
        repeat.text, baseline_text, [repeat_call], thinking=repeat.reasoning,
    )  # fmt: skip
    await publish(GENERATIONS, partition_key(ctx.run_id, item.row_id), generation)


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
        ctx.model,
        protocol.answer_messages(item, setting, method, ctx.layout),
        stage="answer",
        kind="answer",
    )
    calls: list[CallRecord] = [first_call]
    if method != "self_critic":
        generation = Generation(
            ctx, item, setting, method, "answer", first.text, baseline_text, calls,
            thinking=first.reasoning,
        )  # fmt: skip
    else:
        rewrite = await structured_rewrite(
            caller,
            protocol.critic_messages(item, setting, first.text, ctx.layout),
            stage="critique",
            kind="critic",
            schema=CRITIC_SCHEMA,
            earlier_text=first.text,
            log_key=(ctx.run_id, item.row_id, setting, method),
        )
        generation = Generation(
            ctx, item, setting, method, "critique", rewrite.response, baseline_text,
            [*calls, *rewrite.calls], rewrite.parse_fallback, rewrite.parse_failure,
            thinking=rewrite.thinking, rewrite_read=rewrite.read,
        )  # fmt: skip
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
