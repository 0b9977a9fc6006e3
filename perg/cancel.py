"""Cancelling a run: a :class:`~schemas.RunCancel` on the compacted ``cancels`` topic.

Every model worker follows that topic (services/_cancels.py): within about a second it stops
calling models for the run; messages not yet started are finished (committed) without a model
call, calls already in flight may complete. The sink stores the cancellation: ``perg status``
and ``GET /api/runs`` say ``cancelled`` with the counts, and the results stored so far stay
queryable, marked partial (view run_states).

    cancel_run(settings, client, run_id, reason="sequential gate: BR regression")  # sync
    await publish_cancel(settings, run_id, reason)  # inside an event loop; no checks
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from perg.config import Settings
from perg.errors import InputError
from perg.kafka import publish_records
from perg.lineage import (
    STORED_WAIT_S,
    Queryable,
    check_note,
    run_state,
    sql_literal,
    wait_stored,
)
from schemas import RunCancel
from schemas.topics import CANCELS

__all__ = ["cancel_run", "publish_cancel"]


async def publish_cancel(settings: Settings, run_id: str, reason: str) -> RunCancel:
    """Publish the cancellation of ``run_id`` (keyed by run: the topic keeps the last)."""
    cancel = RunCancel(run_id=run_id, cancelled_at=datetime.now(UTC).isoformat(), reason=reason)
    await publish_records(settings, CANCELS, [(run_id.encode(), cancel)])
    return cancel


def cancel_run(
    settings: Settings,
    client: Queryable,
    run_id: str,
    reason: str = "perg cancel",
    *,
    wait_s: float = STORED_WAIT_S,
) -> bool:
    """Cancel a known run (InputError for an unknown one); return whether the sink stored
    the cancellation within ``wait_s``."""
    check_note(reason, "--reason")
    if run_state(client, run_id) is None:
        raise InputError(f"unknown run {run_id!r}")
    asyncio.run(publish_cancel(settings, run_id, reason))
    return wait_stored(
        client, f"SELECT 1 FROM run_cancels WHERE run_id = {sql_literal(run_id)}", wait_s
    )
