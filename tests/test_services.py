"""The services' per-row orchestration, in-process: the model is the scripted double's rules
behind the client's MockTransport, the publisher a list. No broker, no server."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from model_double import make_perg_script
from pipeline_harness import DATA_DIR
from tenacity import wait_none

from perg.client import (
    ClientPool,
    ClientTuning,
    Endpoint,
    MockTransport,
    TransportRequest,
    TransportResponse,
)
from perg.dataset import load_dataset
from perg.protocol import load_protocol
from schemas import (
    AlignRequest,
    DeadLetter,
    Generation,
    Record,
    RunContext,
    TopicSpec,
    Verdict,
    WorkItem,
)
from services._calls import ModelCaller
from services._runtime import PermanentError, RecordHandler, dead_letter_for
from services.aligner import align
from services.generator import answer_row
from services.judge import judge_generation

pytestmark = pytest.mark.skipif(not DATA_DIR.is_dir(), reason="needs ../shared/perg")

ENDPOINT = Endpoint("http://model.test/v1", "scripted")
SCRIPT = make_perg_script()


def reply(text: str, status: int = 200) -> TransportResponse:
    body = {"choices": [{"message": {"content": text}, "finish_reason": "stop"}], "usage": {}}
    return TransportResponse(status, orjson.dumps(body) if status == 200 else b"error")


def scripted(request: TransportRequest) -> TransportResponse:
    return reply(SCRIPT(request.json()["messages"]))


class Published:
    """A publisher that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[tuple[str, Record]] = []

    async def __call__(self, spec: TopicSpec, key: bytes, record: Record) -> None:
        self.records.append((spec.suffix, record))


def setup(handler: Any = scripted) -> tuple[WorkItem, ModelCaller, Any]:
    protocol = load_protocol("paper", DATA_DIR)
    item = load_dataset(DATA_DIR / "pergdata.csv").items[0]
    context = RunContext(
        run_id="run-1",
        model=ENDPOINT,
        judge=ENDPOINT,
        protocol="paper",
        protocol_sha256=protocol.sha256,
    )
    work = WorkItem(
        context=context,
        item=item,
        settings=["relevant", "mixed", "irrelevant"],
        methods=["zero_shot", "cot", "icl", "self_critic", "pref_aligner"],
    )
    pool = ClientPool(
        tuning=ClientTuning(max_retries=2),
        retry_wait=wait_none(),
        transport=lambda e: MockTransport(handler),
    )
    return work, ModelCaller(pool, context, protocol), protocol


async def test_a_row_publishes_its_baseline_answers_and_align_requests() -> None:
    work, caller, protocol = setup()
    published = Published()
    await answer_row(work, caller, protocol, published)
    kinds = sorted(
        (topic, getattr(r, "setting", None), getattr(r, "method", None))
        for topic, r in published.records
    )
    assert kinds.count(("generations", "none", "baseline")) == 1
    assert len([k for k in kinds if k[0] == "align"]) == 3
    answers = [r for t, r in published.records if t == "generations" and r.method != "baseline"]  # type: ignore[attr-defined]
    assert len(answers) == 3 * 4
    critiques = [g for g in answers if g.method == "self_critic"]
    assert all(g.stage == "critique" and len(g.calls) >= 2 for g in critiques)


async def test_aligner_and_judge_complete_the_row() -> None:
    work, caller, protocol = setup()
    published = Published()
    await answer_row(work, caller, protocol, published)
    requests = [r for t, r in published.records if isinstance(r, AlignRequest)]
    aligned = Published()
    for request in requests:
        await align(request, caller, protocol, aligned)
    assert {g.stage for _, g in aligned.records} == {"aligned"}  # type: ignore[attr-defined]
    verdicts = Published()
    generations = [
        r for _, r in [*published.records, *aligned.records] if isinstance(r, Generation)
    ]
    for generation in generations:
        await judge_generation(generation, caller, protocol, verdicts)
    rated = [v for _, v in verdicts.records if isinstance(v, Verdict)]
    assert len(rated) == 1 + 15
    for verdict in rated:
        g = verdict.generation
        assert verdict.answer is not None and verdict.extraction == "parsed"
        assert (verdict.judge_rating is None) == (g.setting in ("irrelevant", "none"))


