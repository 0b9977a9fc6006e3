"""The contracts between the services: one versioned record type per topic.

    perg submit ──RunSpec──▶ runs (compacted)            ──▶ sink
                ──WorkItem──▶ work        ──▶ generator
    generator   ──AlignRequest──▶ align                  ──▶ aligner
    generator, aligner ──Generation──▶ generations       ──▶ judge, sink (progress)
    judge       ──Verdict──▶ verdicts                    ──▶ sink
    sink        ──Result──▶ results (change feed of stored rows)
    any service ──DeadLetter──▶ dead-letters             ──▶ sink

Every record carries its idempotency key ``(run_id, row_id, setting, method, stage)``. The Kafka
message key is ``run_id:row_id``, so everything about one row of one run stays in order on one
partition. Secrets never travel: endpoints name the environment variable holding their token.

Words: the *baseline* is the model's answer to a row without any preference (stored once per
run and row, setting ``"none"``, method ``"baseline"``); a :data:`Stage` names where in the
pipeline a record was made. Decoding validates what the store needs (row ids and counts fit
its INTEGER columns, timestamps parse, base64 is valid), so a record the store cannot write is
dead-lettered at the contract and never reaches the writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal, NamedTuple

from perg.client import Endpoint
from perg.dataset import Item
from perg.extraction import ExtractionPath, Extractor
from perg.protocol import Method, RoleLayout, Setting

from ._codec import (
    INT32_MAX,
    INT64_MAX,
    Base64Text,
    Finite,
    IntRange,
    IsoTimestamp,
    Record,
    SchemaError,
    check_int_range,
)

# Where in the pipeline a record was made: a work item, a generation (the row's baseline, a
# preference-conditioned answer, its self-critique, a Pref-Aligner rewrite), a verdict.
GenerationStage = Literal["baseline", "answer", "critique", "aligned"]
Stage = Literal["work", "align", GenerationStage, "verdict", "result"]

RowId = Annotated[int, IntRange(0, INT32_MAX)]  # the store's row_id is an INTEGER
Count = Annotated[int, IntRange(0, INT32_MAX)]
Timestamp = Annotated[str, IsoTimestamp()]
Seconds = Annotated[float, Finite()]

# The no-preference baseline is stored once per (run, row) under this setting and method.
BASELINE_SETTING: Literal["none"] = "none"
BASELINE_METHOD: Literal["baseline"] = "baseline"
# The second no-preference answer of a run with a noise floor (--repeat-baseline).
BASELINE_REPEAT_METHOD: Literal["baseline_repeat"] = "baseline_repeat"
SettingOrNone = Setting | Literal["none"]
MethodOrBaseline = Method | Literal["baseline", "baseline_repeat"]


class IdempotencyKey(NamedTuple):
    """What makes a record unique; redeliveries carry the same key and are upserted once."""

    run_id: str
    row_id: int
    setting: str
    method: str
    stage: Stage


def _check_item(item: Item, path: str) -> None:
    check_int_range(item.row_id, 0, INT32_MAX, f"{path}.row_id")


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
    """One model call: which prompt kind (``stage``), its wall time including retries, the
    number of attempts (1 + retries), token usage as the server reported it, finish reason."""

    stage: str
    latency_s: Seconds
    attempts: Annotated[int, IntRange(1, 1000)]
    tokens_in: Count | None = None
    tokens_out: Count | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RunSpec(Record):
    """A submitted run: what to evaluate (rows, settings, methods) against which endpoints,
    with the hashes of the dataset and protocol it was planned from."""

    SCHEMA = "perg.run_spec"

    context: RunContext
    created_at: Timestamp
    dataset_path: str
    dataset_sha256: str
    selection: str
    row_ids: list[RowId]
    settings: list[Setting]
    methods: list[Method]
    followed_threshold: int | None = None  # the protocol's judge.followed_threshold

    def check(self) -> None:
        if len(self.row_ids) * len(self.settings) * len(self.methods) > INT32_MAX:
            raise SchemaError(f"{self.SCHEMA}.row_ids: too many expected results")

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

    def check(self) -> None:
        _check_item(self.item, f"{self.SCHEMA}.item")

    @property
    def key(self) -> IdempotencyKey:
        return IdempotencyKey(self.context.run_id, self.item.row_id, "*", "*", "work")


@dataclass(frozen=True, slots=True)
class AlignRequest(Record):
    """Pref-Aligner stage 2 for one setting of one row: rewrite the row's baseline answer
    (``baseline_response``, made by the generator) for the setting's preference."""

    SCHEMA = "perg.align_request"

    context: RunContext
    item: Item
    setting: Setting
    baseline_response: str

    def check(self) -> None:
        _check_item(self.item, f"{self.SCHEMA}.item")

    @property
    def key(self) -> IdempotencyKey:
        return IdempotencyKey(
            self.context.run_id, self.item.row_id, self.setting, "pref_aligner", "align"
        )


