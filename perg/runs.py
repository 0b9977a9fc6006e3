"""Creating a run: choose the rows, pin dataset and protocol by hash, publish spec and work.

    spec, work = plan_run(RunRequest(model=endpoint, judge=judge, sample=600), settings)
    await publish_run(spec, work, settings)      # the workers take it from there

Bad requests raise :class:`~perg.errors.InputError` (naming the flag, file, line or field at
fault) before anything is published; an unreachable broker raises
:class:`~perg.kafka.KafkaUnavailable`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

from perg.client import Endpoint
from perg.config import Settings
from perg.dataset import DATASET_FILE, Item, load_dataset, select_rows, stratified_sample
from perg.errors import InputError
from perg.extraction import Extractor, choose_extractor
from perg.kafka import client_options, reaching_kafka, started
from perg.protocol import (
    METHODS,
    SETTINGS,
    Method,
    Protocol,
    RoleLayout,
    Setting,
    has_thinking_switch,
    load_protocol,
)
from schemas import (
    Decoding,
    RunContext,
    RunSpec,
    SchemaError,
    WorkItem,
    check_label,
    partition_key,
)
from schemas.topics import RUNS, WORK

__all__ = [
    "DEFAULT_PROTOCOL",
    "RunRequest",
    "new_run_id",
    "plan_run",
    "publish_run",
    "shuffle_within_strata",
]

log = logging.getLogger("perg.runs")

DEFAULT_PROTOCOL = "paper"


@dataclass(frozen=True)
class RunRequest:
    """What to evaluate: the model and judge endpoints, which rows, settings and methods.

    Every field but the endpoints has the default ``perg submit`` uses: the paper protocol, all
    settings and methods, every row of ``<data dir>/pergdata.csv``.
    """

    model: Endpoint
    judge: Endpoint
    protocol: str = DEFAULT_PROTOCOL  # "paper", "strict", or the path of a protocol file
    settings: tuple[Setting, ...] = SETTINGS
    methods: tuple[Method, ...] = METHODS
    rows: str | None = None  # "N" (first N) or ids and ranges "0-29,817"
    sample: int | None = None  # stratified by source
    seed: int = 0  # of the sample
    decoding: Decoding | None = None  # None: the protocol's profile for the model's family
    layout: RoleLayout | None = None  # None: the model family's (Protocol.default_layout)
    thinking: bool | None = None  # a thinking switch; None: off for models that have one
    dataset_path: Path | None = None  # default: <data dir>/pergdata.csv
    skip_invalid: bool = False  # load the valid rows of a dataset with bad rows (reported)
    decoding_profile: str | None = None  # a perg.protocol.DECODING_PROFILES name; None: auto
    extractor: Extractor | None = None  # None: llm with an extractor endpoint, else rules
    extractor_endpoint: Endpoint | None = None  # llm extractor (default: the judge's endpoint)
    lora_endpoint: Endpoint | None = None
    repeat_baseline: bool = False  # noise floor: the no-preference baseline twice
    constrain_rating: bool = False  # the judge's rating reply constrained to <answer>N</answer>
    # Overrides of the profile (recorded as profile "<name>+override" when they change it).
    temperature: float | None = None
    decode_seed: int | None = None
    max_tokens_cap: int | None = None
    lineage: str | None = None  # the deployed model evaluated (letters, digits, ._-; <= 64)
    version: str | None = None  # the version under test (the same characters)
    shuffle_seed: int | None = None  # of the work's order; None: the sample seed


def shuffle_within_strata(items: Sequence[Item], seed: int) -> list[Item]:
    """``items`` in a seeded random order that keeps every prefix stratified by source.

    Each source's rows are shuffled (``random.Random(seed)``), then interleaved: the next row
    comes from the source furthest behind its share of the rows so far (ties: the source
    named first). So the first k rows a sequential gate sees are a random, stratified sample
    of the run, not source by source."""
    rng = random.Random(seed)
    strata: dict[str, list[Item]] = {}
    for item in items:
        strata.setdefault(item.source, []).append(item)
    sources = sorted(strata)
    for source in sources:
        rng.shuffle(strata[source])
    total = len(items)
    taken = dict.fromkeys(sources, 0)
    order: list[Item] = []
    for position in range(1, total + 1):
        source = max(
            (s for s in sources if taken[s] < len(strata[s])),
            key=lambda s: position * len(strata[s]) / total - taken[s],
        )
        order.append(strata[source][taken[source]])
        taken[source] += 1
    return order


def new_run_id(model: str) -> str:
    """A fresh run id: the model's name as a slug, a UTC time stamp and 4 random hex digits."""
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:40] or "model"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{slug}-{stamp}-{secrets.token_hex(2)}"


