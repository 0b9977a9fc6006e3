"""The sink's failure handling without a broker: the write lock, records the store rejects."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from aiokafka.structs import TopicPartition
from fixtures.live.runs import make_spec, verdicts

from perg.config import Settings, load_settings
from perg.observe import Metrics
from schemas import DeadLetter, Verdict
from services._runtime import WorkerOptions
from services.sink.service import Sink, _in_thread_to_the_end, build_app, open_store
from services.sink.store import ResultStore


def _settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(load_settings(), db=tmp_path / "perg.duckdb", topic_prefix="t")


def _hold_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the results file (as a reader that keeps it open would)."""
    code = (
        "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
        "print('held', flush=True); time.sleep(float(sys.argv[2]))"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(db), str(seconds)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_sink_waits_for_the_write_lock_then_opens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    ResultStore(settings.db).close()
    holder = _hold_lock(settings.db, 1.5)
    started = time.monotonic()
    store = open_store(settings, wait_s=30)
    store.close()
    holder.wait()
    assert time.monotonic() - started >= 0.5
    assert "waiting for the write lock on" in caplog.text


def test_sink_gives_up_on_a_lock_held_too_long(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    ResultStore(settings.db).close()
    holder = _hold_lock(settings.db, 30)
    try:
        with pytest.raises(SystemExit) as info:
            open_store(settings, wait_s=0.5)
        assert info.value.code == 75
    finally:
        holder.kill()
        holder.wait()


class _Message:
    def __init__(self, offset: int, value: bytes, topic: str = "t.verdicts") -> None:
        self.topic, self.partition, self.offset, self.key, self.value = (
            topic, 0, offset, b"k", value,
        )  # fmt: skip


def _dead_lettered(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "perg_messages_dead_lettered_total", {"service": "sink", "topic": "t.verdicts"}
    )
    return value or 0.0


async def test_a_record_the_store_rejects_is_dead_lettered_and_the_rest_stored(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    sink = Sink(settings, Metrics("sink"))
    sink._store = ResultStore(settings.db)
    spec = make_spec("run-p", 3)
    batch_verdicts = verdicts(spec, range(3))
    poisoned = batch_verdicts[4]

    def save(records: list[Verdict]) -> None:
        if poisoned in records:
            raise duckdb.ConversionException("Could not convert string 'x' to INT32")
        sink.store.save_verdicts(records)

    items = [(v, _Message(i, v.encode())) for i, v in enumerate(batch_verdicts)]
    saved = await sink.save("verdicts", save, items)
    assert saved.stored == [v for v in batch_verdicts if v is not poisoned]
    [letter] = saved.rejected
    assert isinstance(letter, DeadLetter) and letter.offset == 4
    assert "the store rejected it: ConversionException" in letter.reason
    assert letter.run_id == "run-p"
    await sink.save("dead_letters", sink.store.save_dead_letters, [(letter, None)])
    [(count,)] = sink.store.con.execute("SELECT count(*) FROM dead_letters").fetchall()
    assert count == 1
    sink.store.close()


async def test_a_store_failure_not_the_records_is_retried_then_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    sink = Sink(settings, Metrics("sink"))
    attempts = []

    def disk_full(records: list[Verdict]) -> None:
        attempts.append(len(records))
        raise duckdb.IOException("No space left on device")

    monkeypatch.setattr("services.sink.service.STORE_ATTEMPTS", 3)
    monkeypatch.setattr("services.sink.service.FIRST_RETRY_S", 0.01)
    with pytest.raises(duckdb.IOException):
        await sink.write("verdicts", disk_full, [])
    assert len(attempts) == 3


class _Consumer:
    """The consumer a batch loop reads: one batch of ``messages``, then nothing."""

    def __init__(self, messages: list[_Message]) -> None:
        self.tp = TopicPartition("t.verdicts", 0)
        self.batches = [{self.tp: messages}]
        self.commits: list[dict[TopicPartition, int]] = []

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[_Message]]:
        return self.batches.pop(0) if self.batches else {}

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)


async def test_a_bug_in_the_store_dead_letters_nothing_and_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TypeError of the store's own code is a store failure, not bad data: retried, then the
    worker stops without committing, and no record is dead-lettered."""
    monkeypatch.setattr("services.sink.service.STORE_ATTEMPTS", 2)
    monkeypatch.setattr("services.sink.service.FIRST_RETRY_S", 0.01)
    settings = _settings(tmp_path)
    worker = build_app(settings, WorkerOptions())
    sink = Sink(settings, worker.metrics)
    sink._store = ResultStore(settings.db)
    calls = []

    def buggy(records: list[Verdict]) -> None:
        calls.append(len(records))
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setattr(sink.store, "save_verdicts", buggy)
    batch_verdicts = verdicts(make_spec("run-t", 2), range(2))
    consumer = _Consumer([_Message(i, v.encode()) for i, v in enumerate(batch_verdicts)])
    fatal: list[str] = []
    worker.serve_batches(sink)
    worker.on_fatal = fatal.append
    worker._consumer = consumer  # type: ignore[assignment]
    await worker._batch_loop(consumer, sink)  # type: ignore[arg-type]

    assert calls == [len(batch_verdicts)] * 2  # the whole batch, retried; never record by record
    [reason] = fatal
    assert "TypeError" in reason
    assert consumer.commits == []
    [(letters,)] = sink.store.con.execute("SELECT count(*) FROM dead_letters").fetchall()
    assert letters == 0 and _dead_lettered(worker.metrics) == 0
    sink.store.close()


async def test_a_batch_stored_is_committed(tmp_path: Path) -> None:
    """The same loop with a working store: every verdict stored, the batch's offsets committed."""
    settings = _settings(tmp_path)
    worker = build_app(settings, WorkerOptions())
    sink = Sink(settings, worker.metrics)
    sink._store = ResultStore(settings.db)
    spec = make_spec("run-c", 2)
    batch_verdicts = verdicts(spec, range(2))
    messages = [_Message(0, spec.encode(), topic="t.runs")]
    messages += [_Message(i, v.encode()) for i, v in enumerate(batch_verdicts, start=1)]
    consumer = _Consumer(messages)
    fatal: list[str] = []
    worker.on_fatal = fatal.append
    worker._consumer = consumer  # type: ignore[assignment]
    worker.stopping.clear()

    async def stop_when_committed(offsets: dict[TopicPartition, int]) -> None:
        consumer.commits.append(offsets)
        worker.stopping.set()

    consumer.commit = stop_when_committed  # type: ignore[method-assign]
    await worker._batch_loop(consumer, sink)  # type: ignore[arg-type]
    assert fatal == []
    assert consumer.commits == [{consumer.tp: len(messages)}]
    [(stored,)] = sink.store.con.execute("SELECT count(*) FROM results").fetchall()
    [(baselines,)] = sink.store.con.execute("SELECT count(*) FROM baselines").fetchall()
    assert stored + baselines == len(batch_verdicts)
    sink.store.close()


async def test_a_cancelled_store_call_finishes_before_the_cancellation_goes_on(
    tmp_path: Path,
) -> None:
    """The sink is stopped (its handler cancelled) while a write runs in a thread: the store
    closes only after the write, where before DuckDB refused ("connection is busy") and the
    sink ended in a traceback."""
    store = ResultStore(tmp_path / "perg.duckdb")
    started = threading.Event()

    def slow_write() -> None:
        started.set()
        store.con.execute("SELECT count(*) FROM range(30000000)").fetchall()

    task = asyncio.create_task(_in_thread_to_the_end(slow_write))
    await asyncio.to_thread(started.wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    store.close()  # the write is over: nothing is busy