@dataclass(frozen=True, slots=True)
class Generation(Record):
    """A model's final text for one (run, row, setting, method), or the row's baseline
    (setting ``"none"``, method ``"baseline"``, stage ``"baseline"``; its repeat for the noise
    floor has method ``"baseline_repeat"``).

    ``response`` is None when a structured rewrite never parsed under the strict protocol
    (``parse_failure``); under the paper protocol the earlier text is kept instead
    (``parse_fallback``). ``baseline_response`` is the row's baseline answer, which the judge
    compares against; ``calls`` are the model calls that made this text.
    """

    SCHEMA = "perg.generation"

    context: RunContext
    item: Item
    setting: SettingOrNone
    method: MethodOrBaseline
    stage: GenerationStage
    response: str | None
    baseline_response: str
    calls: list[CallRecord]
    parse_fallback: bool = False
    parse_failure: bool = False

    def check(self) -> None:
        _check_item(self.item, f"{self.SCHEMA}.item")
        no_preference = self.method in (BASELINE_METHOD, BASELINE_REPEAT_METHOD)
        if (self.stage == "baseline") != no_preference or no_preference != (
            self.setting == BASELINE_SETTING
        ):
            raise SchemaError(
                f"{self.SCHEMA}: stage {self.stage!r}, setting {self.setting!r} and method "
                f"{self.method!r} do not belong together"
            )

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
    answer: str | None  # the option letter extracted from the response
    extraction: ExtractionPath
    # the protocol's reading: strict keeps 1-5, paper any integer of the judge's tag (a 6 is 6)
    judge_rating: Annotated[int, IntRange(0, INT32_MAX)] | None
    judge_outcome: Literal["followed", "not_followed", "unparseable", "not_applicable"] | None
    judge_raw: str | None  # the judge's reply, as sent
    calls: list[CallRecord]
    extractor: Extractor = "rules"
    rules_answer: str | None = None  # the rules parser's letter, whatever the extractor

    def check(self) -> None:
        self.generation.check()

    @property
    def key(self) -> IdempotencyKey:
        g = self.generation
        return IdempotencyKey(g.context.run_id, g.item.row_id, g.setting, g.method, "verdict")


@dataclass(frozen=True, slots=True)
class Result(Record):
    """A row as the sink stored it (the change feed of the results table)."""

    SCHEMA = "perg.result"

    run_id: str
    row_id: RowId
    setting: SettingOrNone
    method: MethodOrBaseline
    answer: str | None
    correct: bool
    judge_outcome: str | None
    stored_at: Timestamp

    @property
    def key(self) -> IdempotencyKey:
        return IdempotencyKey(self.run_id, self.row_id, self.setting, self.method, "result")


@dataclass(frozen=True, slots=True)
class DeadLetter(Record):
    """A message a service could not process: why, where it came from, and a bounded copy.

    ``original_b64`` holds at most the first ``MAX_ORIGINAL_BYTES`` of the original message;
    ``original_size`` and ``original_sha256`` describe the whole of it, so a large message
    still fits the producer's limit and can be identified. The key fields are whatever could
    be read from the original (None when it was not even JSON).
    """

    SCHEMA = "perg.dead_letter"
    MAX_ORIGINAL_BYTES: ClassVar[int] = 64 * 1024
    MAX_REASON_CHARS: ClassVar[int] = 4000

    service: str
    topic: str
    partition: Annotated[int, IntRange(0, INT32_MAX)]
    offset: Annotated[int, IntRange(0, INT64_MAX)]
    reason: str
    original_b64: Annotated[str, Base64Text()]
    failed_at: Timestamp
    run_id: str | None = None
    row_id: RowId | None = None
    setting: str | None = None
    method: str | None = None
    stage: str | None = None
    original_size: Annotated[int, IntRange(0, INT64_MAX)] | None = None
    original_sha256: str | None = None

    def check(self) -> None:
        if len(self.original_b64) > 4 * (self.MAX_ORIGINAL_BYTES // 3 + 1):
            raise SchemaError(f"{self.SCHEMA}.original_b64: over {self.MAX_ORIGINAL_BYTES} bytes")
