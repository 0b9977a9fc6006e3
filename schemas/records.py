"""The contracts between the services: one versioned record type per topic.

    perg submit ──RunSpec──▶ runs (compacted)            ──▶ sink
                ──WorkItem──▶ work        ──▶ generator
    generator   ──AlignRequest──▶ align                  ──▶ aligner
    generator, aligner ──Generation──▶ generations       ──▶ judge, sink (progress)
    judge       ──Verdict──▶ verdicts                    ──▶ sink
    any service ──DeadLetter──▶ dead-letters             ──▶ sink
    perg cancel ──RunCancel──▶ cancels (compacted)       ──▶ generator, aligner, judge, sink
    perg accept ──Acceptance──▶ acceptances (compacted, one key each: append-only) ──▶ sink
    perg gate   ──GateDecision──▶ gate-decisions (the same)                      ──▶ sink

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

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal, NamedTuple

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
from .values import Endpoint, ExtractionPath, Extractor, Item, Method, RoleLayout, Setting

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


# A lineage name or a version label: letters, digits and ``._-``, at most 64 characters.
LABEL_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_label(value: str | None, path: str) -> None:
    """SchemaError unless ``value`` is None or a valid lineage name / version label."""
    if value is not None and not LABEL_PATTERN.fullmatch(value):
        raise SchemaError(
            f"{path}: {value!r:.80} is not a valid name (letters, digits and ._- only, "
            "1 to 64 characters)"
        )


def _check_item(item: Item, path: str) -> None:
    check_int_range(item.row_id, 0, INT32_MAX, f"{path}.row_id")


def partition_key(run_id: str, row_id: int) -> bytes:
    """Kafka message key: all records of one (run, row) share a partition, in order."""
    return f"{run_id}:{row_id}".encode()


@dataclass(frozen=True, slots=True)
class FanOut:
    """What one row of a run generates (:func:`fan_out`): the generator's answers, the
    Pref-Aligner rewrites (one per setting, from the row's baseline) and the repeated
    baselines; besides them, always the one baseline."""

    answers: tuple[tuple[Setting, Method], ...]
    """The (setting, method) answers the generator makes: every method but pref_aligner."""
    aligned: tuple[Setting, ...]
    """The settings whose Pref-Aligner rewrite the aligner makes."""
    repeats: int
    """Repeated baselines (the noise floor): 0 or 1."""

    @property
    def results(self) -> int:
        """Results stored for the row: one per (setting, method)."""
        return len(self.answers) + len(self.aligned)

    @property
    def generations(self) -> int:
        """The generator's generations of the row: the baseline and the answers (the repeated
        baseline is counted by ``repeats``)."""
        return 1 + len(self.answers)


def fan_out(
    settings: Sequence[Setting], methods: Sequence[Method], repeat_baseline: bool
) -> FanOut:
    """The fan-out rule, in one place: which generations one row of a run needs. The
    generator makes them from it, :attr:`RunSpec.expected_results` counts them, and the
    store's run status (services.sink.store.run_statuses) takes its expected counts from it."""
    return FanOut(
        answers=tuple((s, m) for s in settings for m in methods if m != "pref_aligner"),
        aligned=tuple(settings) if "pref_aligner" in methods else (),
        repeats=1 if repeat_baseline else 0,
    )


@dataclass(frozen=True, slots=True)
class StageTokens:
    """A decoding profile's own max new tokens per stage, replacing the protocol's."""

    answer: Annotated[int, IntRange(1, INT32_MAX)]
    """Every answer (and the baseline)."""
    critic: Annotated[int, IntRange(1, INT32_MAX)]
    """The self-critic second pass."""
    aligner: Annotated[int, IntRange(1, INT32_MAX)]
    """Pref-Aligner stage 2."""


