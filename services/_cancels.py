"""Cancelled runs, as every model worker knows them: the compacted ``cancels`` topic, read
whole by each worker process (no consumer group: every process needs every cancellation).

``CancelledRuns.watching()`` reads the topic up to its end before the worker takes any work
(a restarted worker knows every cancellation made before it), then keeps following it: a
cancellation reaches every worker within about a second (one fetch wait). The model caller
asks ``run_id in cancelled`` before every model call (services/_calls.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from perg.config import Settings
from perg.kafka import client_options, started
from schemas import RunCancel, SchemaError
from schemas.topics import CANCELS

log = logging.getLogger("perg.services")

CATCH_UP_S = 30.0  # how long a starting worker reads cancellations before it serves anyway
FETCH_WAIT_MS = 250  # how long a fetch waits for a new cancellation: the delay to notice one


class CancelledRuns:
    """The run ids of the ``cancels`` topic read so far."""

    def __init__(self, settings: Settings, service: str) -> None:
        self.settings = settings
        self.service = service
        self._runs: set[str] = set()

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def is_cancelled(self, run_id: str) -> bool:
        return run_id in self._runs

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Read every cancellation so far, then follow the topic until the block ends."""
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_WAIT_MS,
        )
        await started(consumer, self.settings)
        try:
            partitions = await self._partitions()
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            await self._catch_up(consumer, partitions)
            follower = asyncio.create_task(self._follow(consumer))
            try:
                yield
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
        finally:
            await consumer.stop()

    async def _partitions(self) -> list[TopicPartition]:
        """The topic's partitions, once the broker's metadata has them (a topic created a
        moment ago may not be in it yet)."""
        topic = CANCELS.name(self.settings.topic_prefix)
        admin = AIOKafkaAdminClient(**client_options(self.settings))
        await started(admin, self.settings)
        try:
            async with asyncio.timeout(CATCH_UP_S):
                while True:
                    for found in await admin.describe_topics([topic]):
                        numbers = sorted(p["partition"] for p in found["partitions"])
                        if found["error_code"] == 0 and numbers:
                            return [TopicPartition(topic, n) for n in numbers]
                    await asyncio.sleep(0.2)
        finally:
            await admin.close()

    async def _catch_up(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        ends = await consumer.end_offsets(partitions)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CATCH_UP_S):
                while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                    await self._read(consumer)
                return
        log.warning("service=%s cancellations not read to the end in %.0fs; serving anyway",
                    self.service, CATCH_UP_S)  # fmt: skip

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                await self._read(consumer)
            except KafkaError as exc:  # broker away: the next fetch retries
                log.warning("service=%s reading cancellations: %s", self.service, exc)
                await asyncio.sleep(1.0)

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=FETCH_WAIT_MS)
        for messages in batches.values():
            for message in messages:
                try:
                    cancel = RunCancel.decode(message.value)
                except SchemaError as exc:
                    log.error("service=%s ignoring an invalid cancellation at offset %d: %s",
                              self.service, message.offset, exc)  # fmt: skip
                    continue
                if cancel.run_id not in self._runs:
                    log.info("service=%s run=%s cancelled: no more model calls for it (%s)",
                             self.service, cancel.run_id, cancel.reason)  # fmt: skip
                self._runs.add(cancel.run_id)
