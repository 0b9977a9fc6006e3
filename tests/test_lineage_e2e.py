"""Lineage flow and cancellation on the real broker: four workers as OS processes, the
scripted model double as model and judge (tests/pipeline_harness.py)."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from pipeline_harness import Pipeline, running_pipeline, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MAX_IN_FLIGHT = 4  # per endpoint and worker process
MODEL_WORKERS = 3  # two generators and the aligner call the model under test


@pytest.fixture
def pipeline(kafka_broker: str, tmp_path: Path) -> Iterator[Pipeline]:
    with running_pipeline(
        kafka_broker, tmp_path, f"lin-{uuid.uuid4().hex[:8]}", model_max_in_flight=MAX_IN_FLIGHT
    ) as running:
        yield running


def received(model_url: str) -> int:
    """Calls the double has received (counted on arrival, before its slots queue them)."""
    with urllib.request.urlopen(model_url.removesuffix("/v1") + "/stats", timeout=10) as answer:
        return int(orjson.loads(answer.read()).get("received", 0))


async def _unfinished(bootstrap: str, prefix: str, service: str, topic: str) -> int:
    """Messages of ``topic`` that ``service``'s group has not committed yet."""
    name = f"{prefix}.{topic}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(f"{prefix}-{service}")
        partitions = [tp for tp in committed if tp.topic == name]
        ends = await consumer.end_offsets(partitions) if partitions else {}
        return sum(ends[tp] - committed[tp].offset for tp in partitions)
    finally:
        await consumer.stop()
        await admin.close()


def finished_everything(pipeline: Pipeline) -> bool:
    return all(
        asyncio.run(_unfinished(pipeline.bootstrap, pipeline.prefix, service, topic)) == 0
        for service, topic in (
            ("generator", "work"),
            ("aligner", "align"),
            ("judge", "generations"),
        )
    )


def test_cancel_stops_the_model_calls_and_keeps_the_partial_results(pipeline: Pipeline) -> None:
    slow = pipeline.start_double("--slots", "4", "--service-s", "0.2")  # ~20 calls/s
    run_id = pipeline.submit(
        "--sample", "60", "--seed", "7",
        "--lineage", "chat-prod", "--version", "v2", model_url=slow,
    )  # fmt: skip
    wait_until(lambda: (pipeline.status(run_id) or {}).get("results_stored", 0) >= 10,
               "the first stored results")  # fmt: skip
    proc = pipeline.perg("cancel", run_id)
    assert proc.returncode == 0, proc.stderr
    at_cancel = received(slow)  # the sink has stored the cancellation: the workers saw it too

    # every message of the run is finished (committed) without calling the model again
    wait_until(lambda: finished_everything(pipeline), "the run's messages finished", 120, 0.5)
    new_calls = received(slow) - at_cancel
    assert new_calls <= MAX_IN_FLIGHT * MODEL_WORKERS, new_calls
    expected_calls = 60 * (1 + 3 * 5 + 3)  # baseline, 3 settings x 5 answers, 3 aligner rewrites
    print(f"model calls: {at_cancel} before the cancel, {new_calls} after it (bound "
          f"{MAX_IN_FLIGHT * MODEL_WORKERS}), of {expected_calls} for the whole run")  # fmt: skip
    assert received(slow) < expected_calls / 2

    status = pipeline.status(run_id)
    assert status is not None
    assert (status["state"], status["cancelled"], status["partial"]) == ("cancelled", True, True)
    assert 0 < status["results_stored"] < status["expected_results"]
    stored = pipeline.sql(f"SELECT count(*) AS n FROM results WHERE run_id = '{run_id}'")
    assert stored == [{"n": status["results_stored"]}]
    states = pipeline.sql(
        f"SELECT state, partial, lineage, version FROM run_states WHERE run_id = '{run_id}'"
    )
    assert states == [{"state": "cancelled", "partial": True, "lineage": "chat-prod",
                       "version": "v2"}]  # fmt: skip
    shown = pipeline.perg("status", run_id)
    assert "cancelled" in shown.stdout and "chat-prod" in shown.stdout
    refused = pipeline.perg("accept", run_id)
    assert refused.returncode == 2 and "cancelled" in refused.stderr
    unknown = pipeline.perg("cancel", "no-such-run")
    assert unknown.returncode == 2 and "unknown run 'no-such-run'" in unknown.stderr


def test_accept_gate_against_the_lineage_and_history(pipeline: Pipeline) -> None:
    rows = ("--sample", "12", "--seed", "7", "--methods", "zero_shot", "--lineage", "chat-prod")
    first = pipeline.submit(*rows, "--version", "v1")
    missing = pipeline.perg("gate", "--lineage", "chat-prod", first)
    assert missing.returncode == 2 and "no accepted run" in missing.stderr
    for run_id in (first,):
        proc = pipeline.perg("status", run_id, "--wait", "--timeout", "300", timeout=330)
        assert proc.returncode == 0, proc.stderr
    accepted = pipeline.perg("accept", first, "--note", "first deploy")
    assert accepted.returncode == 0, accepted.stderr
    second = pipeline.submit(*rows, "--version", "v2")
    proc = pipeline.perg("status", second, "--wait", "--timeout", "300", timeout=330)
    assert proc.returncode == 0, proc.stderr
    gate = pipeline.perg("gate", "--lineage", "chat-prod", second, "--accept-on-pass")
    assert gate.returncode == 0, gate.stdout[-2000:] + gate.stderr
    assert f"Reference: {first}" in gate.stdout

    def history() -> list[dict[str, object]]:
        proc = pipeline.perg("history", "chat-prod", "--json")
        assert proc.returncode == 0, proc.stderr
        rows: list[dict[str, object]] = orjson.loads(proc.stdout)
        return rows

    runs = wait_until(lambda: (h := history()) and h[-1]["verdict"] is not None and h,
                      "the gate's verdict stored")  # fmt: skip
    assert [r["run_id"] for r in runs] == [first, second]
    assert [r["version"] for r in runs] == ["v1", "v2"]
    assert [r["accepted"] for r in runs] == [True, True]
    assert [r["verdict"] for r in runs] == [None, "pass"]
    assert runs[1]["reference_run_id"] == first
    assert runs[0]["BR"] == runs[1]["BR"]  # the same double, the same answers
    reference = pipeline.sql(
        "SELECT run_id FROM acceptances WHERE lineage = 'chat-prod' ORDER BY accepted_at DESC "
        "LIMIT 1"
    )
    assert reference == [{"run_id": second}]