@dataclass(frozen=True, slots=True)
class Decoding:
    """How the run decodes the model under test (perg.protocol.DECODING_PROFILES names them);
    perg.generation turns it, with the protocol's limits, into each call's configuration."""

    temperature: float = 0.0
    """Sampling temperature of every call to the model under test."""
    seed: int | None = 42
    """Sampling seed sent with every call; None sends none."""
    max_tokens_cap: int | None = None
    """Caps every prompt's max_tokens (the protocol sets them per prompt kind); None keeps the
    protocol's."""
    profile: str = "custom"
    """The decoding profile's name (``perg submit --decoding``), or ``"custom"``."""
    uncapped: bool = False
    """Send no per-prompt limit (the paper's API models)."""
    top_p: float | None = None
    """Nucleus sampling; None leaves the server's default."""
    retry_temperature: float | None = None
    """Temperature of strict's parse re-asks; None keeps the protocol's."""
    stage_tokens: StageTokens | None = None
    """The profile's own per-stage limits (Janus, Qwen3); None keeps the protocol's."""
    thinking: bool | None = None
    """A thinking model's switch (``perg submit --thinking``), sent as the chat template's
    ``enable_thinking`` (off for Pref-Aligner stage 2); None sends none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """What every service needs to know about the run a record belongs to."""

    run_id: str
    """The run's id (``perg submit`` prints it)."""
    model: Endpoint
    """The model under test."""
    judge: Endpoint
    """The judge model rating whether a response follows the preference."""
    protocol: str
    """The protocol's name (``paper``, ``strict``...)."""
    protocol_sha256: str
    """SHA-256 of the protocol file the run was planned from."""
    decoding: Decoding = field(default_factory=Decoding)
    """How the model under test is decoded."""
    layout: RoleLayout = "system"
    """Where the system prompt goes: a system message, or merged into the user message."""
    extractor: Extractor = "rules"
    """How the option letter is read from a response: rules, an LLM, or a LoRA model."""
    extractor_endpoint: Endpoint | None = None
    """The llm extractor's endpoint; None uses the judge's."""
    lora_endpoint: Endpoint | None = None
    """The lora extractor's completions endpoint."""
    repeat_baseline: bool = False
    """Generate the no-preference baseline twice (the noise floor)."""
    constrain_rating: bool = False
    """The judge's Likert rating call asks for structured output that can only be
    ``"<answer>N</answer>"`` (N in 1..5), still read by the paper's rule; for small judges that
    otherwise never emit the tag (the demo's). Off by default: the paper's judge reasons before
    it rates. (Release 0.1.0 carried it as ``judge.constrain_rating``.)"""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    """One model call: which prompt kind (``stage``), its wall time including retries, the
    number of attempts (1 + retries), token usage as the server reported it, finish reason."""

    stage: str
    """What the call was for (``baseline``, ``answer``, ``critique``, ``aligned``, ``judge``,
    ``extraction``...)."""
    latency_s: Seconds
    """Wall time of the call, retries included, in seconds."""
    attempts: Annotated[int, IntRange(1, 1000)]
    """1 + the number of retries."""
    tokens_in: Count | None = None
    """Prompt tokens as the server reported them."""
    tokens_out: Count | None = None
    """Generated tokens as the server reported them."""
    finish_reason: str | None = None
    """Why generation stopped (``stop``, ``length``...), as the server reported it."""


