"""The sink's failure handling without a broker: the write lock, records the store rejects."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from fixtures.live.runs import make_spec, verdicts

from perg.config import Settings
from schemas import DeadLetter, Verdict
from services._runtime import WorkerOptions
from services.sink.service import Batch, Sink, build_app, open_store
from services.sink.store import ResultStore


def _settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(Settings.load(), db=tmp_path / "perg.duckdb", topic_prefix="t")


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
    def __init__(self, offset: int, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = (
            "t.verdicts", 0, offset, b"k", value,
        )  # fmt: skip


async def test_a_record_the_store_rejects_is_dead_lettered_and_the_rest_stored(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    sink = Sink(settings, build_app(settings, WorkerOptions()))
    sink._store = ResultStore(settings.db)
    spec = make_spec("run-p", 3)
    batch_verdicts = verdicts(spec, range(3))
    poisoned = batch_verdicts[4]

    def save(records: list[Verdict]) -> list[Any]:
        if poisoned in records:
            raise duckdb.ConversionException("Could not convert string 'x' to INT32")
        return sink.store.save_verdicts(records)

    batch = Batch()
    items = [(v, _Message(i, v.encode())) for i, v in enumerate(batch_verdicts)]
    stored = await sink.save("verdicts", save, items, batch)
    assert len(stored) == len(batch_verdicts) - 1
    [(letter, _)] = batch.letters
    assert isinstance(letter, DeadLetter) and letter.offset == 4
    assert "the store rejected it: ConversionException" in letter.reason
    assert letter.run_id == "run-p"
    await sink.save("dead_letters", sink.store.save_dead_letters, batch.letters, batch)
    [(count,)] = sink.store.con.execute("SELECT count(*) FROM dead_letters").fetchall()
    assert count == 1
    sink.store.close()


async def test_a_store_failure_not_the_records_is_retried_then_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    sink = Sink(settings, build_app(settings, WorkerOptions()))
    attempts = []

    def disk_full(records: list[Verdict]) -> None:
        attempts.append(len(records))
        raise duckdb.IOException("No space left on device")

    monkeypatch.setattr("services.sink.service.STORE_ATTEMPTS", 3)
    monkeypatch.setattr("services.sink.service.FIRST_RETRY_S", 0.01)
    with pytest.raises(duckdb.IOException):
        await sink.write("verdicts", disk_full, [])
    assert len(attempts) == 3
