"""Aligner: Pref-Aligner stage 2, rewriting the model's own baseline for the preference.

Consumes ``align`` (one :class:`AlignRequest` per row and setting), asks the run's model for
the JSON rewrite (:func:`align`) and publishes the aligned answer to ``generations``. Under
``paper`` the aligner sees the row's single relevant preference in every setting, as
published; under ``strict``, the setting's.
"""

from __future__ import annotations

import logging

from perg.client import DEFAULT_MAX_IN_FLIGHT, ClientPool
from perg.config import Settings
from perg.protocol import CallKind, Protocol
from schemas import AlignRequest, Generation, partition_key
from schemas.topics import ALIGN, GENERATIONS

from ._calls import ModelCaller, model_worker, structured_rewrite
from ._runtime import Publish, Worker, WorkerOptions

log = logging.getLogger("perg.services.aligner")

# Requests in progress per worker: twice the endpoint's default slots (one call each, more on
# unparseable JSON), so a hung call does not leave a slot idle.
DEFAULT_IN_FLIGHT = 2 * DEFAULT_MAX_IN_FLIGHT


async def align(
    request: AlignRequest, caller: ModelCaller, protocol: Protocol, publish: Publish
) -> None:
    """Rewrite the baseline for the request's setting and publish the aligned generation."""
    ctx, item = request.context, request.item
    log.info("service=aligner run=%s row=%d setting=%s", ctx.run_id, item.row_id, request.setting)
    rewrite = await structured_rewrite(
        caller,
        CallKind.ALIGN,
        item,
        protocol.aligner_messages(item, request.setting, request.baseline_response),
        earlier_text=request.baseline_response,
        log_key=(ctx.run_id, item.row_id, request.setting, "pref_aligner"),
    )
    aligned = Generation(
        context=ctx,
        item=item,
        setting=request.setting,
        method="pref_aligner",
        stage="aligned",
        response=rewrite.response,
        baseline_response=request.baseline_response,
        calls=rewrite.calls,
        parse_fallback=rewrite.parse_fallback,
        parse_failure=rewrite.parse_failure,
        thinking=rewrite.thinking,
        rewrite_read=rewrite.read,
    )
    await publish(GENERATIONS, partition_key(ctx.run_id, item.row_id), aligned)


def build_app(settings: Settings, options: WorkerOptions, pool: ClientPool | None = None) -> Worker:
    """The aligner worker: consumes ``align``, publishes aligned generations."""
    return model_worker(
        "aligner",
        settings,
        options,
        ALIGN,
        AlignRequest,
        align,
        in_flight=DEFAULT_IN_FLIGHT,
        pool=pool,
    )