@dataclass(frozen=True, slots=True)
class RunSpec(Record):
    """A submitted run: what to evaluate (rows, settings, methods) against which endpoints,
    with the hashes of the dataset and protocol it was planned from."""

    SCHEMA = "perg.run_spec"

    context: RunContext
    """The run's endpoints, protocol and decoding."""
    created_at: Timestamp
    """When the run was submitted (ISO 8601, UTC)."""
    dataset_path: str
    """The dataset file the rows were read from."""
    dataset_sha256: str
    """SHA-256 of that file."""
    selection: str
    """How the rows were chosen, in words (e.g. ``stratified sample of 500, seed 0``)."""
    row_ids: list[RowId]
    """The dataset rows of the run."""
    settings: list[Setting]
    """The preference settings evaluated."""
    methods: list[Method]
    """The prompting methods evaluated."""
    followed_threshold: int | None = None
    """The protocol's ``judge.followed_threshold``: the lowest rating that counts as followed."""
    lineage: str | None = None
    """The deployed model this run evaluates (``perg submit --lineage``); None: no lineage."""
    version_label: str | None = None
    """The version under test: an image tag, a git SHA, a model revision (``--version``;
    not ``version``, which every message's envelope uses for its contract's version)."""
    shuffle_seed: int | None = None
    """Seed of the shuffle within strata that ordered ``row_ids`` (the order the work was
    published in); None: runs submitted before the shuffle, in dataset order."""

    def check(self) -> None:
        if self.expected_results > INT32_MAX:
            raise SchemaError(f"{self.SCHEMA}.row_ids: too many expected results")
        check_label(self.lineage, f"{self.SCHEMA}.lineage")
        check_label(self.version_label, f"{self.SCHEMA}.version_label")

    @property
    def fan_out(self) -> FanOut:
        """What each row of the run generates."""
        return fan_out(self.settings, self.methods, self.context.repeat_baseline)

    @property
    def expected_results(self) -> int:
        """Results the run stores when complete: rows x its rows' fan-out."""
        return len(self.row_ids) * self.fan_out.results


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkItem(Record):
    """One row of one run: the generator answers every (setting, method) of it."""

    SCHEMA = "perg.work_item"

    context: RunContext
    """The run the row belongs to."""
    item: Item
    """The dataset row: question, options, gold answer and preferences."""
    settings: list[Setting]
    """The preference settings to answer."""
    methods: list[Method]
    """The prompting methods to answer with."""

    def check(self) -> None:
        _check_item(self.item, f"{self.SCHEMA}.item")

    @property
    def fan_out(self) -> FanOut:
        """What the row generates."""
        return fan_out(self.settings, self.methods, self.context.repeat_baseline)

    @property
    def key(self) -> IdempotencyKey:
        """The record's idempotency key (setting and method ``"*"``: the whole row)."""
        return IdempotencyKey(self.context.run_id, self.item.row_id, "*", "*", "work")


