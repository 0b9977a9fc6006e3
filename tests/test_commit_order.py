"""Offsets are committed only up to the lowest unfinished message (faust-streaming #606)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from pipeline_harness import ROOT, wait_until

from services._runtime import PartitionLedger


def test_ledger_commits_the_finished_prefix_only() -> None:
    ledger = PartitionLedger()
    for offset in range(10, 15):
        ledger.start(offset)
    for offset in (11, 12, 13, 14):  # the head (10) is still in progress
        ledger.finish(offset)
    assert ledger.committable is None
    ledger.finish(10)
    assert ledger.committable == 15
    ledger.start(15)
    ledger.start(16)
    ledger.finish(16)
    assert ledger.committable == 15 and ledger.in_progress == 1
    ledger.finish(15)
    assert ledger.committable == 17 and ledger.in_progress == 0


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


async def _committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items()}


def _probe(
    bootstrap: str, prefix: str, out: Path, log: Path, *slow: str
) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "commit_probe.py"), "--bootstrap", bootstrap,
             "--prefix", prefix, "--out", str(out), *slow],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


@pytest.mark.kafka
def test_slow_head_message_survives_sigkill(kafka_broker: str, tmp_path: Path) -> None:
    """A slow head message, fast followers, SIGKILL, restart: the head is still processed."""
    prefix = f"c606-{uuid.uuid4().hex[:8]}"
    out, log = tmp_path / "processed.txt", tmp_path / "probe.log"
    first = _probe(kafka_broker, prefix, out, log, "--slow", "head")
    try:
        values = [b"head", b"f1", b"f2", b"f3", b"f4"]
        wait_until(lambda: "assigned" in log.read_text(), "the probe's partition assignment")
        asyncio.run(_produce(kafka_broker, f"{prefix}.work", values))
        wait_until(
            lambda: out.exists() and len(out.read_text().splitlines()) == 4,
            "the four fast followers",
        )
        tp = TopicPartition(f"{prefix}.work", 0)
        # several commit rounds pass; the commit must stay at the head (offset 0)
        for _ in range(3):
            committed = asyncio.run(_committed(kafka_broker, f"{prefix}-probe"))
            assert committed.get(tp, -1) in (-1, 0), committed
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    second = _probe(kafka_broker, prefix, out, log)
    try:
        wait_until(lambda: "0 head" in out.read_text().splitlines(), "the head message, redone")
        wait_until(
            lambda: asyncio.run(_committed(kafka_broker, f"{prefix}-probe")).get(tp) == 5,
            "the commit past every finished message",
        )
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=30)
