"""Sink: the one process that owns the DuckDB results file.

Consumes ``runs``, ``generations`` (stage progress), ``verdicts`` and ``dead-letters``; every
batch is one upsert transaction keyed by the idempotency key, so redeliveries never duplicate
a row. Stored rows are announced on ``results``. It also serves the HTTP API (status, metrics,
live SQL, dashboard) and writes periodic Parquet snapshots.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

import faust
from aiohttp import web

from perg.config import setting
from perg.live.api import check_bind, create_app
from perg.live.snapshots import write_snapshot
from perg.store import ResultStore
from schemas import DeadLetter, Generation, Record, RunSpec, SchemaError, Verdict, partition_key
from schemas.topics import DEAD_LETTERS, GENERATIONS, RESULTS, RUNS, VERDICTS

from ._runtime import Service, batches

log = logging.getLogger("perg.services.sink")

R = TypeVar("R", bound=Record)
T = TypeVar("T")
P = ParamSpec("P")

service = Service("sink")
settings = service.settings
SNAPSHOT_EVERY_S = float(setting("snapshot_every_s", "30"))
store_lock = asyncio.Lock()
_store: ResultStore | None = None


def store() -> ResultStore:
    global _store
    if _store is None:
        _store = ResultStore(settings.db)
    return _store


async def decode_batch(events: Sequence[faust.EventT[bytes]], record: type[R]) -> list[R]:
    decoded = []
    for event in events:
        try:
            decoded.append(record.decode(event.message.value))
        except SchemaError as exc:
            await service.dead_letter(event, f"invalid {record.SCHEMA}: {exc}")
    return decoded


async def write(save: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run one store write in a thread, one at a time. A write that fails stops the process
    before its batch is acked, so Kafka redelivers it to the restarted sink."""
    async with store_lock:
        try:
            return await asyncio.to_thread(save, *args, **kwargs)
        except Exception:
            log.critical("stage=sink store write failed; stopping without ack", exc_info=True)
            os._exit(70)


@service.app.agent(service.topic(RUNS), concurrency=1)
async def store_runs(stream: faust.StreamT[bytes]) -> None:
    async for events in batches(stream, 100, 0.2):
        for spec in await decode_batch(events, RunSpec):
            log.info("stage=sink run=%s registered (%d results expected)",
                     spec.context.run_id, spec.expected_results)  # fmt: skip
            await write(store().save_run, spec)


@service.app.agent(service.topic(GENERATIONS), concurrency=1)
async def store_progress(stream: faust.StreamT[bytes]) -> None:
    async for events in batches(stream, 500, 0.5):
        generations = await decode_batch(events, Generation)
        if generations:
            await write(store().save_progress, generations)


@service.app.agent(service.topic(VERDICTS), concurrency=1)
async def store_verdicts(stream: faust.StreamT[bytes]) -> None:
    results_topic = service.topic(RESULTS)
    async for events in batches(stream, 500, 0.5):
        verdicts = await decode_batch(events, Verdict)
        if not verdicts:
            continue
        stored = await write(store().save_verdicts, verdicts)
        pending = [
            await results_topic.send(key=partition_key(r.run_id, r.row_id), value=r.encode())
            for r in stored
        ]
        await asyncio.gather(*pending)
        log.info("stage=sink stored %d verdicts", len(verdicts))


@service.app.agent(service.topic(DEAD_LETTERS), concurrency=1)
async def store_dead_letters(stream: faust.StreamT[bytes]) -> None:
    async for events in batches(stream, 100, 0.5):
        letters = []
        for event in events:
            try:
                letters.append(DeadLetter.decode(event.message.value))
            except SchemaError as exc:  # end of the line: keep it, never loop it back
                log.error("stage=sink malformed dead letter at offset %d: %s",
                          event.message.offset, exc)  # fmt: skip
        if letters:
            await write(store().save_dead_letters, letters)


@service.app.task
async def serve_api() -> None:
    check_bind(settings.sink_bind, settings.sink_token)
    runner = web.AppRunner(create_app(store(), token=settings.sink_token))
    await runner.setup()
    await web.TCPSite(runner, settings.sink_bind, settings.sink_port).start()
    log.info("stage=sink API on http://%s:%d", settings.sink_bind, settings.sink_port)


@service.app.timer(SNAPSHOT_EVERY_S)
async def snapshot() -> None:
    directory = settings.db.parent / "snapshots"
    path = await asyncio.to_thread(write_snapshot, store(), directory)
    log.debug("stage=sink snapshot %s", path)
