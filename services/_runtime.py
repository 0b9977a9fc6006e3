"""What every service shares: its Kafka consumer and producer, continuous flow with in-order
commits, retries and dead letters.

Continuous flow. A worker keeps up to ``in_flight`` messages in progress at once and fetches
the next as soon as one finishes; messages finish in any order. Each partition's committed
offset is the lowest offset still in progress (one past the last fetched when none is): the
contiguous finished prefix (:class:`PartitionLedger`). So a crash redelivers every unfinished
message, and a finished one is redelivered only if it finished after the last commit (its
outputs are then published again and upserted once by the sink, the last line of defence).

A message is *finished* when its outputs are acknowledged by the broker (``acks=all``) or when
it has been dead-lettered: a handler is retried ``HANDLER_ATTEMPTS`` times, then the message
goes to ``dead-letters`` with the reason and a bounded copy of the original; a
:class:`PermanentError` (unknown protocol, a client that cannot be configured, a 4xx reply, an
output too large for Kafka) is dead-lettered at once. Kafka being unreachable is not the
message's fault: publishing is retried, and when Kafka stays away the process stops without
committing (exit 70), so the restarted worker gets every unfinished message again.

Why aiokafka and not faust agents: faust acks out-of-order completions with an off-by-one that
commits past a single in-flight message at the head of a partition (faust-streaming issue
#606; the fix, PR #707, is unmerged), so faust with concurrency loses that message on a crash,
and faust without concurrency needs batch barriers that idle the model servers. Owning the
consumer makes the commit rule a dozen lines that tests can pin down, and gives direct control
of the group settings that bound recovery: ``group.instance.id`` (static membership, so a
restarted worker takes its partitions back at once, without a rebalance), the session timeout
(default 6 s, the broker's minimum: how long a dead worker's partitions wait when nobody
restarts it) and the heartbeat. A worker without an instance name uses dynamic membership and
leaves the group on a graceful stop. faust is not used at all.

Memory is bounded whatever the queue depth: at most ``in_flight`` messages are taken from the
consumer, whose prefetch is bounded by ``FETCH_MAX_BYTES``.

Metrics (perg.observe) are counted here: messages consumed and finished per topic by the loop,
retried and dead-lettered by :class:`RecordHandler`, in progress and each partition's lag read
from the ledgers at every scrape. With ``PERG_METRICS_PORT`` set the worker serves them, and
``/ready``: 200 once its consumer has joined the group (after the lifespan opened what the
service needs, e.g. the sink's results file), 503 before and while stopping.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import logging
import os
import signal
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.structs import TopicPartition

from perg.client import ClientTuning
from perg.config import Settings
from perg.errors import InputError
from perg.kafka import client_options, ensure_topics, started
from perg.observe import Metrics, serve
from schemas import DeadLetter, Record, SchemaError, TopicSpec
from schemas.topics import DEAD_LETTERS

log = logging.getLogger("perg.services")

R = TypeVar("R", bound=Record)


class Message(Protocol):
    """A consumed Kafka message (aiokafka's ConsumerRecord, as the services use it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


HANDLER_ATTEMPTS = 3  # tries of a failing handler before its message is dead-lettered
PUBLISH_PATIENCE_S = 300.0  # how long publishing may fail (Kafka away) before the worker stops
PUBLISH_RETRY_S = 2.0  # pause between tries while Kafka does not take an output
COMMIT_EVERY_S = 0.2
FETCH_MAX_BYTES = 8 * 1024 * 1024
# A fetch returns once FETCH_MIN_BYTES are there or after FETCH_MAX_WAIT_MS: under load a few
# large fetches instead of one per message (the broker's CPU), at most that wait when idle.
FETCH_MIN_BYTES = 256 * 1024
FETCH_MAX_WAIT_MS = 50
# Outputs of many messages in flight share a produce request: a batch per partition holds up
# to PRODUCER_BATCH_BYTES (aiokafka's 16 KiB default holds about ten generations, and a send
# to a full batch waits for it to drain) and waits up to PRODUCER_LINGER_MS for company.
PRODUCER_BATCH_BYTES = 512 * 1024
PRODUCER_LINGER_MS = 50
EXIT_UNFINISHED = 70  # stopped without committing: the restarted worker redoes the rest


class PermanentError(Exception):
    """A message that can never succeed here: dead-lettered at once, no retries."""


class RunCancelled(Exception):
    """The message's run was cancelled (``perg cancel``): the message is finished as it is,
    without more model calls, and committed; nothing is dead-lettered."""


class PublishError(Exception):
    """Kafka did not take an output (not the message's fault): retried, then the worker stops."""


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How one worker process consumes (``perg worker`` flags, or ``PERG_WORKER_*``).

    ``in_flight``: messages in progress at once (None: the service's default). ``instance``: a
    name unique in the service's group and stable across restarts (static membership).
    ``client``: how the model workers' client calls every endpoint of a run (``PERG_MODEL_*``).
    """

    in_flight: int | None = None
    instance: str | None = None
    session_timeout_s: float = 6.0
    client: ClientTuning = field(default_factory=ClientTuning)

    def __post_init__(self) -> None:
        if self.in_flight is not None and self.in_flight < 1:
            raise InputError(f"in_flight must be at least 1, got {self.in_flight}")
        if self.session_timeout_s < 1:
            raise InputError(f"session timeout must be >= 1 s, got {self.session_timeout_s}")

    @classmethod
    def of(cls, settings: Settings) -> WorkerOptions:
        """``PERG_WORKER_IN_FLIGHT``, ``PERG_WORKER_INSTANCE``, ``PERG_SESSION_TIMEOUT_S`` and
        the client's ``PERG_MODEL_*`` tuning (``Settings.model_client``)."""
        return cls(
            client=settings.model_client,
            in_flight=settings.worker_in_flight,
            instance=settings.worker_instance,
            session_timeout_s=settings.session_timeout_s,
        )


class PartitionLedger:
    """Offsets of one partition in progress; :attr:`committable` is where a restart resumes.

    Offsets are started in increasing order (as fetched) and finished in any order. The
    committable offset is one past the end of the contiguous finished prefix, so it never
    passes a message still in progress (the rule faust gets wrong in issue #606)."""

    def __init__(self) -> None:
        self._started: deque[int] = deque()
        self._finished: set[int] = set()
        self.committable: int | None = None
        self.resumed_at: int | None = None  # the first offset started: the group's commit

    def start(self, offset: int) -> None:
        if self.resumed_at is None:
            self.resumed_at = offset
        self._started.append(offset)

    def finish(self, offset: int) -> None:
        self._finished.add(offset)
        while self._started and self._started[0] in self._finished:
            done = self._started.popleft()
            self._finished.discard(done)
            self.committable = done + 1

    @property
    def in_progress(self) -> int:
        return len(self._started) - len(self._finished)


class Publisher:
    """Publishes records and waits for the broker's acknowledgement (``acks=all``)."""

    def __init__(self, producer: AIOKafkaProducer, prefix: str) -> None:
        self._producer = producer
        self._prefix = prefix

    async def __call__(self, spec: TopicSpec, key: bytes, record: Record) -> None:
        await self.send_raw(self.topic(spec), key, record.encode())

    def topic(self, spec: TopicSpec) -> str:
        return spec.name(self._prefix)

    async def publish_many(self, spec: TopicSpec, records: Sequence[tuple[bytes, Record]]) -> None:
        """Publish all at once (batched by the producer) and wait for every acknowledgement."""
        topic = self.topic(spec)
        try:
            pending = [
                await self._producer.send(topic, record.encode(), key=key)
                for key, record in records
            ]
            await asyncio.gather(*pending)
        except KafkaError as exc:
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc

    async def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        try:
            await self._producer.send_and_wait(topic, value, key=key)
        except MessageSizeTooLargeError as exc:
            raise PermanentError(f"an output of {len(value)} bytes is too large for Kafka") from exc
        except KafkaError as exc:
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc


Publish = Callable[[TopicSpec, bytes, Record], Coroutine[Any, Any, None]]


def dead_letter_for(service: str, message: Message, reason: str) -> DeadLetter:
    """A bounded dead letter: the reason, where the message came from, its first
    ``DeadLetter.MAX_ORIGINAL_BYTES`` and the size and SHA-256 of all of it."""
    original = message.value or b""
    if len(reason) > DeadLetter.MAX_REASON_CHARS:
        reason = reason[: DeadLetter.MAX_REASON_CHARS - 1] + "…"
    return DeadLetter(
        service=service,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        reason=reason,
        original_b64=base64.b64encode(original[: DeadLetter.MAX_ORIGINAL_BYTES]).decode(),
        failed_at=datetime.now(UTC).isoformat(),
        original_size=len(original),
        original_sha256=hashlib.sha256(original).hexdigest(),
        **_key_fields(original),
    )


def _key_fields(raw: bytes) -> dict[str, Any]:
    """Best-effort idempotency-key fields of a message that may be malformed."""
    try:
        data = orjson.loads(raw)
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
    fields: dict[str, Any] = {
        k: v for k, v in candidates.items() if isinstance(v, str) and len(v) <= 200
    }
    row_id = candidates["row_id"]
    if isinstance(row_id, int) and not isinstance(row_id, bool) and 0 <= row_id < 2**31:
        fields["row_id"] = row_id
    return fields


E = TypeVar("E", bound=BaseException)


def _cause(exc: BaseException, kind: type[E]) -> E | None:
    """``exc`` itself or the first ``kind`` inside it (exception groups of a TaskGroup)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _cause(inner, kind)
            if found is not None:
                return found
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class RecordHandler(Generic[R]):
    """Decode a message as ``record``, run ``handle`` on it with retries, dead-letter it when
    it cannot succeed. Never raises except when Kafka itself stays unreachable."""

    service: str
    record: type[R]
    handle: Callable[[R], Awaitable[None]]
    publisher: Publisher
    retry_wait_s: float = 0.5
    metrics: Metrics = field(default_factory=lambda: Metrics("unserved"))

    async def __call__(self, message: Message) -> None:
        try:
            record = self.record.decode(message.value)
        except SchemaError as exc:
            await self.dead_letter(message, f"invalid {self.record.SCHEMA}: {exc}")
            return
        attempt = 0
        kafka = _KafkaPatience()
        while True:
            attempt += 1
            try:
                await self.handle(record)
                return
            except Exception as exc:
                if _cause(exc, RunCancelled) is not None:
                    log.debug("service=%s %s: run cancelled, finished without more model calls",
                              self.service, _where(message))  # fmt: skip
                    return
                permanent = _cause(exc, PermanentError)
                if permanent is not None:
                    await self.dead_letter(message, str(permanent))
                    return
                if _cause(exc, PublishError) is not None:  # Kafka away: not the message's fault
                    attempt -= 1
                    if kafka.spent():
                        raise
                    log.warning("service=%s %s: Kafka did not take an output (%s); retrying",
                                self.service, _where(message), _describe(exc))  # fmt: skip
                    await asyncio.sleep(PUBLISH_RETRY_S)
                    continue
                if attempt >= HANDLER_ATTEMPTS:
                    await self.dead_letter(
                        message, f"failed after {attempt} attempts: {_describe(exc)}"
                    )
                    return
                self.metrics.retried.labels(self.service, message.topic).inc()
                log.warning("service=%s %s attempt %d failed: %s; retrying",
                            self.service, _where(message), attempt, _describe(exc))  # fmt: skip
                await asyncio.sleep(self.retry_wait_s * 2**attempt)

    async def dead_letter(self, message: Message, reason: str) -> None:
        letter = dead_letter_for(self.service, message, reason)
        log.error("service=%s dead-letter %s run=%s row=%s: %s", self.service, _where(message),
                  letter.run_id, letter.row_id, letter.reason)  # fmt: skip
        kafka = _KafkaPatience()
        while True:
            try:
                await self.publisher.send_raw(
                    self.publisher.topic(DEAD_LETTERS), message.key, letter.encode()
                )
                self.metrics.dead_lettered.labels(self.service, message.topic).inc()
                return
            except PublishError as exc:  # Kafka away: wait for it, as for any output
                if kafka.spent():
                    raise
                log.warning("service=%s %s: dead letter not taken (%s); retrying",
                            self.service, _where(message), exc)  # fmt: skip
                await asyncio.sleep(PUBLISH_RETRY_S)


class _KafkaPatience:
    """How long one message waits for Kafka to take its outputs: from the first refusal,
    ``PUBLISH_PATIENCE_S``; after that the worker stops without committing."""

    def __init__(self) -> None:
        self._since: float | None = None

    def spent(self) -> bool:
        now = asyncio.get_running_loop().time()
        if self._since is None:
            self._since = now
        return now - self._since > PUBLISH_PATIENCE_S


def _where(message: Message) -> str:
    return f"{message.topic}[{message.partition}]@{message.offset}"


def _exit_unfinished(reason: str) -> None:
    """Stop at once, committing nothing more: Kafka redelivers the unfinished messages."""
    log.critical("%s; stopping without committing (exit %d)", reason, EXIT_UNFINISHED)
    logging.shutdown()
    os._exit(EXIT_UNFINISHED)


Lifespan = Callable[[], AbstractAsyncContextManager[None]]
"""What a worker opens around its consume loop (and closes after it): a store, a watcher."""


@contextlib.asynccontextmanager
async def _no_lifespan() -> AsyncIterator[None]:
    yield


class BatchHandler(Protocol):
    """What a batch worker runs (the sink): ``lifespan`` opens what the batches need, around
    the consume loop; each batch is handled in order, and raising means it could not be (the
    worker then stops without committing it, so it is redelivered after the restart)."""

    def lifespan(self) -> AbstractAsyncContextManager[None]: ...

    async def __call__(self, messages: list[Message]) -> None: ...


class Worker:
    """One service in one process: a consumer in the service's group, a producer, and either a
    per-message handler run ``in_flight`` at a time (continuous flow) or a batch handler."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        options: WorkerOptions,
        inputs: Sequence[TopicSpec],
        *,
        in_flight: int,
        lifespan: Lifespan = _no_lifespan,
    ) -> None:
        self.name = name
        self.settings = settings
        self.options = options
        self.inputs = tuple(inputs)
        self.in_flight = options.in_flight or in_flight
        self.lifespan = lifespan
        self.on_fatal: Callable[[str], None] = _exit_unfinished
        self._producer: AIOKafkaProducer | None = None
        self._publisher: Publisher | None = None
        self._handle_one: Callable[[Message], Coroutine[Any, Any, None]] | None = None
        self._handle_batch: Callable[[list[Message]], Awaitable[None]] | None = None
        self._ledgers: dict[TopicPartition, PartitionLedger] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._tasks: dict[asyncio.Task[None], tuple[TopicPartition, int]] = {}
        self._slot_freed = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self.stopping = asyncio.Event()
        self.joined = False  # the consumer has joined its group (partitions assigned)
        self.metrics = Metrics(name)
        self.metrics.watch(in_flight=self._in_progress, lag=self._lag)

    @property
    def ready(self) -> bool:
        """Consuming: the lifespan is open and the consumer has joined its group."""
        return self.joined and not self.stopping.is_set()

    def _in_progress(self) -> int:
        return sum(ledger.in_progress for ledger in self._ledgers.values())

    def _lag(self) -> list[tuple[str, int, int]]:
        """(topic, partition, end offset as last fetched - committed offset) of each owned
        partition whose end is known; before a commit of its own, the worker's committed
        offset is where it resumed (the group's)."""
        consumer = self._consumer
        if consumer is None:
            return []
        lags = []
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            ledger = self._ledgers.get(tp)
            committed = self._committed.get(tp, ledger.resumed_at if ledger else None)
            if end is not None and committed is not None:
                lags.append((tp.topic, tp.partition, max(end - committed, 0)))
        return lags

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("the worker's producer starts with run()")
        return self._publisher

    async def publish(self, spec: TopicSpec, key: bytes, record: Record) -> None:
        await self.publisher(spec, key, record)

    def serve(self, record: type[R], handle: Callable[[R], Awaitable[None]]) -> None:
        """Handle each message as ``record`` with retries and dead letters, concurrently."""

        async def one(message: Message) -> None:
            await RecordHandler(self.name, record, handle, self.publisher, metrics=self.metrics)(
                message
            )

        self.serve_messages(one)

    def serve_messages(self, handle: Callable[[Message], Coroutine[Any, Any, None]]) -> None:
        """Run ``handle`` on each raw message, up to ``in_flight`` at once; it must not raise
        (an exception stops the worker without committing)."""
        self._handle_one = handle

    def serve_batches(self, handler: BatchHandler) -> None:
        """Hand up to ``in_flight`` messages at a time to ``handler``, in order (the sink),
        inside its lifespan."""
        self._handle_batch = handler
        self.lifespan = handler.lifespan

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        settings = self.settings
        served = None
        if settings.metrics_port is not None:
            served = await serve(
                self.metrics, lambda: self.ready, settings.metrics_bind, settings.metrics_port
            )
        try:
            await self._run()
        finally:
            if served is not None:
                await served.cleanup()

    async def _run(self) -> None:
        await ensure_topics(self.settings)
        self._producer = AIOKafkaProducer(
            **client_options(self.settings),
            acks="all",
            enable_idempotence=True,  # a retried send is stored once per partition
            linger_ms=PRODUCER_LINGER_MS,
            max_batch_size=PRODUCER_BATCH_BYTES,
        )
        await started(self._producer, self.settings)
        self._publisher = Publisher(self._producer, self.settings.topic_prefix)
        try:
            async with self.lifespan():
                await self._consume()
        finally:
            await self._producer.stop()

    async def _consume(self) -> None:
        options = self.options
        group = f"{self.settings.topic_prefix}-{self.name}"
        session_ms = int(options.session_timeout_s * 1000)
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=group,
            group_instance_id=f"{group}-{options.instance}" if options.instance else None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(session_ms // 6, 100),
            rebalance_timeout_ms=max(session_ms, 30_000),
            max_poll_interval_ms=3_600_000,  # liveness is the heartbeat; handlers have deadlines
            fetch_max_bytes=FETCH_MAX_BYTES,
            fetch_min_bytes=FETCH_MIN_BYTES,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=FETCH_MAX_BYTES // 4,
        )
        self._consumer = consumer
        consumer.subscribe(
            topics=[spec.name(self.settings.topic_prefix) for spec in self.inputs],
            listener=_Rebalance(self),
        )
        await started(consumer, self.settings)
        log.info("service=%s consuming %s as %s (in flight %d, instance %s)", self.name,
                 ", ".join(s.suffix for s in self.inputs), group, self.in_flight,
                 options.instance or "dynamic")  # fmt: skip
        committer = asyncio.create_task(self._commit_periodically())
        try:
            if self._handle_batch is not None:
                await self._batch_loop(consumer, self._handle_batch)
            elif self._handle_one is not None:
                await self._flow_loop(consumer, self._handle_one)
            else:
                raise RuntimeError(f"{self.name}: no handler (call serve or serve_batches)")
            await self._drain(grace_s=10.0)
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            with contextlib.suppress(KafkaError):
                await self._commit()
            await consumer.stop()

    async def _flow_loop(
        self, consumer: AIOKafkaConsumer, handle: Callable[[Message], Coroutine[Any, Any, None]]
    ) -> None:
        while not self.stopping.is_set():
            free = self.in_flight - len(self._tasks)
            if free <= 0:  # full: wait for a message to finish (or look at stopping again)
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._slot_freed.wait()
                continue
            batches = await consumer.getmany(timeout_ms=200, max_records=free)
            for tp, messages in batches.items():
                self.metrics.consumed.labels(self.name, tp.topic).inc(len(messages))
                ledger = self._ledgers.setdefault(tp, PartitionLedger())
                for message in messages:
                    ledger.start(message.offset)
                    task = asyncio.create_task(handle(message))
                    self._tasks[task] = (tp, message.offset)
                    task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        tp, offset = self._tasks.pop(task)
        self._slot_freed.set()
        if task.cancelled():  # its partition was revoked: the new owner redoes it
            return
        exc = task.exception()
        if exc is not None:
            self.on_fatal(f"service={self.name} {tp.topic}[{tp.partition}]@{offset}: {exc!r}")
            return
        ledger = self._ledgers.get(tp)
        if ledger is not None:
            ledger.finish(offset)
        self.metrics.finished.labels(self.name, tp.topic).inc()

    async def _batch_loop(
        self, consumer: AIOKafkaConsumer, handle: Callable[[list[Message]], Awaitable[None]]
    ) -> None:
        while not self.stopping.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=self.in_flight)
            messages = [m for ms in batches.values() for m in ms]
            if not messages:
                continue
            for tp, ms in batches.items():
                self.metrics.consumed.labels(self.name, tp.topic).inc(len(ms))
                ledger = self._ledgers.setdefault(tp, PartitionLedger())
                for message in ms:
                    ledger.start(message.offset)
            try:
                await handle(messages)
            except Exception as exc:
                self.on_fatal(f"service={self.name} batch of {len(messages)}: {exc!r}")
                return
            for tp, ms in batches.items():
                self.metrics.finished.labels(self.name, tp.topic).inc(len(ms))
                owned = self._ledgers.get(tp)
                if owned is None:  # revoked meanwhile: the new owner redoes it
                    continue
                for message in ms:
                    owned.finish(message.offset)
            await self._commit()

    async def _drain(self, grace_s: float) -> None:
        """On a graceful stop: let the messages in progress finish (bounded), then commit."""
        if self._tasks:
            log.info("service=%s stopping: waiting up to %.0fs for %d messages in progress",
                     self.name, grace_s, len(self._tasks))  # fmt: skip
            await asyncio.wait(list(self._tasks), timeout=grace_s)
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_EVERY_S)
            try:
                await self._commit()
            except KafkaError as exc:  # rebalancing or broker away: the next round retries
                log.warning("service=%s commit deferred: %s", self.name, exc)

    async def _commit(self, partitions: Sequence[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        owned = consumer.assignment()
        for tp in [tp for tp in self._ledgers if tp not in owned]:  # revoked meanwhile
            del self._ledgers[tp]
        offsets = {
            tp: ledger.committable
            for tp, ledger in self._ledgers.items()
            if (partitions is None or tp in partitions)
            and ledger.committable is not None
            and ledger.committable != self._committed.get(tp)
        }
        if not offsets:
            return
        await consumer.commit(offsets)
        self._committed.update(offsets)

    async def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Commit what finished on ``partitions``, give up the rest (the new owner redoes it)."""
        with contextlib.suppress(KafkaError):
            await self._commit(partitions)
        cancelled = [t for t, (tp, _) in self._tasks.items() if tp in partitions]
        for task in cancelled:
            task.cancel()
        if cancelled:
            await asyncio.gather(*cancelled, return_exceptions=True)
            log.info("service=%s gave up %d messages of revoked partitions",
                     self.name, len(cancelled))  # fmt: skip
        for tp in partitions:
            self._ledgers.pop(tp, None)
            self._committed.pop(tp, None)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.worker.revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.worker.joined = True
        log.info("service=%s assigned %s", self.worker.name,
                 ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)))  # fmt: skip


def run_worker(worker: Worker) -> None:
    """Run ``worker`` in this process until SIGTERM/SIGINT (then finish in-flight, commit)."""
    logging.getLogger("aiokafka").setLevel(logging.WARNING)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stopping.set)
        await worker.run()

    # The modules and the worker live as long as the process: out of the collector's sight,
    # each full collection walks only what messages allocate (fewer, shorter pauses).
    gc.freeze()
    asyncio.run(main())
