"""Chaos suite: an operator's bad day on the real broker, workers as OS processes.

Every scenario evaluates the same 30-row sample (450 results, the scripted double's published
rules) on a capacity-limited double (so a run lasts long enough to be hurt) and must end with
every expected result stored exactly once and metrics equal to the fault-free run's (and to
the ones computed here from the double's rules). Scenarios:

* fault-free: the reference wall time and metrics;
* kills: 24 SIGKILLs spread over the four services (two generators), each restarted at once
  under its instance name, while ``perg status RUN --wait`` polls; recovery stall per crash
  = kill to the restarted worker's partitions assigned again;
* broker restart: the broker stopped and started again (same port) mid-run;
* model faults: 30% of calls fail (503 and 429 with Retry-After, connection resets, 30 s
  hangs), on the model and the judge;
* poison: malformed, contract-invalid (timestamps, row ids beyond INTEGER, bad base64) and
  oversized messages on every input topic, dead-lettered while the run completes.

The figures (stall per crash, wall time as a ratio to the fault-free run, retries and dead
letters) are printed (``pytest -s``) and written to ``chaos-report.json`` in the test's
temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from pipeline_harness import Pipeline, stopped_at_exit, wait_until
from test_pipeline_e2e import SAMPLE, SEED, assert_run_matches

from perg.local import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.chaos]

ROOT = Path(__file__).resolve().parent.parent
DOUBLE_SHAPE = ("--slots", "6", "--service-s", "0.05")  # 120 calls/s: a run lasts ~10 s
KILLS = 24
REPORT: dict[str, dict[str, Any]] = {}
REFERENCE_METRICS: list[list[dict[str, Any]]] = []  # the fault-free run's, once it ran


class ChaosBroker:
    """A broker of its own on fixed ports, so it can be restarted under the same address."""

    def __init__(self) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="perg-kafka-chaos-"))
        self.env = dict(
            os.environ,
            PERG_KAFKA_DIR=str(self.state),
            PERG_KAFKA_PORT=str(free_port()),
            PERG_KAFKA_CONTROLLER_PORT=str(free_port()),
        )
        self.bootstrap = ""

    def _script(self, *args: str) -> str:
        proc = subprocess.run(["bash", str(ROOT / "deploy" / "kafka.sh"), *args], env=self.env,
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"kafka.sh {args}: {proc.stderr[-2000:]}")
        return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""

    def start(self) -> str:
        self.bootstrap = self._script("start")
        return self.bootstrap

    def stop(self) -> None:
        self._script("stop")

    def remove(self) -> None:
        subprocess.run(["bash", str(ROOT / "deploy" / "kafka.sh"), "stop"], env=self.env,
                       capture_output=True, timeout=120, check=False)  # fmt: skip
        shutil.rmtree(self.state, ignore_errors=True)


@pytest.fixture(scope="module")
def broker() -> Iterator[ChaosBroker]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no java to run deploy/kafka.sh")
    chaos = ChaosBroker()
    try:
        chaos.start()
        yield chaos
    finally:
        chaos.remove()
        if REPORT:
            print("\nchaos report:\n" + orjson.dumps(REPORT, option=orjson.OPT_INDENT_2).decode())


@dataclass
class Chaos:
    pipeline: Pipeline
    run_id: str = ""
    started: float = 0.0
    stalls: dict[str, list[float]] = field(default_factory=dict)

    def submit(self, model_url: str | None = None) -> str:
        self.started = time.monotonic()
        self.run_id = self.pipeline.submit(
            "--sample", str(SAMPLE), "--seed", str(SEED), model_url=model_url
        )
        return self.run_id

    def progress(self) -> int:
        status = self.pipeline.status(self.run_id) or {}
        return int(status.get("results_stored", 0))

    def wait_done(self, timeout_s: float = 300) -> float:
        wait_until(lambda: (self.pipeline.status(self.run_id) or {}).get("done"),
                   f"run {self.run_id} to complete", timeout_s=timeout_s, poll_s=0.25)  # fmt: skip
        return time.monotonic() - self.started

    def kill_and_restart(self, name: str) -> None:
        """SIGKILL ``name``, start it again under the same instance name; record the stall
        (kill to its partitions assigned again) once the new process logs it."""
        workers = self.pipeline.workers
        log = workers.log_dir / f"{name}.log"
        assigned_before = log.read_text(errors="replace").count(" assigned ")
        killed = time.monotonic()
        workers.kill(name)
        service, index = name.rsplit("-", 1)
        workers.start(service, int(index))
        wait_until(lambda: log.read_text(errors="replace").count(" assigned ") > assigned_before,
                   f"{name} to take its partitions back", timeout_s=60, poll_s=0.05)  # fmt: skip
        self.stalls.setdefault(service, []).append(round(time.monotonic() - killed, 2))

    def metrics(self) -> list[dict[str, Any]]:
        proc = self.pipeline.perg("score", "--run", self.run_id, "--json")
        assert proc.returncode == 0, proc.stderr
        rows: list[dict[str, Any]] = orjson.loads(proc.stdout)
        return sorted(
            ({k: v for k, v in row.items() if k != "run_id"} for row in rows),
            key=lambda r: (r["setting"], r["method"], r["source"]),
        )

    def check_exactly_once(self) -> dict[str, Any]:
        assert_run_matches(self.pipeline, self.run_id)
        [counts] = self.pipeline.sql(
            "SELECT count(*) AS n, count(DISTINCT (row_id, setting, method)) AS distinct_n "
            f"FROM results WHERE run_id = '{self.run_id}'"
        )
        assert counts == {"n": SAMPLE * 15, "distinct_n": SAMPLE * 15}
        status = self.pipeline.status(self.run_id) or {}
        return {"retries": status.get("retries"), "run_dead_letters": status.get("dead_letters")}


@pytest.fixture
def chaos(broker: ChaosBroker, tmp_path: Path) -> Iterator[Chaos]:
    pipeline = Pipeline(broker.bootstrap, tmp_path, f"chaos-{uuid.uuid4().hex[:8]}")
    with stopped_at_exit(pipeline):
        pipeline.model_url = pipeline.start_double(*DOUBLE_SHAPE)
        pipeline.workers.start_all(generators=2)
        pipeline.wait_for_sink()
        yield Chaos(pipeline)


def _record(name: str, chaos: Chaos, wall_s: float, **figures: Any) -> None:
    reference = REPORT.get("fault_free", {}).get("wall_s")
    REPORT[name] = {
        "wall_s": round(wall_s, 1),
        "wall_ratio": round(wall_s / reference, 2) if reference else 1.0,
        **figures,
    }
    if REFERENCE_METRICS:
        assert chaos.metrics() == REFERENCE_METRICS[0]


# Order matters: the fault-free run comes first and gives the reference.


def test_fault_free(chaos: Chaos) -> None:
    chaos.submit()
    wall_s = chaos.wait_done()
    figures = chaos.check_exactly_once()
    REFERENCE_METRICS.append(chaos.metrics())
    _record("fault_free", chaos, wall_s, **figures)


def test_kills_of_every_service_with_a_status_poller(chaos: Chaos) -> None:
    rng = random.Random(606)
    chaos.submit()
    poller = chaos.pipeline.perg_background("status", chaos.run_id, "--wait", "--timeout", "600")
    names = ["generator-0", "generator-1", "aligner-0", "judge-0", "sink-0"]
    order = [names[i % len(names)] for i in range(KILLS)]
    rng.shuffle(order)
    for name in order:
        time.sleep(rng.uniform(0.05, 0.6))  # a random point of the run, not a readiness wait
        chaos.kill_and_restart(name)
    chaos.pipeline.wait_for_sink()
    wall_s = chaos.wait_done()
    figures = chaos.check_exactly_once()
    stalls = {s: {"mean_s": round(sum(v) / len(v), 2), "max_s": max(v), "kills": len(v)}
              for s, v in chaos.stalls.items()}  # fmt: skip
    _record("kills", chaos, wall_s, kills=KILLS, stall_per_crash=stalls, **figures)
    assert sum(len(v) for v in chaos.stalls.values()) == KILLS
    assert all(max(v) < 15 for v in chaos.stalls.values()), chaos.stalls
    # the reader polled through every sink restart and saw the run complete
    assert poller.wait(timeout=120) == 0, poller.stderr.read() if poller.stderr else ""


def test_broker_restart(chaos: Chaos, broker: ChaosBroker) -> None:
    chaos.submit()
    wait_until(lambda: chaos.progress() > 0, "the first stored results")
    down = time.monotonic()
    broker.stop()
    assert broker.start() == chaos.pipeline.bootstrap
    outage_s = time.monotonic() - down
    wall_s = chaos.wait_done()
    figures = chaos.check_exactly_once()
    _record("broker_restart", chaos, wall_s, broker_outage_s=round(outage_s, 1), **figures)


def test_model_faults_with_hangs(chaos: Chaos) -> None:
    faulty = chaos.pipeline.start_double(
        *DOUBLE_SHAPE, "--fault-percent", "30", "--hang-s", "30", "--fault-seed", "9"
    )
    chaos.pipeline.model_url = faulty  # the judge too
    chaos.submit(model_url=faulty)
    wall_s = chaos.wait_done(timeout_s=600)
    figures = chaos.check_exactly_once()
    with chaos.pipeline.http_get(faulty.removesuffix("/v1") + "/stats") as response:
        injected = {k: v for k, v in orjson.loads(response.read()).items() if k.startswith("fault")}
    _record("model_faults", chaos, wall_s, faults_injected=injected, **figures)
    assert figures["retries"] and figures["run_dead_letters"] == 0


def _poison(prefix: str, spec: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(topic, value): malformed, contract-invalid and oversized messages for every input."""
    created = orjson.dumps({**spec, "context": {**spec["context"], "run_id": "poison"},
                            "created_at": "noon"})  # fmt: skip
    letter = {
        "schema": "perg.dead_letter", "version": 1, "service": "x", "topic": "t",
        "partition": 0, "offset": 1, "reason": "r", "original_b64": "%%%",
        "failed_at": "2026-01-01T00:00:00",
    }  # fmt: skip
    huge = b'{"schema": "perg.work_item", "pad": "' + b"x" * 900_000 + b'"}'
    messages = [(topic, b"{not json") for topic in INPUTS]
    messages += [(topic, huge) for topic in INPUTS]
    messages += [("runs", created), ("dead-letters", orjson.dumps(letter))]
    return [(f"{prefix}.{topic}", value) for topic, value in messages]