@dataclass(frozen=True, slots=True, kw_only=True)
class AlignRequest(Record):
    """Pref-Aligner stage 2 for one setting of one row: rewrite the row's baseline answer
    (``baseline_response``, made by the generator) for the setting's preference."""

    SCHEMA = "perg.align_request"

    context: RunContext
    """The run the row belongs to."""
    item: Item
    """The dataset row."""
    setting: Setting
    """The preference setting whose preference the rewrite follows."""
    baseline_response: str
    """The row's no-preference answer, to be rewritten."""

    def check(self) -> None:
        _check_item(self.item, f"{self.SCHEMA}.item")

    @property
    def key(self) -> IdempotencyKey:
        """The record's idempotency key (method ``pref_aligner``, stage ``align``)."""
        return IdempotencyKey(
            self.context.run_id, self.item.row_id, self.setting, "pref_aligner", "align"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
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
    """The run the row belongs to."""
    item: Item
    """The dataset row."""
    setting: SettingOrNone
    """The preference setting, ``"none"`` for the baseline."""
    method: MethodOrBaseline
    """The prompting method, ``"baseline"`` / ``"baseline_repeat"`` for the baseline."""
    stage: GenerationStage
    """Which text this is: the baseline, an answer, a self-critique or an aligned rewrite."""
    response: str | None
    """The final text; None when a strict structured rewrite never parsed."""
    baseline_response: str
    """The row's no-preference answer, which the judge compares against."""
    calls: list[CallRecord]
    """The model calls that made this text."""
    parse_fallback: bool = False
    """A rewrite did not parse and the earlier text was kept (paper protocol)."""
    parse_failure: bool = False
    """A rewrite never parsed and ``response`` is None (strict protocol)."""
    thinking: str | None = None
    """A thinking model's thinking, kept apart from ``response`` (the text after
    ``</think>``); None when the model did not think."""
    rewrite_read: str | None = None
    """How a self-critic / aligner JSON rewrite was read (perg.protocol.RewriteReading.how:
    json, json_missing, regex, not_object, unreadable); None for plain answers."""

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


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict(Record):
    """The judge's reading of one generation: extracted option and preference rating."""

    SCHEMA = "perg.verdict"

    generation: Generation
    """The generation judged."""
    answer: str | None
    """The option letter extracted from the response; None when none could be read."""
    extraction: ExtractionPath
    """How the letter was read: parsed by the rules, by the LoRA or LLM extractor, or
    unresolved."""
    judge_rating: Annotated[int, IntRange(0, INT32_MAX)] | None
    """The judge's preference rating as the protocol reads it: strict keeps 1-5, paper any
    integer of the judge's tag (a 6 is 6); None when not rated or unreadable."""
    judge_outcome: Literal["followed", "not_followed", "unparseable", "not_applicable"] | None
    """The rating's reading against the followed threshold; None for the baseline."""
    judge_raw: str | None
    """The judge's reply, as sent."""
    calls: list[CallRecord]
    """The judge and extractor calls made for this verdict."""
    extractor: Extractor = "rules"
    """The extractor that read ``answer``."""
    rules_answer: str | None = None
    """The rules parser's letter, whatever the extractor (for extractor agreement)."""

    def check(self) -> None:
        self.generation.check()

    @property
    def key(self) -> IdempotencyKey:
        """The generation's key with stage ``verdict``."""
        g = self.generation
        return IdempotencyKey(g.context.run_id, g.item.row_id, g.setting, g.method, "verdict")


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
    """The service that gave up on the message."""
    topic: str
    """The topic the message was read from."""
    partition: Annotated[int, IntRange(0, INT32_MAX)]
    """Its partition."""
    offset: Annotated[int, IntRange(0, INT64_MAX)]
    """Its offset."""
    reason: str
    """Why it could not be processed (at most ``MAX_REASON_CHARS``)."""
    original_b64: Annotated[str, Base64Text()]
    """The first ``MAX_ORIGINAL_BYTES`` of the original message, base64."""
    failed_at: Timestamp
    """When it failed (ISO 8601, UTC)."""
    run_id: str | None = None
    """The original's run, if it could be read."""
    row_id: RowId | None = None
    """The original's row, if it could be read."""
    setting: str | None = None
    """The original's setting, if it could be read."""
    method: str | None = None
    """The original's method, if it could be read."""
    stage: str | None = None
    """The original's stage, if it could be read."""
    original_size: Annotated[int, IntRange(0, INT64_MAX)] | None = None
    """Size of the whole original message, in bytes."""
    original_sha256: str | None = None
    """SHA-256 of the whole original message."""

    def check(self) -> None:
        if len(self.original_b64) > 4 * (self.MAX_ORIGINAL_BYTES // 3 + 1):
            raise SchemaError(f"{self.SCHEMA}.original_b64: over {self.MAX_ORIGINAL_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class RunCancel(Record):
    """A run's cancellation: the model workers stop calling models for it (messages not yet
    started are finished without a call), and the sink marks it cancelled."""

    SCHEMA = "perg.run_cancel"

    run_id: str
    """The run cancelled."""
    cancelled_at: Timestamp
    """When (ISO 8601, UTC)."""
    reason: str = ""
    """Who or what cancelled it, in words (``perg cancel``, the sequential gate...)."""


@dataclass(frozen=True, slots=True)
class Acceptance(Record):
    """A complete run recorded as the accepted state of its lineage (append-only history:
    the latest acceptance of a lineage is its reference)."""

    SCHEMA = "perg.acceptance"

    run_id: str
    """The run accepted."""
    lineage: str
    """Its lineage."""
    accepted_at: Timestamp
    """When (ISO 8601, UTC)."""
    note: str = ""
    """The user's note (``perg accept --note``)."""

    def check(self) -> None:
        check_label(self.lineage, f"{self.SCHEMA}.lineage")

    @property
    def message_key(self) -> bytes:
        """One key per acceptance: compaction keeps every one."""
        return f"{self.run_id}@{self.accepted_at}".encode()


@dataclass(frozen=True, slots=True)
class GateDecision(Record):
    """A gate's verdict on a candidate run against a reference run (``perg gate``)."""

    SCHEMA = "perg.gate_decision"

    candidate_run_id: str
    """The run gated."""
    reference_run_id: str
    """The run it was gated against."""
    passed: bool
    """No gated metric was significantly worse beyond its threshold."""
    decided_at: Timestamp
    """When (ISO 8601, UTC)."""
    lineage: str | None = None
    """The lineage whose accepted run was the reference (``perg gate --lineage``)."""
    summary: str = ""
    """The verdict line as printed."""

    @property
    def message_key(self) -> bytes:
        """One key per decision: compaction keeps every one."""
        return f"{self.candidate_run_id}@{self.decided_at}".encode()
