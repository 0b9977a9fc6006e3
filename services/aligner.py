"""Aligner: Pref-Aligner stage 2, rewriting the model's own baseline for the preference.

Consumes ``align`` (one baseline per setting), asks the run's model for the JSON rewrite and
publishes the aligned answer to ``generations``. Under ``paper`` the aligner sees the row's
single relevant preference in every setting, as published; under ``strict``, the setting's.
"""

from __future__ import annotations

import logging

import faust

from perg.client import ClientPool
from perg.protocol import ALIGNER_SCHEMA
from schemas import Generation, partition_key
from schemas.topics import ALIGN, GENERATIONS

from ._calls import ModelCaller, protocol_for, structured_rewrite
from ._runtime import BatchAgent, PermanentError, Service

log = logging.getLogger("perg.services.aligner")

service = Service("aligner")
pool = ClientPool()


async def align(baseline: Generation) -> None:
    ctx, item = baseline.context, baseline.item
    if baseline.setting == "none" or baseline.response is None:
        raise PermanentError("an align request needs a setting and the baseline text")
    protocol = protocol_for(ctx.protocol, ctx.protocol_sha256, service.settings.data_dir)
    log.info("stage=aligner run=%s row=%d setting=%s", ctx.run_id, item.row_id, baseline.setting)
    rewrite = await structured_rewrite(
        ModelCaller(pool, ctx),
        protocol,
        protocol.aligner_messages(item, baseline.setting, baseline.response),
        stage="aligned",
        max_tokens=protocol.max_tokens("aligner"),
        schema=ALIGNER_SCHEMA,
        earlier_text=baseline.response,
        log_key=(ctx.run_id, item.row_id, baseline.setting, "pref_aligner"),
    )
    aligned = Generation(
        ctx, item, baseline.setting, "pref_aligner", "aligned", rewrite.response,
        baseline.baseline_response, rewrite.calls,
        rewrite.parse_fallback, rewrite.parse_failure,
    )  # fmt: skip
    await service.send(GENERATIONS, partition_key(ctx.run_id, item.row_id), aligned)


agent = BatchAgent(service, Generation, align, max_concurrency=16)


@service.app.agent(service.topic(ALIGN), concurrency=1)
async def aligner_agent(stream: faust.StreamT[bytes]) -> None:
    await agent.consume(stream)