async def test_a_permanent_failure_cancels_the_rows_other_calls() -> None:
    """One call of the row gets a 400; the hung sibling is cancelled and nothing is published
    after the failure (asyncio.TaskGroup)."""
    started, cancelled = [], []

    async def handler(request: TransportRequest) -> TransportResponse:
        messages = request.json()["messages"]
        system = " ".join(m["content"] for m in messages if m["role"] == "system")
        if "preference" not in system.lower():  # the baseline answers
            return reply(SCRIPT(messages))
        started.append(1)
        if len(started) == 1:
            return reply("", status=400)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise
        return reply("never")

    work, caller, protocol = setup(handler)
    published = Published()
    with pytest.raises(BaseExceptionGroup) as info:
        await answer_row(work, caller, protocol, published)
    assert info.group_contains(PermanentError)
    assert cancelled and len(cancelled) == len(started) - 1
    assert all(getattr(r, "method", "") != "zero_shot" for _, r in published.records)


class _Message:
    def __init__(self, value: bytes, offset: int = 3) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = (
            "p.work", 1, offset, b"run-1:0", value,
        )  # fmt: skip


class _Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def topic(self, spec: TopicSpec) -> str:
        return spec.name("p")

    async def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, value))


async def _handled(handle: Any, value: bytes) -> tuple[_Publisher, list[WorkItem]]:
    publisher, seen = _Publisher(), []

    async def record(work: WorkItem) -> None:
        seen.append(work)
        await handle(work)

    handler = RecordHandler("generator", WorkItem, record, publisher, retry_wait_s=0.0)  # type: ignore[arg-type]
    await handler(_Message(value))  # type: ignore[arg-type]
    return publisher, seen


async def test_invalid_message_is_dead_lettered_with_the_field() -> None:
    publisher, seen = await _handled(lambda w: asyncio.sleep(0), b'{"schema": "perg.work_item"}')
    assert seen == []
    [(topic, raw)] = publisher.sent
    letter = DeadLetter.decode(raw)
    assert topic == "p.dead-letters" and letter.offset == 3
    assert "unsupported version" in letter.reason


async def test_failing_handler_is_retried_then_dead_lettered() -> None:
    work, _, _ = setup()

    async def fails(work: WorkItem) -> None:
        raise RuntimeError("model away")

    publisher, seen = await _handled(fails, work.encode())
    assert len(seen) == 3
    letter = DeadLetter.decode(publisher.sent[0][1])
    assert letter.reason.startswith("failed after 3 attempts: RuntimeError: model away")
    assert (letter.run_id, letter.row_id) == ("run-1", work.item.row_id)


async def test_permanent_error_is_dead_lettered_at_once() -> None:
    work, _, _ = setup()

    async def refuses(work: WorkItem) -> None:
        raise PermanentError("token variable not allowed")

    publisher, seen = await _handled(refuses, work.encode())
    assert len(seen) == 1
    assert DeadLetter.decode(publisher.sent[0][1]).reason == "token variable not allowed"


def test_dead_letter_of_a_large_message_is_bounded() -> None:
    value = b'{"x": "' + b"a" * 2_000_000 + b'"}'
    letter = dead_letter_for("sink", _Message(value), "too big " * 10_000)  # type: ignore[arg-type]
    encoded = letter.encode()
    assert len(encoded) < 200_000  # far below Kafka's 1 MB default
    assert letter.original_size == len(value)
    assert letter.original_sha256 == hashlib.sha256(value).hexdigest()
    assert len(letter.reason) == DeadLetter.MAX_REASON_CHARS
    assert DeadLetter.decode(encoded) == letter


def test_services_build_without_side_effects(tmp_path: Path) -> None:
    from perg.config import load_settings
    from services import SERVICES, aligner, generator, judge
    from services._runtime import WorkerOptions
    from services.sink import service as sink

    settings = load_settings()
    modules = {"generator": generator, "aligner": aligner, "judge": judge, "sink": sink}
    assert set(modules) == set(SERVICES)
    for name, module in modules.items():
        worker = module.build_app(settings, WorkerOptions(in_flight=5))
        assert (worker.name, worker.in_flight) == (name, 5)


def test_worker_refuses_zero_in_flight(capsys: pytest.CaptureFixture[str]) -> None:
    from perg.cli import main

    assert main(["worker", "generator", "--in-flight", "0"]) == 2
    assert "in_flight must be at least 1, got 0" in capsys.readouterr().err