INPUTS = ("runs", "work", "align", "generations", "verdicts", "dead-letters")


async def _publish(bootstrap: str, messages: list[tuple[str, bytes]], extra: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2**20)
    await producer.start()
    try:
        for i, (topic, value) in enumerate(messages):
            await producer.send_and_wait(topic, value, key=f"poison:{i}".encode())
        for value in extra:
            await producer.send_and_wait(messages[0][0].rsplit(".", 1)[0] + ".generations",
                                         value, key=b"poison:row")  # fmt: skip
    finally:
        await producer.stop()


def test_poison_on_every_topic(chaos: Chaos) -> None:
    chaos.submit()
    wait_until(lambda: chaos.progress() > 0, "the first stored results")
    # a schema-valid generation whose row id the store's INTEGER cannot hold
    [stored] = chaos.pipeline.sql("SELECT spec FROM runs WHERE run_id = '" + chaos.run_id + "'")
    spec = orjson.loads(stored["spec"])
    generation = {
        "schema": "perg.generation", "version": 1, "context": spec["context"],
        "item": {"row_id": 2**40, "question": "q", "options": ["a", "b"], "gold_option": "A",
                 "gold_answer": "a", "category": "", "source": "s", "preference": "p"},
        "setting": "relevant", "method": "zero_shot", "stage": "answer", "response": "A",
        "baseline_response": "A", "calls": [],
    }  # fmt: skip
    poison = _poison(chaos.pipeline.prefix, spec)
    asyncio.run(_publish(chaos.pipeline.bootstrap, poison, [orjson.dumps(generation)]))
    wall_s = chaos.wait_done()
    figures = chaos.check_exactly_once()
    # generations are read by the judge and the sink: each poison there is dead-lettered twice
    expected = len(poison) + 2 + 2

    def letters() -> list[dict[str, Any]]:
        return chaos.pipeline.sql(
            "SELECT topic, service, reason, original_size, octet_length(original) AS kept "
            "FROM dead_letters ORDER BY ALL"
        )

    found = wait_until(lambda: len(letters()) >= expected and letters(), "every dead letter")
    topics = {row["topic"].removeprefix(chaos.pipeline.prefix + ".") for row in found}
    assert topics == set(INPUTS)
    for row in found:
        if row["original_size"] and row["original_size"] > 64 * 1024:
            assert row["kept"] == 64 * 1024, row
    reasons = " | ".join(row["reason"] for row in found)
    for needle in ("not an ISO 8601 timestamp", "is outside [0, 2147483647]", "not valid base64"):
        assert needle in reasons
    _record("poison", chaos, wall_s, dead_letters=len(found), **figures)
