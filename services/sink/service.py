"""Sink: the one process that owns the DuckDB results file.

Consumes ``runs``, ``generations`` (stage progress), ``verdicts``, ``dead-letters``,
``cancels``, ``acceptances`` and ``gate-decisions`` in batches; every batch is one upsert
transaction per table keyed by the idempotency key, so redeliveries never duplicate a row,
and the batch's offsets are committed only after it is stored. Stored rows are announced on
``results``. It also serves the HTTP API (status, metrics, live SQL, dashboard) and writes
periodic Parquet snapshots.

Failures:
- the write lock is taken with backoff (a reader may hold the file briefly), for up to
  ``PERG_DB_LOCK_WAIT_S`` (120 s), each wait logged, then the sink exits 75;
- a record the store rejects (found by retrying a failed batch record by record) is stored as
  a dead letter with the reason, and the batch moves on: invalid records never loop;
- any other store failure (disk full, I/O) is retried with backoff, then the sink stops without
  committing (exit 70), so Kafka redelivers the batch to the restarted sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import duckdb
from aiohttp import web

from perg.config import Settings, seconds_setting
from perg.errors import first_line
from schemas import (
    Acceptance,
    DeadLetter,
    GateDecision,
    Generation,
    Record,
    RunCancel,
    RunSpec,
    SchemaError,
    Verdict,
    partition_key,
)
from schemas.topics import (
    ACCEPTANCES,
    CANCELS,
    DEAD_LETTERS,
    GATE_DECISIONS,
    GENERATIONS,
    RESULTS,
    RUNS,
    VERDICTS,
)
from services._runtime import Message, Worker, WorkerOptions, dead_letter_for
from services.sink.live.api import check_bind, create_app
from services.sink.live.snapshots import write_snapshot
from services.sink.store import ResultStore

log = logging.getLogger("perg.services.sink")

R = TypeVar("R", bound=Record)

DEFAULT_BATCH = 1000
STORE_ATTEMPTS = 6  # tries of a store write failing for a reason not the record's (backoff)
FIRST_RETRY_S = 0.5  # then doubling: 0.5 + 1 + 2 + 4 + 8 s in all
EXIT_LOCKED = 75  # EX_TEMPFAIL: the results file stayed locked by another process
# Failures that are the record's fault: retrying cannot help, the record is dead-lettered.
RECORD_ERRORS: tuple[type[Exception], ...] = (
    duckdb.DataError,
    duckdb.IntegrityError,
    duckdb.InvalidInputException,
    ValueError,
    TypeError,
    OverflowError,
)


def open_store(settings: Settings, wait_s: float) -> ResultStore:
    """Open the results file for writing; wait (with backoff) while another process holds it."""
    started = time.monotonic()
    delay = 0.25
    while True:
        try:
            return ResultStore(settings.db)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            waited = time.monotonic() - started
            if waited >= wait_s:
                log.critical("stage=sink %s is still locked after %.0fs: %s", settings.db,
                             waited, exc)  # fmt: skip
                raise SystemExit(EXIT_LOCKED) from None
            log.warning("stage=sink waiting for the write lock on %s (another process holds "
                        "it: %s); retry in %.1fs", settings.db, first_line(exc),
                        delay)  # fmt: skip
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@dataclass
class Batch:
    """One consumed batch, decoded by topic; what failed to decode is already a dead letter."""

    runs: list[tuple[RunSpec, Message]] = field(default_factory=list)
    generations: list[tuple[Generation, Message]] = field(default_factory=list)
    verdicts: list[tuple[Verdict, Message]] = field(default_factory=list)
    letters: list[tuple[DeadLetter, Message | None]] = field(default_factory=list)
    cancels: list[tuple[RunCancel, Message]] = field(default_factory=list)
    acceptances: list[tuple[Acceptance, Message]] = field(default_factory=list)
    decisions: list[tuple[GateDecision, Message]] = field(default_factory=list)


class Sink:
    def __init__(self, settings: Settings, worker: Worker) -> None:
        self.settings = settings
        self.worker = worker
        self.prefix = settings.topic_prefix
        self._store: ResultStore | None = None

    @property
    def store(self) -> ResultStore:
        if self._store is None:
            raise RuntimeError("the store opens when the sink starts")
        return self._store

    @contextlib.asynccontextmanager
    async def lifespan(self, worker: Worker) -> AsyncIterator[None]:
        wait_s = seconds_setting("db_lock_wait_s", 120)
        self._store = await asyncio.to_thread(open_store, self.settings, wait_s)
        settings = self.settings
        check_bind(settings.sink_bind, settings.sink_token)
        app = create_app(self.store, token=settings.sink_token, metrics=worker.metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, settings.sink_bind, settings.sink_port).start()
        log.info("stage=sink API on http://%s:%d", settings.sink_bind, settings.sink_port)
        snapshots = asyncio.create_task(self._snapshots())
        try:
            yield
        finally:
            snapshots.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await snapshots
            await runner.cleanup()
            self.store.close()

    async def _snapshots(self) -> None:
        every_s = seconds_setting("snapshot_every_s", 30)
        directory = self.settings.db.parent / "snapshots"
        while True:
            await asyncio.sleep(every_s)
            try:
                path = await asyncio.to_thread(write_snapshot, self.store, directory)
                log.debug("stage=sink snapshot %s", path)
            except Exception:
                log.warning("stage=sink snapshot failed", exc_info=True)

    # -- one batch --------------------------------------------------------------------------

    async def store_batch(self, messages: list[Message]) -> None:
        batch = self.decode(messages)
        for spec, _ in batch.runs:
            log.info("stage=sink run=%s registered (%d results expected)",
                     spec.context.run_id, spec.expected_results)  # fmt: skip
        await self.save("runs", self._save_runs, batch.runs, batch)
        await self.save("progress", self.store.save_progress, batch.generations, batch)
        stored = await self.save("verdicts", self.store.save_verdicts, batch.verdicts, batch)
        for cancel, _ in batch.cancels:
            log.info("stage=sink run=%s cancelled (%s)", cancel.run_id, cancel.reason)
        await self.save("run_cancels", self.store.save_cancels, batch.cancels, batch)
        await self.save("acceptances", self.store.save_acceptances, batch.acceptances, batch)
        await self.save("gate_decisions", self.store.save_gate_decisions, batch.decisions, batch)
        # Dead letters come last: every rejection above is one of them. Saving them may reject
        # a dead letter read from Kafka; the letter the sink makes for it is saved in a second
        # round (and one of the sink's own letters is never rejected into a third).
        letters = list(batch.letters)
        await self.save("dead_letters", self.store.save_dead_letters, letters, batch)
        await self.save(
            "dead_letters", self.store.save_dead_letters, batch.letters[len(letters) :], batch
        )
        await self.worker.publisher.publish_many(
            RESULTS, [(partition_key(r.run_id, r.row_id), r) for r in stored]
        )
        if batch.verdicts:
            log.info("stage=sink stored %d verdicts", len(batch.verdicts))

    def _save_runs(self, specs: list[RunSpec]) -> None:
        for spec in specs:
            self.store.save_run(spec)

    def decode(self, messages: Sequence[Message]) -> Batch:
        batch = Batch()
        targets: dict[str, tuple[type[Record], list[Any]]] = {
            RUNS.name(self.prefix): (RunSpec, batch.runs),
            GENERATIONS.name(self.prefix): (Generation, batch.generations),
            VERDICTS.name(self.prefix): (Verdict, batch.verdicts),
            DEAD_LETTERS.name(self.prefix): (DeadLetter, batch.letters),
            CANCELS.name(self.prefix): (RunCancel, batch.cancels),
            ACCEPTANCES.name(self.prefix): (Acceptance, batch.acceptances),
            GATE_DECISIONS.name(self.prefix): (GateDecision, batch.decisions),
        }
        for message in messages:
            record_type, into = targets[message.topic]
            try:
                into.append((record_type.decode(message.value), message))
            except SchemaError as exc:
                self.reject(batch, message, f"invalid {record_type.SCHEMA}: {exc}")
        return batch

    def reject(self, batch: Batch, message: Message, reason: str) -> None:
        """Keep a record the sink cannot use as a dead letter (stored here: the end of the line)."""
        letter = dead_letter_for("sink", message, reason)
        log.error("stage=sink dead-letter %s[%d]@%d run=%s row=%s: %s", message.topic,
                  message.partition, message.offset, letter.run_id, letter.row_id,
                  letter.reason)  # fmt: skip
        self.worker.metrics.dead_lettered.labels("sink", message.topic).inc()
        batch.letters.append((letter, None))

    async def save(
        self,
        table: str,
        save: Callable[[list[R]], Any],
        items: Sequence[tuple[R, Message | None]],
        batch: Batch,
    ) -> list[Any]:
        """Store ``items`` in one transaction (counted as ``table``'s rows written) and return
        what ``save`` returned (as a list).
        When the store rejects the batch, each record is stored alone and the ones at fault
        become dead letters; failures that are not a record's fault propagate."""
        if not items:
            return []
        try:
            result = await self.write(table, save, [record for record, _ in items])
            return result if isinstance(result, list) else []
        except RECORD_ERRORS as exc:
            if len(items) > 1:
                stored: list[Any] = []
                for item in items:
                    stored.extend(await self.save(table, save, [item], batch))
                return stored
            message = items[0][1]
            if message is None:  # a dead letter the sink built itself: never loop on it
                raise
            self.reject(batch, message, f"the store rejected it: {type(exc).__name__}: {exc}")
            return []

    async def write(self, table: str, save: Callable[[list[R]], Any], records: list[R]) -> Any:
        metrics = self.worker.metrics
        delay = FIRST_RETRY_S
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                started = time.perf_counter()
                result = await asyncio.to_thread(save, records)
                metrics.write_seconds.labels(table).observe(time.perf_counter() - started)
                metrics.rows_written.labels(table).inc(len(records))
                return result
            except RECORD_ERRORS:
                raise
            except Exception as exc:
                if attempt == STORE_ATTEMPTS:
                    raise
                log.warning("stage=sink store write failed (%s: %s); retry %d/%d in %.1fs",
                            type(exc).__name__, exc, attempt, STORE_ATTEMPTS - 1,
                            delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")


def build_app(settings: Settings, options: WorkerOptions) -> Worker:
    """The sink worker: stores runs, progress, verdicts, dead letters, cancellations,
    acceptances and gate decisions; serves the API."""
    inputs = (RUNS, GENERATIONS, VERDICTS, DEAD_LETTERS, CANCELS, ACCEPTANCES, GATE_DECISIONS)
    worker = Worker("sink", settings, options, inputs, in_flight=DEFAULT_BATCH)
    sink = Sink(settings, worker)
    worker.lifespan = sink.lifespan
    worker.serve_batches(sink.store_batch)
    return worker
