"""What every service shares: its faust app, its topics, and safe batch processing.

Delivery: each agent runs with concurrency 1 and reads ``stream.take_events(n, within=t)``;
the events of a batch are handled concurrently and faust acks them only after the whole batch
is done (faust issue 606: agent concurrency > 1 can commit past an unfinished message). A
handler never lets an exception escape: it is retried, then the message goes to the
dead-letter topic with the reason and its original bytes, and only then acked. Outputs are
awaited until the broker confirms them, so an acked input always has its outputs on Kafka.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import faust
import orjson
from faust.streams import Stream

from perg.config import Settings, setting
from perg.kafka import ensure_topics
from schemas import DeadLetter, Record, SchemaError, TopicSpec
from schemas.topics import DEAD_LETTERS

log = logging.getLogger("perg.services")

R = TypeVar("R", bound=Record)

HANDLER_ATTEMPTS = 3  # tries of a failing handler before its message is dead-lettered


class PermanentError(Exception):
    """A message that can never succeed (e.g. its protocol is unknown here): no retries."""


class Service:
    """One PERG microservice: a faust app in its own consumer group."""

    def __init__(self, name: str, settings: Settings | None = None) -> None:
        self.name = name
        self.settings = settings or Settings.load()
        # faust keeps no state of ours (no tables): its data dir is scratch space
        app_id = f"{self.settings.topic_prefix}-{name}"
        datadir = Path(tempfile.gettempdir()) / "perg-faust" / app_id
        datadir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            app_id,
            broker=f"kafka://{self.settings.kafka}",
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=False,
            topic_partitions=self.settings.partitions,
            topic_allow_declare=False,
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=1.0,
            producer_acks=-1,
            broker_session_timeout=float(setting("session_timeout_s", "30")),
            broker_heartbeat_interval=1.0,
            store="memory://",
            datadir=str(datadir),
        )
        self.dead_letters = self.topic(DEAD_LETTERS)

    def topic(self, spec: TopicSpec) -> faust.TopicT:
        return self.app.topic(
            spec.name(self.settings.topic_prefix),
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.settings.partitions,
        )

    async def send(self, spec: TopicSpec, key: bytes, record: Record) -> None:
        """Publish and wait for the broker's acknowledgement."""
        pending = await self.topic(spec).send(key=key, value=record.encode())
        await pending

    async def dead_letter(self, event: faust.EventT[bytes], reason: str) -> None:
        message = event.message
        fields = _key_fields(message.value)
        letter = DeadLetter(
            service=self.name,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=reason,
            original_b64=base64.b64encode(message.value or b"").decode(),
            failed_at=datetime.now(UTC).isoformat(),
            **fields,
        )
        log.error(
            "stage=%s dead-letter topic=%s partition=%d offset=%d run=%s row=%s: %s",
            self.name, message.topic, message.partition, message.offset,
            fields.get("run_id"), fields.get("row_id"), reason,
        )  # fmt: skip
        pending = await self.dead_letters.send(key=message.key, value=letter.encode())
        await pending


def batches(
    stream: faust.StreamT[bytes], size: int, within_s: float = 0.5
) -> AsyncIterator[Sequence[faust.EventT[bytes]]]:
    """Batches of up to ``size`` events; faust acks a batch when the loop asks for the next."""
    return cast(Stream[bytes], stream).take_events(size, within=within_s)


@dataclass(frozen=True)
class BatchAgent(Generic[R]):
    """Decode, handle and (on failure) dead-letter every event of a batch, concurrently."""

    service: Service
    record: type[R]
    handle: Callable[[R], Awaitable[None]]
    max_concurrency: int = 32

    async def consume(self, stream: faust.StreamT[bytes]) -> None:
        async for events in batches(stream, self.max_concurrency):
            await self.run_batch(events)

    async def run_batch(self, events: Sequence[faust.EventT[bytes]]) -> None:
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(event: faust.EventT[bytes]) -> None:
            async with limit:
                await self._process(event)

        try:
            await asyncio.gather(*(one(e) for e in events))
        except Exception:
            # Only dead-lettering itself can fail here (Kafka unreachable). Stop before faust
            # acks the batch, so every message of it is redelivered to the restarted worker.
            log.critical("stage=%s batch could not be finished; stopping", self.service.name,
                         exc_info=True)  # fmt: skip
            os._exit(70)

    async def _process(self, event: faust.EventT[bytes]) -> None:
        try:
            record = self.record.decode(event.message.value)
        except SchemaError as exc:
            await self.service.dead_letter(event, f"invalid {self.record.SCHEMA}: {exc}")
            return
        for attempt in range(1, HANDLER_ATTEMPTS + 1):
            try:
                await self.handle(record)
                return
            except PermanentError as exc:
                await self.service.dead_letter(event, str(exc))
                return
            except Exception as exc:
                if attempt == HANDLER_ATTEMPTS:
                    reason = f"failed after {attempt} attempts: {type(exc).__name__}: {exc}"
                    await self.service.dead_letter(event, reason)
                    return
                log.warning(
                    "stage=%s %s attempt %d failed: %s; retrying",
                    self.service.name, getattr(record, "key", ""), attempt, exc,
                )  # fmt: skip
                await asyncio.sleep(0.5 * 2**attempt)


def _key_fields(raw: bytes | None) -> dict[str, Any]:
    """Best-effort idempotency-key fields of a message that may be malformed."""
    try:
        data = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    if isinstance(data.get("generation"), dict):  # a verdict wraps its generation
        data = data["generation"]
    context = data.get("context") if isinstance(data.get("context"), dict) else {}
    item = data.get("item") if isinstance(data.get("item"), dict) else {}
    candidates = {
        "run_id": context.get("run_id", data.get("run_id")),
        "row_id": item.get("row_id", data.get("row_id")),
        "setting": data.get("setting"),
        "method": data.get("method"),
        "stage": data.get("stage"),
    }
    return {
        k: v
        for k, v in candidates.items()
        if isinstance(v, int if k == "row_id" else str) and not isinstance(v, bool)
    }


def run_worker(service: Service) -> None:
    """Run the service's faust worker in this process until SIGTERM/SIGINT."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(service.settings))
    worker = faust.Worker(service.app, loglevel="INFO", redirect_stdouts=False, loop=loop)
    worker.execute_from_commandline()
