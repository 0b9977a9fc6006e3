"""The contracts between the services: one versioned record type per topic.

    perg submit ──RunSpec──▶ runs (compacted)            ──▶ sink
                ──WorkItem──▶ work        ──▶ generator
    generator   ──Generation(stage=baseline)──▶ align    ──▶ aligner
    generator, aligner ──Generation──▶ generations       ──▶ judge
    judge       ──Verdict──▶ verdicts                    ──▶ sink
    sink        ──Result──▶ results (change feed of stored rows)
    any service ──DeadLetter──▶ dead-letters             ──▶ sink

Every record carries its idempotency key ``(run_id, row_id, setting, method, stage)``. The Kafka
message key is ``run_id:row_id``, so everything about one row of one run stays in order on one
partition. Secrets never travel: endpoints name the environment variable holding their token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from perg.client import Endpoint
from perg.dataset import Item
from perg.extraction import ExtractionPath, Extractor
from perg.protocol import Method, RoleLayout, Setting

from ._codec import Record

Stage = Literal["work", "baseline", "answer", "critique", "aligned", "verdict"]
# The no-preference baseline is stored once per (run, row) under this setting and method.
BASELINE_SETTING: Literal["none"] = "none"
BASELINE_METHOD: Literal["baseline"] = "baseline"
# The second no-preference answer of a run with a noise floor (--repeat-baseline).
BASELINE_REPEAT_METHOD: Literal["baseline_repeat"] = "baseline_repeat"
SettingOrNone = Setting | Literal["none"]
MethodOrBaseline = Method | Literal["baseline", "baseline_repeat"]


class IdempotencyKey(NamedTuple):
    run_id: str
    row_id: int
    setting: str
    method: str
    stage: str


def partition_key(run_id: str, row_id: int) -> bytes:
    """Kafka message key: all records of one (run, row) share a partition, in order."""
    return f"{run_id}:{row_id}".encode()


@dataclass(frozen=True, slots=True)
class Decoding:
    """How the model under test is decoded (perg.protocol.DECODING_PROFILES names them)."""

    temperature: float = 0.0
    seed: int | None = 42
    # Caps every stage's max_tokens (the protocol sets them per stage); None keeps the protocol's.
    max_tokens_cap: int | None = None
    profile: str = "custom"
    uncapped: bool = False  # send no per-stage limit (the paper's API models)
    top_p: float | None = None
    retry_temperature: float | None = None  # strict's parse re-asks

    def max_tokens(self, protocol_limit: int | None) -> int | None:
        limit = None if self.uncapped else protocol_limit
        if limit is None:
            return self.max_tokens_cap
        return min(limit, self.max_tokens_cap or limit)


@dataclass(frozen=True, slots=True)
class RunContext:
    """What every service needs to know about the run a record belongs to."""

    run_id: str
    model: Endpoint
    judge: Endpoint
    protocol: str
    protocol_sha256: str
    decoding: Decoding = field(default_factory=Decoding)
    layout: RoleLayout = "system"
    extractor: Extractor = "rules"
    extractor_endpoint: Endpoint | None = None  # the llm extractor's; None: the judge's
    lora_endpoint: Endpoint | None = None  # the lora extractor's completions endpoint
    repeat_baseline: bool = False  # generate the no-preference baseline twice (noise floor)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One model call: what it cost and how it ended."""

    stage: str
    latency_s: float
    attempts: int
    tokens_in: int | None = None
    tokens_out: int | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RunSpec(Record):
    SCHEMA = "perg.run_spec"

    context: RunContext
    created_at: str
    dataset_path: str
    dataset_sha256: str
    selection: str
    row_ids: list[int]
    settings: list[Setting]
    methods: list[Method]
    followed_threshold: int | None = None  # the protocol's judge.followed_threshold

    @property
    def expected_results(self) -> int:
        return len(self.row_ids) * len(self.settings) * len(self.methods)


@dataclass(frozen=True, slots=True)
class WorkItem(Record):
    """One row of one run: the generator answers every (setting, method) of it."""

    SCHEMA = "perg.work_item"

    context: RunContext
    item: Item
    settings: list[Setting]
    methods: list[Method]

    @property
    def key(self) -> IdempotencyKey:
        return IdempotencyKey(self.context.run_id, self.item.row_id, "*", "*", "work")


@dataclass(frozen=True, slots=True)
class Generation(Record):
    """A model's final text for one (run, row, setting, method), or the row's baseline."""

    SCHEMA = "perg.generation"

    context: RunContext
    item: Item
    setting: SettingOrNone
    method: MethodOrBaseline
    stage: Literal["baseline", "answer", "critique", "aligned"]
    response: str | None  # None: the structured output never parsed (strict protocol)
    baseline_response: str
    calls: list[CallRecord]
    parse_fallback: bool = False  # paper protocol: unparseable JSON, the earlier text kept
    parse_failure: bool = False  # strict protocol: unparseable JSON after bounded retries

    @property
    def key(self) -> IdempotencyKey:
        return IdempotencyKey(
            self.context.run_id, self.item.row_id, self.setting, self.method, self.stage
        )


@dataclass(frozen=True, slots=True)
class Verdict(Record):
    """The judge's reading of one generation: extracted option and preference rating."""

    SCHEMA = "perg.verdict"

    generation: Generation
    answer: str | None
    extraction: ExtractionPath
    judge_rating: int | None
    judge_outcome: Literal["followed", "not_followed", "unparseable", "not_applicable"] | None
    judge_raw: str | None
    calls: list[CallRecord]
    extractor: Extractor = "rules"
    rules_answer: str | None = None  # the rules parser's letter, whatever the extractor

    @property
    def key(self) -> IdempotencyKey:
        g = self.generation
        return IdempotencyKey(g.context.run_id, g.item.row_id, g.setting, g.method, "verdict")


@dataclass(frozen=True, slots=True)
class Result(Record):
    """A row as the sink stored it (the change feed of the results table)."""

    SCHEMA = "perg.result"

    run_id: str
    row_id: int
    setting: SettingOrNone
    method: MethodOrBaseline
    answer: str | None
    correct: bool
    judge_outcome: str | None
    stored_at: str

    @property
    def key(self) -> IdempotencyKey:
        return IdempotencyKey(self.run_id, self.row_id, self.setting, self.method, "result")


@dataclass(frozen=True, slots=True)
class DeadLetter(Record):
    """A message a service could not process: why, where from, and the original bytes."""

    SCHEMA = "perg.dead_letter"

    service: str
    topic: str
    partition: int
    offset: int
    reason: str
    original_b64: str
    failed_at: str
    run_id: str | None = None
    row_id: int | None = None
    setting: str | None = None
    method: str | None = None
    stage: str | None = None
