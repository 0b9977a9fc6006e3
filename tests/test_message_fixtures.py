"""Messages recorded by earlier releases (tests/fixtures/messages/<release>/) still decode and
are processed by today's workers: the generator, aligner and judge over the scripted model
double (MockTransport), the sink into a fresh store. None is dead-lettered."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from model_double import inst_messages, make_perg_script
from pipeline_harness import DATA_DIR
from tenacity import wait_none

from perg.client import ClientPool, MockTransport, TransportRequest, TransportResponse
from perg.config import load_settings
from perg.protocol import Protocol, load_protocol
from schemas import Record, TopicSpec
from schemas.topics import ALL_TOPICS, DEAD_LETTERS
from services._calls import ModelCaller
from services._runtime import RecordHandler, WorkerOptions
from services.aligner import align
from services.generator import answer_row
from services.judge import judge_generation
from services.sink.service import Sink, build_app
from services.sink.store import ResultStore

pytestmark = pytest.mark.skipif(not DATA_DIR.is_dir(), reason="needs ../shared/perg")

FIXTURES = Path(__file__).parent / "fixtures" / "messages"
RELEASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir() and p.name != "__pycache__")
TOPICS = {spec.suffix: spec for spec in ALL_TOPICS}
SCRIPT = make_perg_script()
MODEL_WORKERS: dict[str, Callable[..., Awaitable[None]]] = {
    "work": answer_row,
    "align": align,
    "generations": judge_generation,
}
TOKEN_VARIABLES = ("OPENAI_API_KEY", "HF_TOKEN")
# Topics a later release removed: their recorded messages stay (nothing reads them any more).
REMOVED_TOPICS = {"results"}  # no consumer; the sink stopped publishing it after 0.1.0
SINK_TOPICS = (
    "runs",
    "generations",
    "verdicts",
    "dead-letters",
    "cancels",
    "acceptances",
    "gate-decisions",
)


def recorded(release: str, topic: str) -> list[bytes]:
    return [path.read_bytes() for path in sorted((FIXTURES / release / topic).glob("*.json"))]


def scripted(request: TransportRequest) -> TransportResponse:
    body = request.json()
    text = SCRIPT(body["messages"] if "messages" in body else inst_messages(body["prompt"]))
    choice = {"message": {"content": text}, "text": text, "finish_reason": "stop"}
    return TransportResponse(200, orjson.dumps({"choices": [choice], "usage": {}}))


class _Message:
    def __init__(self, topic: str, offset: int, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = (
            topic,
            0,
            offset,
            b"k",
            value,
        )


class _Publisher:
    """The worker's publisher, kept in lists: records published, raw dead letters sent."""

    def __init__(self) -> None:
        self.published: list[Record] = []
        self.dead_letters: list[bytes] = []

    def topic(self, spec: TopicSpec) -> str:
        return spec.name("p")

    async def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        assert topic == DEAD_LETTERS.name("p")
        self.dead_letters.append(value)

    async def __call__(self, spec: TopicSpec, key: bytes, record: Record) -> None:
        self.published.append(record)

    async def publish_many(self, spec: TopicSpec, records: list[tuple[bytes, Record]]) -> None:
        self.published.extend(record for _, record in records)


def test_every_release_recorded_every_topic() -> None:
    assert RELEASES, "no recorded release"
    for release in RELEASES:
        assert {p.name for p in (FIXTURES / release).iterdir()} - REMOVED_TOPICS == set(TOPICS)


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("topic", sorted(TOPICS))
def test_recorded_messages_decode(release: str, topic: str) -> None:
    for raw in recorded(release, topic):
        TOPICS[topic].record.decode(raw.strip())


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("topic", sorted(MODEL_WORKERS))
async def test_model_workers_process_recorded_messages(
    release: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in TOKEN_VARIABLES:  # the recorded endpoints' token variables
        monkeypatch.setenv(variable, "test-token")
    pool = ClientPool(
        retry_wait=wait_none(),
        transport=lambda e: MockTransport(scripted),
        token_envs=TOKEN_VARIABLES,
    )
    protocols = {name: load_protocol(name, DATA_DIR) for name in ("paper", "strict")}
    publisher = _Publisher()
    orchestrate = MODEL_WORKERS[topic]

    async def handle(record: Any) -> None:
        protocol: Protocol = protocols[record.context.protocol]
        caller = ModelCaller(pool, record.context, protocol)
        await orchestrate(record, caller, protocol, publisher)

    spec = TOPICS[topic]
    handler = RecordHandler(topic, spec.record, handle, publisher, retry_wait_s=0.0)  # type: ignore[arg-type]
    messages = recorded(release, topic)
    for offset, raw in enumerate(messages):
        await handler(_Message(spec.name("p"), offset, raw))  # type: ignore[arg-type]
    assert publisher.dead_letters == []
    assert len(publisher.published) >= len(messages)


@pytest.mark.parametrize("release", RELEASES)
async def test_the_sink_stores_recorded_messages(release: str, tmp_path: Path) -> None:
    settings = dataclasses.replace(load_settings(), db=tmp_path / "perg.duckdb", topic_prefix="p")
    worker = build_app(settings, WorkerOptions())
    sink = Sink(settings, worker.metrics)
    sink._store = ResultStore(settings.db)
    messages = [
        _Message(TOPICS[topic].name("p"), offset, raw)
        for topic in SINK_TOPICS
        for offset, raw in enumerate(recorded(release, topic))
    ]
    await sink(messages)  # type: ignore[arg-type]
    con = sink.store.con
    [(letters,)] = con.execute("SELECT count(*) FROM dead_letters").fetchall()
    assert letters == len(recorded(release, "dead-letters"))  # none added by the sink
    [(runs,)] = con.execute("SELECT count(*) FROM runs").fetchall()
    assert runs == len(recorded(release, "runs"))
    keys = {
        (
            v["generation"]["context"]["run_id"],
            v["generation"]["item"]["row_id"],
            v["generation"]["setting"],
            v["generation"]["method"],
        )
        for v in map(orjson.loads, recorded(release, "verdicts"))
    }
    answers = {key for key in keys if key[3] not in ("baseline", "baseline_repeat")}
    [(results,)] = con.execute("SELECT count(*) FROM results").fetchall()
    [(baselines,)] = con.execute("SELECT count(*) FROM baselines").fetchall()
    assert (results, baselines) == (len(answers), len({k for k in keys if k[3] == "baseline"}))
    sink.store.close()
