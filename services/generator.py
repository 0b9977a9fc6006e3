"""Generator: answers every row of a run, without and with the user's preference.

Consumes ``work``; for each (run, row) it makes the no-preference baseline once, publishes it
(to ``generations`` for judging, and to ``align`` for every Pref-Aligner setting), then the
preference-conditioned answers of zero_shot, cot, icl and self_critic (both passes). A run with
a noise floor (``repeat_baseline``) also makes the baseline call a second time, with the same
messages and decoding, and publishes it for judging as ``baseline_repeat``.
"""

from __future__ import annotations

import asyncio
import logging

import faust

from perg.client import ClientPool
from perg.protocol import CRITIC_SCHEMA, Method, Setting
from schemas import (
    BASELINE_METHOD,
    BASELINE_REPEAT_METHOD,
    BASELINE_SETTING,
    Generation,
    WorkItem,
    partition_key,
)
from schemas.topics import ALIGN, GENERATIONS, WORK

from ._calls import ModelCaller, protocol_for, structured_rewrite
from ._runtime import BatchAgent, Service

log = logging.getLogger("perg.services.generator")

service = Service("generator")
pool = ClientPool()


async def generate(work: WorkItem) -> None:
    ctx, item = work.context, work.item
    protocol = protocol_for(ctx.protocol, ctx.protocol_sha256, service.settings.data_dir)
    caller = ModelCaller(pool, ctx)
    key = partition_key(ctx.run_id, item.row_id)
    log.info("stage=baseline run=%s row=%d", ctx.run_id, item.row_id)

    baseline, call = await caller.call(
        ctx.model,
        protocol.baseline_messages(item, ctx.layout),
        stage="baseline",
        max_tokens=protocol.max_tokens("answer"),
    )
    publish = [
        service.send(
            GENERATIONS,
            key,
            Generation(ctx, item, BASELINE_SETTING, BASELINE_METHOD, "baseline",
                       baseline.text, baseline.text, [call]),
        )
    ]  # fmt: skip
    if "pref_aligner" in work.methods:
        publish += [
            service.send(
                ALIGN,
                key,
                Generation(ctx, item, setting, "pref_aligner", "baseline",
                           baseline.text, baseline.text, [call]),
            )
            for setting in work.settings
        ]  # fmt: skip

    async def repeat_baseline() -> None:
        repeat, repeat_call = await caller.call(
            ctx.model,
            protocol.baseline_messages(item, ctx.layout),
            stage="baseline_repeat",
            max_tokens=protocol.max_tokens("answer"),
        )
        await service.send(
            GENERATIONS,
            key,
            Generation(ctx, item, BASELINE_SETTING, BASELINE_REPEAT_METHOD, "baseline",
                       repeat.text, baseline.text, [repeat_call]),
        )  # fmt: skip

    async def answer(setting: Setting, method: Method) -> None:
        first, first_call = await caller.call(
            ctx.model,
            protocol.answer_messages(item, setting, method, ctx.layout),
            stage="answer",
            max_tokens=protocol.max_tokens("answer"),
        )
        if method != "self_critic":
            generation = Generation(ctx, item, setting, method, "answer",
                                    first.text, baseline.text, [first_call])  # fmt: skip
        else:
            rewrite = await structured_rewrite(
                caller,
                protocol,
                protocol.critic_messages(item, setting, first.text, ctx.layout),
                stage="critique",
                max_tokens=protocol.max_tokens("critic"),
                schema=CRITIC_SCHEMA,
                earlier_text=first.text,
                log_key=(ctx.run_id, item.row_id, setting, method),
            )
            generation = Generation(
                ctx, item, setting, method, "critique", rewrite.response, baseline.text,
                [first_call, *rewrite.calls], rewrite.parse_fallback, rewrite.parse_failure,
            )  # fmt: skip
        await service.send(GENERATIONS, key, generation)

    if ctx.repeat_baseline:
        publish.append(repeat_baseline())
    await asyncio.gather(
        *publish,
        *(
            answer(setting, method)
            for setting in work.settings
            for method in work.methods
            if method != "pref_aligner"
        ),
    )
    log.info("stage=answers run=%s row=%d done", ctx.run_id, item.row_id)


agent = BatchAgent(service, WorkItem, generate, max_concurrency=8)


@service.app.agent(service.topic(WORK), concurrency=1)
async def generator_agent(stream: faust.StreamT[bytes]) -> None:
    await agent.consume(stream)
