"""Sink: the one process that owns the DuckDB results file.

Consumes ``runs``, ``generations`` (stage progress), ``verdicts``, ``dead-letters``,
``cancels``, ``acceptances`` and ``gate-decisions`` in batches; every batch is one upsert
transaction per table keyed by the idempotency key, so redeliveries never duplicate a row,
and the batch's offsets are committed only after it is stored. It also serves the HTTP API
(status, metrics, live SQL, dashboard) and writes periodic Parquet snapshots.

Failures:
- the write lock is taken with backoff (a reader may hold the file briefly), for up to
  ``PERG_DB_LOCK_WAIT_S`` (120 s), each wait logged, then the sink exits 75;
- a record the store rejects as bad data (a DuckDB data or constraint error, found by
  retrying a failed batch record by record) is stored as a dead letter with the reason, and the
  batch moves on: invalid records never loop;
- any other store failure (disk full, I/O, a bug in the store's code) is retried with backoff,
  then the sink stops without committing (exit 70), so Kafka redelivers the batch to the
  restarted sink: a failure of the store is never made to look like bad data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import duckdb
from aiohttp import web
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from perg.config import Settings
from perg.errors import first_line
from perg.observe import Metrics
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
)
from schemas.topics import (
    ACCEPTANCES,
    CANCELS,
    DEAD_LETTERS,
    GATE_DECISIONS,
    GENERATIONS,
    RUNS,
    VERDICTS,
)
from services._runtime import Message, Worker, WorkerOptions, dead_letter_for
from services.sink.live.api import check_bind, create_app
from services.sink.live.query import QueryLimits
from services.sink.live.snapshots import write_snapshot
from services.sink.store import ResultStore

log = logging.getLogger("perg.services.sink")

R = TypeVar("R", bound=Record)
T = TypeVar("T")

DEFAULT_BATCH = 1000
STORE_ATTEMPTS = 6  # tries of a store write failing for a reason not the record's (backoff)
FIRST_RETRY_S = 0.5  # then doubling: 0.5 + 1 + 2 + 4 + 8 s in all
EXIT_LOCKED = 75  # EX_TEMPFAIL: the results file stayed locked by another process
# Failures that are the record's fault: retrying cannot help, the record is dead-lettered.
# Anything else (an I/O error, a TypeError of our own code) is the store's, never the record's.
DATA_ERRORS: tuple[type[Exception], ...] = (
    duckdb.DataError,  # conversion, out of range, type mismatch
    duckdb.IntegrityError,  # constraints
    duckdb.InvalidInputException,
    SchemaError,
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
                log.critical(
                    "service=sink %s is still locked after %.0fs: %s", settings.db, waited, exc
                )
                raise SystemExit(EXIT_LOCKED) from None
            log.warning(
                "service=sink waiting for the write lock on %s (another process holds "
                "it: %s); retry in %.1fs",
                settings.db,
                first_line(exc),
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@dataclass
class Batch:
    """One consumed batch, decoded by topic; ``rejected``: a dead letter for each message that
    failed to decode."""

    runs: list[tuple[RunSpec, Message]] = field(default_factory=list)
    generations: list[tuple[Generation, Message]] = field(default_factory=list)
    verdicts: list[tuple[Verdict, Message]] = field(default_factory=list)
    letters: list[tuple[DeadLetter, Message]] = field(default_factory=list)
    cancels: list[tuple[RunCancel, Message]] = field(default_factory=list)
    acceptances: list[tuple[Acceptance, Message]] = field(default_factory=list)
    decisions: list[tuple[GateDecision, Message]] = field(default_factory=list)
    rejected: list[DeadLetter] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Saved(Generic[R]):
    """What one save did: the records stored, and a dead letter for each record the store
    rejected as bad data."""

    stored: list[R]
    rejected: list[DeadLetter]


class Sink:
    """The sink's batch handler (:class:`services._runtime.BatchHandler`): opens the store
    and the API, then stores each batch."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.prefix = settings.topic_prefix
        self._store: ResultStore | None = None

    @property
    def store(self) -> ResultStore:
        if self._store is None:
            raise RuntimeError("the store opens when the sink starts")
        return self._store

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        settings = self.settings
        self._store = await asyncio.to_thread(open_store, settings, settings.db_lock_wait_s)
        check_bind(settings.sink_bind, settings.sink_token)
        app = create_app(
            self.store,
            token=settings.sink_token,
            limits=QueryLimits.from_settings(settings),
            public_hosts=settings.sink_public_hosts,
            data_dir=settings.data_dir,
            metrics=self.metrics,
        )
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, settings.sink_bind, settings.sink_port).start()
        log.info("service=sink API on http://%s:%d", settings.sink_bind, settings.sink_port)
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
        directory = self.settings.db.parent / "snapshots"
        while True:
            await asyncio.sleep(self.settings.snapshot_every_s)
            try:
                path = await _in_thread_to_the_end(write_snapshot, self.store, directory)
                log.debug("service=sink snapshot %s", path)
            except Exception:
                log.warning("service=sink snapshot failed", exc_info=True)

    # -- one batch --------------------------------------------------------------------------

    async def __call__(self, messages: list[Message]) -> None:
        """Store one batch; raises (after retries) only when the store itself fails."""
        batch = self.decode(messages)
        for spec, _ in batch.runs:
            log.info(
                "service=sink run=%s registered (%d results expected)",
                spec.context.run_id,
                spec.expected_results,
            )
        for cancel, _ in batch.cancels:
            log.info("service=sink run=%s cancelled (%s)", cancel.run_id, cancel.reason)
        store = self.store
        saves = (
            await self.save("runs", self._save_runs, batch.runs),
            await self.save("progress", store.save_progress, batch.generations),
            await self.save("verdicts", store.save_verdicts, batch.verdicts),
            await self.save("run_cancels", store.save_cancels, batch.cancels),
            await self.save("acceptances", store.save_acceptances, batch.acceptances),
            await self.save("gate_decisions", store.save_gate_decisions, batch.decisions),
        )
        rejected = [*batch.rejected, *(letter for saved in saves for letter in saved.rejected)]
        # Dead letters come last: every rejection above is one of them. Saving them may reject
        # a dead letter read from Kafka; the letter the sink makes for it is saved in a second
        # round (and one of the sink's own letters is never rejected into a third: it raises).
        letters: list[tuple[DeadLetter, Message | None]] = [*batch.letters]
        letters += [(letter, None) for letter in rejected]
        saved = await self.save("dead_letters", self.store.save_dead_letters, letters)
        await self.save(
            "dead_letters", self.store.save_dead_letters, [(d, None) for d in saved.rejected]
        )
        if batch.verdicts:
            log.info("service=sink stored %d verdicts", len(batch.verdicts))

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
                batch.rejected.append(self.reject(message, f"invalid {record_type.SCHEMA}: {exc}"))
        return batch

    def reject(self, message: Message, reason: str) -> DeadLetter:
        """The dead letter of a record the sink cannot use (stored here: the end of the line)."""
        letter = dead_letter_for("sink", message, reason)
        log.error(
            "service=sink dead-letter %s[%d]@%d run=%s row=%s: %s",
            message.topic,
            message.partition,
            message.offset,
            letter.run_id,
            letter.row_id,
            letter.reason,
        )
        self.metrics.dead_lettered.labels("sink", message.topic).inc()
        return letter

    async def save(
        self,
        table: str,
        write: Callable[[list[R]], None],
        items: Sequence[tuple[R, Message | None]],
    ) -> Saved[R]:
        """Store ``items`` in one transaction (counted as ``table``'s rows written). When the
        store rejects them as bad data, each record is stored alone and the ones it rejects
        get a dead letter; any other failure propagates (:meth:`write` retried it)."""
        records = [record for record, _ in items]
        if not records:
            return Saved([], [])
        try:
            await self.write(table, write, records)
            return Saved(records, [])
        except DATA_ERRORS as exc:
            if len(items) > 1:
                alone = [await self.save(table, write, [item]) for item in items]
                return Saved(
                    [r for saved in alone for r in saved.stored],
                    [d for saved in alone for d in saved.rejected],
                )
            message = items[0][1]
            if message is None:  # a dead letter the sink built itself: never loop on it
                raise
            reason = f"the store rejected it: {type(exc).__name__}: {exc}"
            return Saved([], [self.reject(message, reason)])

    async def write(self, table: str, write: Callable[[list[R]], None], records: list[R]) -> None:
        """``write(records)`` in a thread; a failure that is not bad data is retried with
        backoff (``STORE_ATTEMPTS`` tries in all), then raised."""
        retrying = AsyncRetrying(
            retry=retry_if_not_exception_type(DATA_ERRORS),
            stop=stop_after_attempt(STORE_ATTEMPTS),
            wait=wait_exponential(multiplier=FIRST_RETRY_S),
            before_sleep=_log_store_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                started = time.perf_counter()
                await _in_thread_to_the_end(write, records)
        self.metrics.write_seconds.labels(table).observe(time.perf_counter() - started)
        self.metrics.rows_written.labels(table).inc(len(records))


async def _in_thread_to_the_end(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)`` in a thread, which a cancellation cannot stop: a cancelled caller waits
    for it before the cancellation goes on, so the store is never closed under a write (DuckDB
    refuses to close a connection that is busy, and the sink would end in a traceback)."""
    done = asyncio.ensure_future(asyncio.to_thread(call, *args))
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        await asyncio.wait([done])
        if not done.cancelled():
            done.exception()  # retrieved (or asyncio logs it): the cancellation is what goes on
        raise


def _log_store_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "service=sink store write failed (%s: %s); retry %d/%d in %.1fs",
        type(exc).__name__,
        exc,
        state.attempt_number,
        STORE_ATTEMPTS - 1,
        delay,
    )


def build_app(settings: Settings, options: WorkerOptions) -> Worker:
    """The sink worker: stores runs, progress, verdicts, dead letters, cancellations,
    acceptances and gate decisions; serves the API."""
    inputs = (RUNS, GENERATIONS, VERDICTS, DEAD_LETTERS, CANCELS, ACCEPTANCES, GATE_DECISIONS)
    worker = Worker("sink", settings, options, inputs, in_flight=DEFAULT_BATCH)
    worker.serve_batches(Sink(settings, worker.metrics))
    return worker