def plan_run(request: RunRequest, settings: Settings) -> tuple[RunSpec, list[WorkItem]]:
    """Resolve a request into its spec and work items; :class:`InputError` on bad input."""
    _check_request(request)
    dataset = load_dataset(
        request.dataset_path or settings.data_dir / DATASET_FILE,
        skip_invalid=request.skip_invalid,
    )
    for problem in dataset.skipped:
        log.warning("skipped invalid row: %s", problem)
    if request.sample is not None:
        items = stratified_sample(dataset, request.sample, request.seed)
        selection = f"stratified sample of {request.sample}, seed {request.seed}"
    elif request.rows is not None:
        items = select_rows(dataset, request.rows)
        selection = f"rows {request.rows}"
    else:
        items = list(dataset.items)
        selection = "all rows"
    try:
        protocol = load_protocol(request.protocol, settings.data_dir)
    except ValueError as exc:  # the protocol file is input too
        raise InputError(str(exc)) from exc
    if dataset.skipped:
        selection += f" ({len(dataset.skipped)} invalid rows skipped)"
    decoding = request.decoding or _decoding(request, protocol)
    shuffle_seed = request.seed if request.shuffle_seed is None else request.shuffle_seed
    items = shuffle_within_strata(items, shuffle_seed)
    context = RunContext(
        run_id=new_run_id(request.model.model),
        model=request.model,
        judge=request.judge,
        protocol=request.protocol,
        protocol_sha256=protocol.sha256,
        decoding=decoding,
        layout=request.layout or protocol.default_layout(request.model.model),
        extractor=choose_extractor(
            request.extractor,
            extractor_endpoint=request.extractor_endpoint is not None,
            lora_endpoint=request.lora_endpoint is not None,
        ),
        extractor_endpoint=request.extractor_endpoint,
        lora_endpoint=request.lora_endpoint,
        constrain_rating=request.constrain_rating,
        repeat_baseline=request.repeat_baseline,
    )
    spec = RunSpec(
        context=context,
        created_at=datetime.now(UTC).isoformat(),
        dataset_path=str(dataset.path),
        dataset_sha256=dataset.sha256,
        selection=selection,
        row_ids=[item.row_id for item in items],
        settings=list(request.settings),
        methods=list(request.methods),
        followed_threshold=protocol.judge_threshold,
        lineage=request.lineage,
        version_label=request.version,
        shuffle_seed=shuffle_seed,
    )
    work = [
        WorkItem(context=context, item=item, settings=spec.settings, methods=spec.methods)
        for item in items
    ]
    return spec, work


def _check_request(request: RunRequest) -> None:
    for flag, label in (("--lineage", request.lineage), ("--version", request.version)):
        try:
            check_label(label, flag)
        except SchemaError as exc:
            raise InputError(str(exc)) from None
    if request.rows is not None and request.sample is not None:
        raise InputError("give either rows or a sample, not both")
    if not request.settings or not request.methods:
        raise InputError("a run needs at least one setting and one method")
    decoding = request.decoding
    cap = request.max_tokens_cap if decoding is None else decoding.max_tokens_cap
    if cap is not None and cap < 1:
        raise InputError(f"max_tokens must be at least 1, got {cap}")
    temperature = request.temperature if decoding is None else decoding.temperature
    if temperature is not None and temperature < 0:
        raise InputError(f"temperature must be at least 0, got {temperature}")
    if request.thinking is not None and not has_thinking_switch(request.model.model):
        raise InputError(
            f"--thinking: model {request.model.model!r} has no thinking switch (Qwen3 has)"
        )


def _decoding(request: RunRequest, protocol: Protocol) -> Decoding:
    """The decoding of the run: the requested (or the model family's) profile, overridden."""
    if request.decoding_profile is not None:
        profile = protocol.decoding_profile(request.decoding_profile)
    else:
        profile = protocol.default_decoding_profile(request.model.model)
    temperature = profile.temperature if request.temperature is None else request.temperature
    seed = profile.seed if request.decode_seed is None else request.decode_seed
    if (temperature, seed) != (profile.temperature, profile.seed):
        name = profile.profile + "+override"
        profile = dataclasses.replace(profile, profile=name, temperature=temperature, seed=seed)
    thinking = request.thinking
    if thinking is None and has_thinking_switch(request.model.model):
        thinking = False  # the published Qwen3 entries without "_thinking"
    return dataclasses.replace(profile, max_tokens_cap=request.max_tokens_cap, thinking=thinking)


async def publish_run(spec: RunSpec, work: list[WorkItem], settings: Settings) -> None:
    """Publish the spec (compacted topic, keyed by run) and every work item, then flush.

    :class:`~perg.kafka.KafkaUnavailable` when the broker cannot be reached.
    """
    producer = AIOKafkaProducer(
        **client_options(settings), acks="all", enable_idempotence=True, linger_ms=5
    )
    await started(producer, settings)
    with reaching_kafka(settings):
        try:
            run_id = spec.context.run_id
            await producer.send_and_wait(
                RUNS.name(settings.topic_prefix), spec.encode(), key=run_id.encode()
            )
            for item in work:
                await producer.send(
                    WORK.name(settings.topic_prefix),
                    item.encode(),
                    key=partition_key(run_id, item.item.row_id),
                )
            await producer.flush()
        finally:
            await producer.stop()
